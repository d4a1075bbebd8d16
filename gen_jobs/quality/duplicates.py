"""Duplicates within a dataset: exact copies (sha256 of each row's content) and near copies, with examples.

    used by gen_jobs.generate's scoring (the manifest's quality.duplicates) on the rows it scores

Near copies:
    images        a 64-bit perceptual hash (DCT of a 32 x 32 grey thumbnail, the signs of its
                  8 x 8 lowest frequencies against their median); two rows whose hashes differ
                  in at most NEAR_BITS bits look alike to a person
    text, tokens  MinHash of word 5-shingles (text) or token 8-shingles (music): rows whose
                  estimated Jaccard similarity is at least NEAR_JACCARD share most of their
                  content (candidates from 16 bands of 4 hashes, then checked on all 64)

A row counts once, as a copy of the first row it repeats; the figures are shares
of the rows scored and up to EXAMPLES pairs of ids to look at. Blank rows (no
image, whitespace-only text, no tokens) are counted apart, never as copies.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict

import numpy as np
import pyarrow as pa

NEAR_BITS = 2
NEAR_JACCARD = 0.8
EXAMPLES = 3
_HASHES, _BANDS = 64, 16
_KEYS = np.random.default_rng(0).integers(0, 2**63, _HASHES, dtype=np.uint64)  # fixed: the same in every process
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def content(table: pa.Table) -> tuple[str, list] | None:
    """(kind, each row's content) of a generated table: its image, text or token stream; None if none."""
    if "image" in table.column_names:
        return "image", [cell["bytes"] if isinstance(cell, dict) else cell for cell in table.column("image").to_pylist()]
    if "text" in table.column_names:
        return "text", table.column("text").to_pylist()
    if "tokens" in table.column_names:
        return "tokens", table.column("tokens").to_pylist()
    return None


def blank(value) -> bool:
    """No content to compare: a missing image, whitespace-only text, an empty token stream."""
    return value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value)


def _digest(value) -> bytes | None:
    if blank(value):
        return None
    if isinstance(value, str):
        value = value.encode()
    elif isinstance(value, list):
        value = np.asarray(value, dtype=np.int64).tobytes()
    return hashlib.sha256(value).digest()


def perceptual_hashes(images: list[bytes | None]) -> list[int | None]:
    """64-bit pHash of each encoded image (see the module docstring); None where there is none."""
    from PIL import Image
    from scipy.fft import dctn

    present = [i for i, data in enumerate(images) if data is not None]
    grey = np.empty((len(present), 32, 32), dtype=np.float64)
    for n, i in enumerate(present):
        with Image.open(io.BytesIO(images[i])) as image:
            grey[n] = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BILINEAR))
    low = dctn(grey, axes=(1, 2), norm="ortho")[:, :8, :8].reshape(len(present), 64)  # N x 64
    bits = low > np.median(low[:, 1:], axis=1, keepdims=True)  # (the DC term, mean brightness, not in the median)
    hashes: list[int | None] = [None] * len(images)
    for n, word in zip(present, np.packbits(bits, axis=1).view(">u8")[:, 0]):
        hashes[n] = int(word)
    return hashes


def _shingles(value, kind: str) -> set[int]:
    if kind == "text":
        words, n = value.split(), 5
    else:
        words, n = [str(t) for t in value], 8
    if len(words) < n:
        grams = [" ".join(words)] if words else []
    else:
        grams = [" ".join(words[i: i + n]) for i in range(len(words) - n + 1)]
    return {int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "big") for g in grams}


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (uint64, wrapping arithmetic): a bijection that scatters bits."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def minhash(shingles: set[int]) -> np.ndarray:
    """_HASHES minimum hashes (uint64) of a shingle set, hash k being mix64(shingle ^ key k); all-max if empty."""
    if not shingles:
        return np.full(_HASHES, np.iinfo(np.uint64).max, dtype=np.uint64)
    x = np.fromiter(shingles, dtype=np.uint64, count=len(shingles))
    return _mix(x[None, :] ^ _KEYS[:, None]).min(axis=1)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    return _POPCOUNT[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.int32)


