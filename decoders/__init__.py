"""Frame formats: one module per format, each exposing one ``DECODER``; see README.md."""
