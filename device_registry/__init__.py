"""Device registry: external identities to compact internal ids, profiles, credentials, status."""
