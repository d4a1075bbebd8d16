"""Row i's seed, a pure NumPy function of (base seed, i), and the noise scheme's version: no torch.

    used by gen_jobs.core.seeding (which re-exports it), generate, verify and Serve

`raygen verify` checks every row's seed with it; keeping torch out of that
command makes it start ~1.4 s sooner and keeps torch's thread pools out of a
process that only reads Parquet.
"""

from __future__ import annotations

import numpy as np

NOISE_VERSION = "splitmix64-counter-v1"  # names gen_jobs.core.seeding's whole scheme in every dataset's identity

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def row_seeds(base_seed: int, ids: np.ndarray) -> np.ndarray:
    """int64 seeds in [0, 2**63) for the given int64 row ids (vectorised SplitMix64)."""
    with np.errstate(over="ignore"):
        x = np.uint64(base_seed) * _GOLDEN + ids.astype(np.uint64)
        x = (x + _GOLDEN) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(1)).astype(np.int64)
