"""Adapters: real implementations of the ports (JetStream, HTTP sinks, ...) and in-memory twins."""
