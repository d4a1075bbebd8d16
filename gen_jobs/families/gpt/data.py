"""GPT's training corpora: Python's own documentation, or the user's files.

Sources (the recipe's `data.source`):
    pydoc:topics        the ~465K characters of English in `pydoc_data.topics`,
                        which ships with every CPython
    PATH or s3://URI    a .txt file, a .jsonl file, a .parquet file, or a folder/prefix
                        of them; JSONL and Parquet read `data.text_column`

Documents come back in a fixed order, so every worker and every rerun sees the
same corpus, and the held-out split is the same documents each time.
"""

from __future__ import annotations

import io

from pydantic import Field

from gen_jobs.core import storage
from gen_jobs.core.errors import UserError
from gen_jobs.core.recipes import StrictModel
from gen_jobs.data.rows import jsonl_column

PYDOC = "pydoc:topics"
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


class TextDataConfig(StrictModel):
    source: str = Field(PYDOC, description="pydoc:topics, or a .txt/.jsonl/.parquet file or folder (path or s3://)")
    text_column: str = Field("text", description="the text field of JSONL and Parquet sources")
    held_out: float = Field(0.05, gt=0, lt=0.5, description="share of documents kept for held-out loss")


def load_documents(cfg: TextDataConfig) -> list[str]:
    if cfg.source == PYDOC:
        from pydoc_data.topics import topics

        return [topics[key] for key in sorted(topics)]
    if not storage.exists(cfg.source):
        raise UserError(f"training data {cfg.source} does not exist: set data.source to pydoc:topics or a text corpus")
    files = [cfg.source] if not storage.is_dir(cfg.source) else [
        f for f in storage.list_files(cfg.source, recursive=True) if f.endswith(TEXT_SUFFIXES)
    ]
    if not files:
        raise UserError(f"no {', '.join(TEXT_SUFFIXES)} files under {cfg.source}")
    documents = []
    for uri in files:
        documents.extend(_read(uri, cfg.text_column))
    documents = [d for d in documents if d and d.strip()]
    if not documents:
        raise UserError(f"{cfg.source} holds no text")
    return documents


def _read(uri: str, column: str) -> list[str]:
    data = storage.read_bytes(uri)
    if uri.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        if column not in table.column_names:
            raise UserError(f"{uri} has no column {column!r} (columns: {', '.join(table.column_names)}); set data.text_column")
        return [t for t in table.column(column).to_pylist() if isinstance(t, str)]
    if uri.endswith(".jsonl"):
        return [t for t in jsonl_column(uri, data, column, "data.text_column") if t is not None]
    return [data.decode("utf-8", errors="replace")]


def split_documents(documents: list[str], held_out: float) -> tuple[list[str], list[str]]:
    """(train, held-out): every k-th document is held out, so both cover the whole corpus."""
    every = max(2, round(1 / held_out))
    held = [d for i, d in enumerate(documents) if i % every == every - 1]
    train = [d for i, d in enumerate(documents) if i % every != every - 1]
    if not held:  # a single document: hold out its tail instead
        text = documents[0]
        cut = int(len(text) * (1 - held_out))
        return [text[:cut]], [text[cut:]]
    return train, held
