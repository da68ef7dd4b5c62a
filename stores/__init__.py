"""Read-model stores behind one protocol."""

# Public modules; import the one you need (they are not loaded eagerly).
__all__: list[str] = []
