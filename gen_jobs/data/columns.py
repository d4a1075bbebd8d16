"""A dataset's Arrow columns, laid out as HuggingFace `datasets` expects them.

Every row starts with `id` (int64, the global row index) and `seed` (int64, the
row's seed). A medium (an image, later audio) is a struct {bytes: binary,
path: string}. The schema's `huggingface` metadata names each column's feature
type, so `datasets.load_dataset("parquet", ...)` decodes images as `datasets.Image`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

MEDIA_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def row_columns(batch: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    """The columns every dataset starts with: id and seed."""
    return {"id": pa.array(batch["id"], pa.int64()), "seed": pa.array(batch["seed"], pa.int64())}


def media_column(data: Sequence[bytes], paths: Sequence[str]) -> pa.StructArray:
    """Encoded files (PNG, WAV, MIDI) as the HuggingFace {bytes, path} struct."""
    return pa.StructArray.from_arrays([pa.array(data, pa.binary()), pa.array(paths, pa.string())], fields=list(MEDIA_TYPE))


def _feature(field: pa.Field, media: dict[str, str]) -> dict:
    if field.type == MEDIA_TYPE:
        return {"_type": media.get(field.name, "Image")}
    if pa.types.is_integer(field.type):
        return {"dtype": str(field.type), "_type": "Value"}
    if pa.types.is_floating(field.type):
        return {"dtype": "float32" if field.type == pa.float32() else "float64", "_type": "Value"}
    if pa.types.is_boolean(field.type):
        return {"dtype": "bool", "_type": "Value"}
    if pa.types.is_binary(field.type):
        return {"dtype": "binary", "_type": "Value"}
    if pa.types.is_list(field.type):
        # (the items take the list's name: `media` names the column, whatever its items are called)
        return {"feature": _feature(field.type.value_field.with_name(field.name), media), "_type": "List"}
    return {"dtype": "string", "_type": "Value"}


def with_features(table: pa.Table, media: dict[str, str] | None = None) -> pa.Table:
    """`table` with the `huggingface` schema metadata of its columns.

    `media` maps a {bytes, path} column to its feature type ("Image" unless said).
    """
    features = {f.name: _feature(f, media or {}) for f in table.schema}
    return table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})


def append_columns(table: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    """`table` with `columns` put last (replacing same-named ones), its `huggingface` features to match."""
    metadata = table.schema.metadata or {}
    table = table.drop_columns([name for name in columns if name in table.column_names])
    for name, values in columns.items():
        table = table.append_column(name, values)
    if b"huggingface" in metadata:
        info = json.loads(metadata[b"huggingface"])
        features = {name: feature for name, feature in info["info"]["features"].items() if name not in columns}
        features.update({f.name: _feature(f, {}) for f in table.schema if f.name in columns})
        info["info"]["features"] = features
        metadata = {**metadata, b"huggingface": json.dumps(info).encode()}
    return table.replace_schema_metadata(metadata)


def object_column(values: list) -> np.ndarray:
    """A 1-D object array of arbitrary Python values (np.array would turn equal-length lists into 2-D)."""
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        column[i] = value
    return column
