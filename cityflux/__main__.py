"""``python -m cityflux`` is the ``cityflux`` command."""

from cityflux.cli import app

if __name__ == "__main__":  # not again in a worker process (multiprocessing's spawn)
    app()
