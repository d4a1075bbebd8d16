"""The style demo's picture beside its dataset: inputs and their stylised versions, one column per style.

    called by `raygen demo` (gen_jobs.demo) through the family's DemoDefaults.examples
"""

from __future__ import annotations

import io

import numpy as np

from gen_jobs import storage

ROWS = 6  # inputs shown
CELL = 128  # pixels per picture


def write_examples(dataset: str, out: str, name: str) -> list[str]:
    """OUT/<name>_before_after.png: ROWS inputs (left) and the dataset's outputs in each style (right)."""
    from PIL import Image

    from gen_jobs.manifest import read_manifest, read_shards

    manifest = read_manifest(dataset)
    styles = len(manifest.recipe["styles"])
    table = read_shards(dataset, manifest.shards, ["source", "style", "image", "status"])
    by_source: dict[str, dict[int, bytes]] = {}
    for source, style, cell, status in zip(*(table.column(c).to_pylist() for c in ("source", "style", "image", "status"))):
        if status == "ok":
            by_source.setdefault(source, {})[style] = cell["bytes"]
    complete = [s for s, got in by_source.items() if len(got) == styles][:ROWS]
    rows = []
    for source in complete:
        before = Image.open(io.BytesIO(storage.read_bytes(source))).convert("RGB")
        cells = [before] + [Image.open(io.BytesIO(by_source[source][k])).convert("RGB") for k in range(styles)]
        rows.append(np.concatenate([np.asarray(c.resize((CELL, CELL))) for c in cells], axis=1))
    if not rows:
        return []
    uri = storage.join(out, f"{name}_before_after.png")
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(rows, axis=0)).save(buf, format="PNG")
    storage.write_bytes_atomic(uri, buf.getvalue())
    return [uri]
