"""cityflux ingest: configuration, transports (MQTT, CoAP), the batching pipeline, metrics, CLI."""
