"""``python -m ingest`` is the ``cityflux`` command."""

from ingest.cli import app

app()
