"""Folds of the event log, and the daemon that feeds them."""

# Public modules; import the one you need (they are not loaded eagerly).
__all__: list[str] = []
