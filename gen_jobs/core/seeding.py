"""Noise for every family: a counter-based generator keyed by each row's full 64-bit seed.

Row seeds. Row i of a dataset with base seed B has the seed
`row_seeds(B, i)`: SplitMix64 of (B, i), shifted to a non-negative int64
(63 bits, what the `seed` column and the HTTP APIs carry).

Row noise. Every random number a row uses is a pure function of
(its seed, a counter), computed for whole batches as int64 tensors on the
sampler's device. No generator object, no per-row Python loop, no state:

    key(seed)          = mix64(seed)                 all 64 bits of the seed count
    bits(seed, c)      = mix64(key(seed) + (c + 1) * GOLDEN)   (SplitMix64 at position c)

mix64 is SplitMix64's finaliser, a bijection of 64-bit words, so different
seeds never share a key (the old per-row `torch.Generator.manual_seed` kept
only 32 bits and made rows whose seeds agree modulo 2**32 identical). A
row's numbers never depend on the rows beside it, the batch size, the worker
or the device: the arithmetic is exact integer arithmetic everywhere.

Counter layout: a counter is (stream << 40) + index. The streams are

    LABEL   = 1   index 0: a conditional row's class
    LATENT  = 2   index j: latent element j (Box-Muller pairs use 2j, 2j + 1)
    TOKEN   = 3   index t: the uniform that picks text token t (decoding step t)
    MUSIC   = 4   reserved for the music family (token t, as TOKEN)
    STYLE   = 5   reserved for the style family
    DIFFUSION = 6 index j: element j of a diffusion row's starting noise (n elements); a stochastic
                  sampler's step k draws its n normals from index (k + 1) * 2 * ceil(n / 2) on

Derived draws:
    uniform64  top 53 bits / 2**53: float64 in [0, 1)
    uniform32  top 24 bits / 2**24: float32 in [0, 1), exact (never rounds up to 1)
    normal     Box-Muller in float64 from two uniform64 draws, rounded to float32
    integers   floor(uniform64 * n): class k of n with bias below n / 2**53

NOISE_VERSION names this scheme in every dataset's identity: a change to any
of the above changes the bytes, so it bumps the version and `--resume`
refuses to mix the two.
"""

from __future__ import annotations

import numpy as np
import torch

from gen_jobs.core.row_seed import NOISE_VERSION, row_seeds  # re-exported; that module needs NumPy only, no torch

__all__ = ["NOISE_VERSION", "row_seeds", "LABEL", "LATENT", "TOKEN", "MUSIC", "STYLE", "DIFFUSION", "GOLDEN", "mix64",
           "seed_tensor", "random_bits", "uniform64", "uniform32", "integers", "normals"]

LABEL, LATENT, TOKEN, MUSIC, STYLE, DIFFUSION = 1, 2, 3, 4, 5, 6
_STREAM_SHIFT = 40  # 2**40 indices per stream


def _signed(x: int) -> int:
    """A 64-bit constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    return x - (1 << 64) if x >= 1 << 63 else x


GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def _lsr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic: it copies the sign bit)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors; multiplication wraps modulo 2**64 like uint64."""
    x = (x ^ _lsr(x, 30)) * _M1
    x = (x ^ _lsr(x, 27)) * _M2
    return x ^ _lsr(x, 31)


def seed_tensor(seeds: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Row seeds as an int64 tensor on `device` (B)."""
    return torch.as_tensor(np.ascontiguousarray(seeds, dtype=np.int64)).to(device)


def random_bits(seeds: torch.Tensor, stream: int, index: torch.Tensor | int) -> torch.Tensor:
    """64 random bits (as int64) per (row, index): seeds B, index K (or a scalar) -> B x K (or B)."""
    key = mix64(seeds)
    if isinstance(index, int):
        counter = torch.tensor((stream << _STREAM_SHIFT) + index + 1, dtype=torch.int64, device=seeds.device)
        return mix64(key + counter * GOLDEN)
    counter = (stream << _STREAM_SHIFT) + index.to(torch.int64) + 1  # K
    return mix64(key[:, None] + counter[None, :] * GOLDEN)


def uniform64(seeds: torch.Tensor, stream: int, index: torch.Tensor | int) -> torch.Tensor:
    """float64 uniforms in [0, 1) from the top 53 bits."""
    return _lsr(random_bits(seeds, stream, index), 11).to(torch.float64) * 2.0**-53


def uniform32(seeds: torch.Tensor, stream: int, index: torch.Tensor | int) -> torch.Tensor:
    """float32 uniforms in [0, 1) from the top 24 bits (exactly representable, so never 1.0)."""
    return _lsr(random_bits(seeds, stream, index), 40).to(torch.float32) * 2.0**-24


def integers(seeds: torch.Tensor, stream: int, n: int, index: int = 0) -> torch.Tensor:
    """One integer in [0, n) per row (B), from one uniform64 draw."""
    return (uniform64(seeds, stream, index) * n).floor().to(torch.int64).clamp(max=n - 1)


def normals(seeds: torch.Tensor, stream: int, count: int, start: int = 0) -> torch.Tensor:
    """`count` standard normals per row (B x count, float32): Box-Muller in float64, from the stream's
    uniforms at indices `start`, `start` + 1, ... (normals at start + j are the same whatever `count` is)."""
    pairs = (count + 1) // 2
    index = start + torch.arange(2 * pairs, device=seeds.device)
    u = uniform64(seeds, stream, index).view(-1, pairs, 2)  # B x P x 2
    radius = torch.sqrt(-2.0 * torch.log1p(-u[..., 0]))  # 1 - u in (0, 1]: log is finite
    angle = (2.0 * torch.pi) * u[..., 1]
    z = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)  # B x P x 2
    return z.view(-1, 2 * pairs)[:, :count].to(torch.float32)
