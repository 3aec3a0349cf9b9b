"""The ``cityflux`` command line: one module per command group, on top of everything."""
