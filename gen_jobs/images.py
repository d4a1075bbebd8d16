"""Image pixels <-> files: PNG encoding of samples, decoding of users' images.

Datasets store PNG bytes in the {bytes, path} struct of gen_jobs.columns.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from gen_jobs.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def encode_png(images: np.ndarray) -> list[bytes]:
    """uint8 B x H x W x C (C = 1 or 3) -> PNG bytes per image (deterministic encoder settings)."""
    out = []
    for img in images:
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img, mode="L" if img.shape[-1] == 1 else "RGB")
        buf = io.BytesIO()
        pil.save(buf, format="PNG", compress_level=6)
        out.append(buf.getvalue())
    return out


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 H x W x C."""
    arr = np.asarray(Image.open(io.BytesIO(data)))
    return arr if arr.ndim == 3 else arr[..., None]


def decode_image(data: bytes, size: int, channels: int, where: str) -> np.ndarray:
    """A user's image file -> uint8 size x size x channels (bicubic); UserError naming `where` if unreadable."""
    try:
        img = Image.open(io.BytesIO(data)).convert("L" if channels == 1 else "RGB")
    except Image.DecompressionBombError as e:  # not an OSError: a huge (or hostile) image
        raise UserError(f"{where} is too large to decode safely ({e}); shrink it or remove it") from e
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{where} is not a readable image ({e}); remove it or convert it to PNG") from e
    arr = np.asarray(img.resize((size, size), Image.Resampling.BICUBIC))
    return arr if arr.ndim == 3 else arr[..., None]


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) or (N, h, w, C) uint8 -> (N, size, size, C) uint8, bicubic like PIL."""
    if images.ndim == 3:
        images = images[..., None]
    out = []
    for img in images:
        mode = "L" if img.shape[-1] == 1 else "RGB"
        pil = Image.fromarray(img[..., 0] if mode == "L" else img, mode=mode)
        arr = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC))
        out.append(arr if arr.ndim == 3 else arr[..., None])
    return np.stack(out)
