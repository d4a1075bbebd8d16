"""The quality gate of `raygen generate --filter EXPR [--max-attempts K]`, deterministic.

    raygen generate --checkpoint out/runs/dcgan_digits --out out/clean --num-samples 10000 --filter "confidence>=0.8"

EXPR is one or more conditions on the family's per-row figures (numeric
columns of its rows), joined by "," or "and": `confidence>=0.8`,
`perplexity<=40`, `in_key>=0.9, num_notes>=16`. Operators: >= <= > < == !=.

Row i tries candidate 0, 1, 2, ... of its own noise stream until one passes or
K candidates were tried. Candidate 0 is the row as an ungated dataset has it;
candidate k > 0 is drawn with the seed `candidate_seed(row seed, k)`, a pure
function of (row seed, k). Which rows retry depends only on their own
candidates' figures, and retries run per micro-batch of a shard, so the same
command writes the same bytes whatever the workers, and after a resume.

A gated dataset has two more columns: `attempts` (candidates tried, 1..K) and
`status`: "ok", or "rejected" for a row whose K-th candidate still failed (it
keeps that candidate, so row i stays row i: filter on `status == "ok"` to leave
rejected rows out). Rows whose family already wrote a status other than "ok"
(an unreadable input image) keep it and are not gated. The `seed` column stays
the row's seed; the candidate's seed is `candidate_seed(seed, attempts - 1)`.
The manifest's `gate` counts rows requested, accepted at the first try,
accepted later, and rejected.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from gen_jobs.core.errors import UserError
from gen_jobs.core.row_seed import row_seeds
from gen_jobs.data.columns import append_columns

OPERATORS: dict[str, Callable] = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
                                  "==": operator.eq, "!=": operator.ne}
_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
ACCEPTED, REJECTED = "ok", "rejected"


class Condition(BaseModel):
    column: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.column}{self.op}{self.value:g}"


class QualityGate(BaseModel):
    """Part of a gated dataset's identity: a different filter makes different bytes."""

    conditions: list[Condition]
    max_attempts: int = Field(4, ge=1, le=1000)

    def describe(self) -> str:
        return f"{', '.join(str(c) for c in self.conditions)} (up to {self.max_attempts} attempts a row)"


def parse_filter(expr: str, max_attempts: int) -> QualityGate:
    """`confidence>=0.8, perplexity<=40` -> a QualityGate; a UserError says what is wrong with EXPR."""
    parts = [p for p in re.split(r",|\band\b", expr) if p.strip()]
    if not parts:
        raise UserError("--filter is empty: give conditions such as confidence>=0.8 (joined by ',' or 'and')")
    conditions = []
    for part in parts:
        match = _CONDITION.match(part)
        if match is None:
            raise UserError(f"--filter: {part.strip()!r} is not a condition; write COLUMN OP NUMBER, e.g. "
                            "confidence>=0.8 (OP: >= <= > < == !=)")
        conditions.append(Condition(column=match[1], op=match[2], value=float(match[3])))
    return QualityGate(conditions=conditions, max_attempts=max_attempts)


def check_columns(gate: QualityGate, schema: pa.Schema, family: str) -> None:
    """UserError unless every condition names a numeric per-row column of the family's rows."""
    numeric = sorted(f.name for f in schema if (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
                     and f.name not in ("id", "seed", "attempts"))
    for c in gate.conditions:
        if c.column not in numeric:
            raise UserError(f"--filter: {c.column!r} is not a per-row figure of {family} rows; "
                            f"use one of: {', '.join(numeric)}")


def passes(table: pa.Table, gate: QualityGate) -> np.ndarray:
    """bool per row: every condition holds (a null or NaN figure fails)."""
    ok = np.ones(len(table), dtype=bool)
    for c in gate.conditions:
        values = table.column(c.column).to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
        with np.errstate(invalid="ignore"):
            ok &= np.nan_to_num(OPERATORS[c.op](values, c.value), nan=False).astype(bool) & ~np.isnan(values)
    return ok


def candidate_seed(seeds: np.ndarray, k: int) -> np.ndarray:
    """The seeds of candidate k of rows with `seeds` (int64): k = 0 is the row's own seed."""
    return seeds if k == 0 else row_seeds(k, np.asarray(seeds, dtype=np.int64))


def gated(sample: Callable[[dict[str, np.ndarray]], pa.Table], batch: dict[str, np.ndarray],
          gate: QualityGate, table: pa.Table) -> pa.Table:
    """A micro-batch's rows through the gate: `table` (its first candidates, `sample(batch)`) with the
    failing rows retried (only they are sampled again), then the attempts and status columns."""
    n = len(table)
    exempt = np.zeros(n, dtype=bool)
    if "status" in table.column_names:  # rows the family already refused (bad input) carry their own reason
        exempt = np.asarray(pc.not_equal(table.column("status"), ACCEPTED).fill_null(True))
    ok = passes(table, gate) | exempt
    attempts = np.ones(n, dtype=np.int32)
    for k in range(1, gate.max_attempts):
        redo = np.flatnonzero(~ok)
        if len(redo) == 0:
            break
        retry = {key: value[redo] for key, value in batch.items()}
        retry["seed"] = candidate_seed(batch["seed"][redo], k)
        candidates = sample(retry)
        # Row r takes its new candidate: rows kept come from `table`, the others from `candidates`.
        where = np.arange(n)
        where[redo] = n + np.arange(len(redo))
        table = pa.concat_tables([table, candidates]).take(pa.array(where))
        attempts[redo] = k + 1
        ok[redo] = passes(candidates, gate)
    table = table.set_column(table.column_names.index("seed"), "seed", pa.array(batch["seed"], pa.int64()))
    status = np.where(ok, ACCEPTED, REJECTED).astype(object)
    if "status" in table.column_names:
        status[exempt] = np.asarray(table.column("status").to_pylist(), dtype=object)[exempt]
    return append_columns(table, {"attempts": pa.array(attempts, pa.int32()),
                                  "status": pa.array(status.tolist(), pa.string())})


def counts(attempts: np.ndarray, status: np.ndarray) -> dict[str, int]:
    """The manifest's gate counts from every row's `attempts` and `status`."""
    accepted = status == ACCEPTED
    return {"requested": int(len(status)), "accepted_first_try": int((accepted & (attempts == 1)).sum()),
            "accepted_later": int((accepted & (attempts > 1)).sum()), "rejected": int((status == REJECTED).sum()),
            "not_gated": int((~accepted & (status != REJECTED)).sum())}
