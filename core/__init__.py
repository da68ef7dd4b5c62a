"""The core: events, codecs, the log, the publisher SDK, configuration, the embedded NATS."""

# Public modules; import the one you need (they are not loaded eagerly).
__all__: list[str] = []
