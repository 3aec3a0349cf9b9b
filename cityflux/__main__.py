"""``python -m cityflux`` is the ``cityflux`` command."""

from cityflux.cli import app

app()