def _near_images(hashes: list[int | None]) -> list[tuple[int, int]]:
    """(earlier, later) row pairs whose perceptual hashes are within NEAR_BITS bits.

    Pigeonhole: cut into NEAR_BITS + 1 chunks, two hashes that close agree on at least one
    chunk, so only rows sharing a chunk are compared (not all pairs).
    """
    valid = [(i, h) for i, h in enumerate(hashes) if h is not None]
    values = np.array([h for _, h in valid], dtype=np.uint64)
    index = np.array([i for i, _ in valid], dtype=np.int64)
    chunks = NEAR_BITS + 1
    width = -(-64 // chunks)
    first_match: dict[int, int] = {}
    for c in range(chunks):
        keys = (values >> np.uint64(c * width)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable")
        bounds = np.flatnonzero(np.diff(keys[order])) + 1
        for group in np.split(order, bounds):
            if len(group) < 2:
                continue
            group = np.sort(group)
            members = values[group]
            for start in range(1, len(group), 256):  # blocks of rows against the earlier members: bounded memory
                block = members[start: start + 256]
                close = _popcount(block[:, None] ^ members[None, : start + len(block)]) <= NEAR_BITS
                for r in range(len(block)):
                    earlier = np.flatnonzero(close[r, : start + r])
                    if len(earlier):
                        later, match = int(index[group[start + r]]), int(index[group[earlier[0]]])
                        first_match[later] = min(first_match.get(later, match), match)
    return sorted((i, j) for j, i in first_match.items())


def _near_sets(values: list, kind: str) -> list[tuple[int, int]]:
    """(earlier, later) row pairs whose MinHash Jaccard estimate is at least NEAR_JACCARD."""
    signatures = {i: minhash(_shingles(v, kind)) for i, v in enumerate(values) if not blank(v)}
    buckets: dict[tuple, list[int]] = defaultdict(list)
    rows = _HASHES // _BANDS
    for i, sig in signatures.items():
        for band in range(_BANDS):
            buckets[(band, sig[band * rows: (band + 1) * rows].tobytes())].append(i)
    first_match: dict[int, int] = {}
    for members in buckets.values():  # (rows in ascending order)
        for position, j in enumerate(members):
            for i in members[:position]:
                if i >= first_match.get(j, j):  # another band found an earlier match already
                    break
                if (signatures[i] == signatures[j]).mean() >= NEAR_JACCARD:
                    first_match[j] = i
                    break
    return sorted((i, j) for j, i in first_match.items())


def duplicate_warnings(figures: dict) -> list[str]:
    """A warning when more than 1% of the rows scored are exact copies of another row."""
    if figures["exact_share"] <= 0.01:
        return []
    a, b = figures["examples"]["exact"][0]
    return [f"{figures['exact_duplicates']:,} of {figures['rows']:,} rows are exact copies of another row "
            f"(e.g. ids {a} and {b}): the generator repeats itself"]


def duplicate_figures(table: pa.Table) -> dict | None:
    """{"rows", "exact_duplicates", "near_duplicates", shares, "examples": {"exact": [[id, id]], "near": ...}}."""
    found = content(table)
    if found is None:
        return None
    kind, values = found
    ids = table.column("id").to_pylist()
    first: dict[bytes, int] = {}
    exact = []
    for row, value in enumerate(values):
        key = _digest(value)
        if key is None:
            continue
        if key in first:
            exact.append((first[key], row))
        else:
            first[key] = row
    copies = {j for _, j in exact}
    if kind == "image":
        near = _near_images(perceptual_hashes(values))
    else:
        near = _near_sets(values, kind)
    near = [(i, j) for i, j in near if j not in copies]
    n = len(values)
    return {
        "rows": n,
        "blank": sum(blank(v) for v in values),  # (not counted as copies of each other)
        "exact_duplicates": len(exact),
        "exact_share": round(len(exact) / max(n, 1), 4),
        "near_duplicates": len({j for _, j in near}),
        "near_share": round(len({j for _, j in near}) / max(n, 1), 4),
        "method": f"perceptual hash within {NEAR_BITS} bits" if kind == "image" else
                  f"MinHash Jaccard >= {NEAR_JACCARD} of {'word 5' if kind == 'text' else 'token 8'}-shingles",
        "examples": {"exact": [[ids[i], ids[j]] for i, j in exact[:EXAMPLES]],
                     "near": [[ids[i], ids[j]] for i, j in near[:EXAMPLES]]},
    }
