"""Per-row seeds: row i's randomness is a pure function of (base seed, i).

SplitMix64 mixes the pair into a well-spread 63-bit seed, so neighbouring rows
and neighbouring base seeds get unrelated noise, and no row's seed depends on
which worker or batch produced it.
"""

from __future__ import annotations

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def row_seeds(base_seed: int, ids: np.ndarray) -> np.ndarray:
    """int64 seeds in [0, 2**63) for the given int64 row ids (vectorised SplitMix64)."""
    with np.errstate(over="ignore"):
        x = np.uint64(base_seed) * np.uint64(0x9E3779B97F4A7C15) + ids.astype(np.uint64)
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(1)).astype(np.int64)
