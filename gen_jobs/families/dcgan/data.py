"""DCGAN's training data: scikit-learn's bundled digits, a folder of images, or Parquet.

Every source becomes the same pair of arrays:
    images: float32 (N, C, H, W) in [-1, 1], resized to the recipe's image size
    labels: int64 (N,), or None for unlabelled data

Sources (the recipe's `data.source`):
    sklearn:digits            1797 8x8 handwritten digits that ship with scikit-learn
    PATH or s3://PREFIX       a folder of .png/.jpg/... files; sub-folder names are
                              class labels (ImageFolder layout), sorted
    ...parquet                a Parquet file or a folder/prefix of them, with an image
                              column (HuggingFace struct {bytes, path} or raw bytes)
                              and an optional integer label column
"""

from __future__ import annotations

import os
import posixpath

import numpy as np
from pydantic import Field

from gen_jobs.core import storage
from gen_jobs.core.errors import UserError
from gen_jobs.core.recipes import StrictModel
from gen_jobs.data.images import IMAGE_SUFFIXES, decode_image, resize_uint8

DIGITS = "sklearn:digits"


class ImageDataConfig(StrictModel):
    source: str = Field(DIGITS, description="sklearn:digits, a folder/prefix of images, or Parquet")
    image_column: str = "image"
    label_column: str | None = Field("label", description="Parquet label column; null for none")


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The raw bundled digits: uint8 (1797, 8, 8) in 0..255 and int64 labels.

    Read from scikit-learn's own data file, as its load_digits does, without importing
    scikit-learn (over a second, which every sampler actor would pay before its first shard).
    """
    import gzip
    import importlib.util

    package = importlib.util.find_spec("sklearn").submodule_search_locations[0]
    # Opened here, not by name: np.loadtxt resolves a name against the working directory, which a
    # `ray job submit` driver's may no longer have.
    with gzip.open(os.path.join(package, "datasets", "data", "digits.csv.gz"), "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    images = np.round(data[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    return images, data[:, -1].astype(np.int64)


def load_images(cfg: ImageDataConfig, size: int, channels: int) -> tuple[np.ndarray, np.ndarray | None]:
    if cfg.source == DIGITS:
        raw, labels = digits_arrays()
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
        raise UserError(f"training data {uri} does not exist: set data.source to sklearn:digits, a folder of images or Parquet")
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
    if cfg.source != DIGITS and not storage.exists(cfg.source):
        raise UserError(
            f"training data {cfg.source} does not exist: set data.source to sklearn:digits, "
            "a folder of images, or a Parquet file/folder (path or s3:// URI)"
        )
