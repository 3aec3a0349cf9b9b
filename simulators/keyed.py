"""Keyed randomness: every random draw is a pure function of (seed, stream, device, counter).

A simulated frame must not depend on how the run was cut into ticks, how fast it went or
which frames were sent before it, so that the same seed gives the same frames at 1× real
time and as fast as possible. A counter-based generator gives that: SplitMix64 (Steele,
Lea, Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014; the finaliser
constants are the published ones) mixes the key words one after the other, vectorised.
"""

from __future__ import annotations

import zlib

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: U64) -> U64:
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def stream_id(name: str) -> int:
    """A stable number for a stream name (``"temperature"``, ``"fault.malformed"``…)."""
    return zlib.crc32(name.encode())


def bits(seed: int, stream: int, *keys: npt.ArrayLike) -> U64:
    """64 random bits per element of the broadcast ``keys`` arrays."""
    with np.errstate(over="ignore"):
        h = _mix(np.atleast_1d(np.asarray(seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)))
        h = _mix(h ^ np.uint64(stream & 0xFFFFFFFFFFFFFFFF))
        for key in keys:
            h = _mix(h ^ np.asarray(key).astype(np.uint64))
    return h


def uniform(seed: int, stream: int, *keys: npt.ArrayLike) -> F64:
    """Uniform floats in [0, 1)."""
    return (bits(seed, stream, *keys) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def normal(seed: int, stream: int, *keys: npt.ArrayLike) -> F64:
    """Standard normal floats (Box-Muller over two keyed uniforms)."""
    u1 = uniform(seed, stream, *keys, 1)
    u2 = uniform(seed, stream, *keys, 2)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
