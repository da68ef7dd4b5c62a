"""The core: events, codecs, the log, the publisher SDK, configuration, the embedded NATS."""
