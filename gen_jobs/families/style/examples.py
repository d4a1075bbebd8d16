"""A style dataset's picture: inputs and their stylised versions, one column per style.

    write_examples: the demo's file beside the dataset (gen_jobs.demo, through DemoDefaults.examples)
    preview:        the dataset card's picture (gen_jobs.quality.card, through the family's `preview`)
"""

from __future__ import annotations

import io

import numpy as np

from gen_jobs.core import storage
from gen_jobs.core.family import Preview

ROWS = 6  # inputs shown
CELL = 256  # pixels per picture: texture shows at this size, not at 128


def before_after(dataset: str, manifest) -> bytes | None:
    """PNG: ROWS inputs (left) and the dataset's outputs in each style (right); None when no input has all."""
    from PIL import Image

    from gen_jobs.data.manifest import read_shards
    from gen_jobs.quality.figures import titled_grid_png

    names = [style["name"] for style in manifest.recipe["styles"]]
    table = read_shards(dataset, manifest.shards, ["source", "style", "image", "status"])
    by_source: dict[str, dict[int, bytes]] = {}
    for source, style, cell, status in zip(*(table.column(c).to_pylist() for c in ("source", "style", "image", "status"))):
        if status == "ok":
            by_source.setdefault(source, {})[style] = cell["bytes"]
    complete = [s for s, got in by_source.items() if len(got) == len(names)][:ROWS]
    rows = []
    for source in complete:
        if not storage.exists(source):  # an input moved away since: its row cannot show the before
            continue
        before = Image.open(io.BytesIO(storage.read_bytes(source))).convert("RGB")
        cells = [before] + [Image.open(io.BytesIO(by_source[source][k])).convert("RGB") for k in range(len(names))]
        rows.append([np.asarray(c.resize((CELL, CELL))) for c in cells])
    return titled_grid_png(rows, ["input", *(f"style {k}: {name}" for k, name in enumerate(names))]) if rows else None


def write_examples(dataset: str, out: str, name: str) -> list[str]:
    """OUT/<name>_before_after.png (see before_after)."""
    from gen_jobs.data.manifest import read_manifest

    picture = before_after(dataset, read_manifest(dataset))
    if picture is None:
        return []
    uri = storage.join(out, f"{name}_before_after.png")
    storage.write_bytes_atomic(uri, picture)
    return [uri]


def preview(dataset: str, manifest) -> Preview:
    picture = before_after(dataset, manifest)
    return Preview(picture, "inputs (left) and their stylised versions, one column per style") if picture else Preview()
