"""A dataset's quality figures: the family's own, duplicates, and rows flagged as copies of training data.

    used by raygen generate (into the manifest) and raygen quality (into quality.json and the card)
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from gen_jobs.core import registry
from gen_jobs.data.manifest import DatasetIdentity, ShardEntry, read_shards
from gen_jobs.quality.duplicates import duplicate_figures, duplicate_warnings

SCORED_ROWS = 10_000


def score(out: str, identity: DatasetIdentity, entries: list[ShardEntry], max_rows: int = SCORED_ROWS) -> dict | None:
    """The family's quality figures on the first `max_rows` rows of the dataset, with their duplicates
    (a requests dataset: its answers by status code, `answer_counts`)."""
    if identity.source.kind == "requests":
        return answer_counts(read_shards(out, entries, columns=["status_code"]))
    family = registry.get(identity.family)
    recipe = family.load("recipe").model_validate(identity.recipe)
    table = read_shards(out, entries, max_rows=max_rows)
    quality = family.load("score_dataset")(table, recipe, identity.checkpoint)
    duplicates = duplicate_figures(table)
    if duplicates is None and "copy" not in table.column_names:
        return quality
    quality = dict(quality or {"summary": f"{len(table):,} rows"})
    warnings = list(quality.get("warnings", []))
    if duplicates is not None:
        quality["duplicates"] = duplicates
        warnings += duplicate_warnings(duplicates)
        quality["summary"] += f", duplicates {duplicates['exact_share']:.1%} (near {duplicates['near_share']:.1%})"
        if duplicates["blank"]:  # e.g. texts the model ended at once: kept, since row i is a pure function of i
            quality["summary"] += f", blank rows {duplicates['blank']:,} of {duplicates['rows']:,}"
    if "copy" in table.column_names:  # memorisation: rows the family flags as copies of its training data
        known = pc.drop_null(table.column("copy")).to_numpy(zero_copy_only=False).astype(bool)  # (null: not known)
        quality["training_copies"] = {"rows": int(len(known)), "flagged": int(known.sum()),
                                      "share": round(float(known.mean()), 4) if len(known) else 0.0}
        quality["summary"] += f", training copies {quality['training_copies']['share']:.1%}"
        if len(known) and known.mean() > 0.01:
            warnings.append(f"{int(known.sum()):,} of {len(known):,} rows are flagged as copies of the training data "
                            "(column copy): the model memorises; train on more data or stop earlier")
    quality["warnings"] = warnings
    return quality


def answer_counts(table) -> dict:
    """A requests dataset's figures: how many lines were answered, and how many refused, by status code."""
    codes = table.column("status_code").to_numpy()
    by_code = {str(code): int(n) for code, n in zip(*np.unique(codes, return_counts=True))}
    answered = by_code.get("200", 0)
    refused = ", ".join(f"{n:,} with {code}" for code, n in by_code.items() if code != "200")
    summary = f"{len(codes):,} requests: {answered:,} answered" + (f", {refused}" if refused else "")
    warnings = [] if answered else ["no request was answered: every line's answer is an error (column response)"]
    return {"summary": summary, "status_codes": by_code, "warnings": warnings}
