"""Images in datasets: PNG bytes in the HuggingFace `datasets` Image layout.

An image column is a struct {bytes: binary (PNG), path: string}; the schema's
`huggingface` metadata names its feature type, so
`datasets.load_dataset("parquet", ...)` decodes it as `datasets.Image`.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
from PIL import Image


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


def image_field(name: str = "image") -> pa.Field:
    return pa.field(name, pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())]))


def huggingface_metadata(features: dict) -> dict[bytes, bytes]:
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
