"""The dataset card's excerpts of a text dataset: the first samples, prompt and continuation.

    called by gen_jobs.quality.card through the family's `preview`
"""

from __future__ import annotations

from gen_jobs.core.family import Preview

EXCERPTS = 5
MAX_CHARS = 600


def preview(dataset: str, manifest) -> Preview:
    from gen_jobs.data.manifest import read_shards

    table = read_shards(dataset, manifest.shards, ["id", "prompt", "text"], max_rows=EXCERPTS)
    excerpts = []
    for row_id, prompt, text in zip(*(table.column(c).to_pylist() for c in ("id", "prompt", "text"))):
        body = f"{prompt or ''}{text or ''}"
        cut = body[:MAX_CHARS] + (" [...]" if len(body) > MAX_CHARS else "")
        excerpts.append(f"row {row_id}:\n{cut}")
    return Preview(excerpts=tuple(excerpts[:EXCERPTS]))
