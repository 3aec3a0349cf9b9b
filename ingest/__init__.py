"""The cityflux service: its composition root (service.py), settings, HTTP endpoint,
transports (MQTT, CoAP) and the batching pipeline."""
