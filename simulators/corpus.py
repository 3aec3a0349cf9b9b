"""Where the real HJ 212 captures are (``shared/corpora/hj212`` beside the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "CITYFLUX_HJ212_CORPUS"


def hj212_corpus_dir() -> Path:
    """The corpus folder: $CITYFLUX_HJ212_CORPUS, else ``shared/corpora/hj212`` found beside
    the checkout or the working directory (or any of their parents)."""
    if env := os.environ.get(ENV):
        return Path(env)
    for base in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for parent in (base, *base.parents):
            cand = parent / "shared" / "corpora" / "hj212"
            if cand.is_dir():
                return cand
    raise FileNotFoundError(
        f"HJ 212 corpus not found: set {ENV} or keep shared/ beside the checkout"
    )
