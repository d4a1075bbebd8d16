"""The dataset card: `quality.json`, a HuggingFace dataset card `README.md` and its pictures, in the dataset's folder.

    written by `raygen generate` at its end (--no-card: not) and by `raygen quality URI` (gen_jobs.quality_report)

    README.md          YAML front matter (features, rows, configs -> part-*.parquet) that the
                       HuggingFace Hub and `datasets` read; then health at a glance (the warnings),
                       samples, the figures with what each means, training curves, provenance
    quality.json       the figures, as raygen computed them
    card-samples.png   the family's preview (a grid, piano rolls, before/after), when it has one
    card-training.png  the training curves: every epoch's figures from the checkpoint's history
    _card.json         what raygen wrote, {file: sha256}: a card file edited since is the user's,
                       and raygen neither overwrites nor deletes it (gen_jobs.data.output_folder)
"""

from __future__ import annotations

import io
import json
import shlex

import yaml

from gen_jobs.core import checkpoint, registry, storage
from gen_jobs.core.errors import UserError
from gen_jobs.core.family import Preview
from gen_jobs.data.card_record import (
    CARD_FILES,
    CARD_RECORD,
    QUALITY,
    README,
    SAMPLES_PICTURE,
    TRAINING_PICTURE,
    is_raygens,
    recorded,
)
from gen_jobs.data.manifest import Manifest, sha256

# What the shared figures mean (each family's own come from its `figures`).
SHARED_FIGURES = {
    # a requests dataset (raygen generate --requests): its answers by HTTP status code
    **{f"status_codes.{code}": meaning for code, meaning in {
        "200": "lines answered (column response holds the route's answer)",
        "400": "lines the route refused (an unknown field, a value out of range, a route of another kind of model): "
               "their response is OpenAI's error body, naming the field",
        "404": "lines naming a route that batch lines may not name",
    }.items()},
    "duplicates.rows": "rows the duplicate figures rest on",
    "duplicates.blank": "rows with nothing to compare (empty text, a blank image): not counted as copies. A text "
                        "model writes an empty text when its end-of-text token comes first; the row keeps its place "
                        "(row i is a pure function of i): drop such rows when reading if they are not wanted",
    "duplicates.exact_duplicates": "rows that repeat an earlier row byte for byte (sha256 of the row's content)",
    "duplicates.exact_share": "exact_duplicates / rows",
    "duplicates.near_duplicates": "rows within a hair of an earlier row (see method); `examples` in quality.json "
                                  "holds pairs of ids",
    "duplicates.near_share": "near_duplicates / rows; reported, never warned on: how many near copies a healthy "
                             "model makes grows with the rows scored and differs by family, and no healthy spread "
                             "at each size is measured here (exact copies, which a healthy model does not make, warn "
                             "above 1%)",
    "duplicates.method": "what counts as a near copy: a 64-bit perceptual hash within 2 bits (images), MinHash "
                         "Jaccard >= 0.8 of shingles (text, tokens)",
    "training_copies.rows": "rows whose `copy` column is known",
    "training_copies.flagged": "rows flagged as copies of the training data (column `copy`)",
    "training_copies.share": "flagged / rows: above 1% the model memorises",
}
NOT_FIGURES = {"summary", "warnings", "examples"}


def write_card(out: str, manifest: Manifest, quality: dict | None, log=print) -> list[str]:
    """Write the card's files into the dataset folder `out`; returns their URIs.

    A README.md or quality.json there that raygen did not write (or that was edited
    since) is the user's: the card is refused, naming it, and nothing is written.
    """
    record = recorded(out)
    for name in CARD_FILES:
        uri = storage.join(out, name)
        if storage.exists(uri) and not is_raygens(out, name, record):
            raise UserError(f"{uri} is not the card raygen wrote (yours, or edited since): raygen leaves it as it is; "
                            "move it away to get a new card, or pass --no-card")
    family = registry.get(manifest.family)
    files: dict[str, bytes] = {QUALITY: json.dumps(quality or {}, indent=2, sort_keys=True).encode()}
    # (a requests dataset's rows are answers as JSON, not the family's columns: its card has no excerpts)
    preview = family.load("preview")(out, manifest) if family.preview and manifest.source.kind != "requests" else Preview()
    if preview.picture is not None:
        files[SAMPLES_PICTURE] = preview.picture
    history = checkpoint.training_history(manifest.checkpoint) if storage.exists(manifest.checkpoint) else []
    curves = training_picture(history)
    if curves is not None:
        files[TRAINING_PICTURE] = curves
    meanings = {**SHARED_FIGURES, **(family.load("figures") if family.figures else {})}
    files[README] = readme(out, manifest, quality or {}, meanings, preview, history, set(files)).encode()
    written = []
    for name, data in files.items():
        storage.write_bytes_atomic(storage.join(out, name), data)
        written.append(storage.join(out, name))
    for name in set(record) - set(files):  # a picture this card no longer has (only raygen's own)
        if storage.exists(storage.join(out, name)) and is_raygens(out, name, record):
            storage.delete_file(storage.join(out, name))
    record_bytes = json.dumps({"files": {name: sha256(data) for name, data in files.items()}}, indent=2).encode()
    storage.write_bytes_atomic(storage.join(out, CARD_RECORD), record_bytes)
    log(f"dataset card: {storage.join(out, README)} (with {', '.join(n for n in files if n != README)})")
    return written


def data_files(manifest: Manifest) -> str:
    """The pattern of the dataset's shards inside its folder (its data files, nothing else)."""
    return "part-*.parquet" if manifest.key_layout == "flat" else "*/part-*.parquet"


def front_matter(manifest: Manifest, total_bytes: int) -> dict:
    """The HuggingFace dataset card metadata: features from the shards' own HF schema, rows, configs."""
    data = {
        "pretty_name": f"raygen {manifest.family}: {manifest.recipe.get('name', manifest.family)}",
        "tags": ["synthetic", "raygen", manifest.family],
        "size_categories": [size_category(manifest.num_rows)],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": data_files(manifest)}]}],
        "dataset_info": {
            "splits": [{"name": "train", "num_bytes": total_bytes, "num_examples": manifest.num_rows}],
            "dataset_size": total_bytes,
        },
    }
    order = [f["name"] for f in manifest.schema_.get("fields", [])]  # the shards' column order (the JSON sorts keys)
    hf = manifest.schema_.get("huggingface_features") or {}
    features = yaml_features({name: hf[name] for name in order if name in hf} if set(hf) <= set(order) else hf)
    if features:
        data["dataset_info"] = {"features": features, **data["dataset_info"]}
    return data


def yaml_features(features: dict) -> list[dict] | None:
    """HuggingFace `Features.to_dict()` -> the card's `dataset_info.features` list (None for a kind it cannot say)."""
    out = []
    for name, spec in features.items():
        kind = spec.get("_type")
        if kind == "Value":
            out.append({"name": name, "dtype": spec["dtype"]})
        elif kind in ("Image", "Audio", "Video"):
            out.append({"name": name, "dtype": kind.lower()})
        elif kind == "ClassLabel":
            out.append({"name": name, "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(spec["names"])}}}})
        elif kind in ("List", "Sequence") and spec.get("feature", {}).get("_type") == "Value":
            out.append({"name": name, "list" if kind == "List" else "sequence": spec["feature"]["dtype"]})
        else:
            return None
    return out or None


def size_category(rows: int) -> str:
    """The Hub's size bucket for a row count."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")):
        if rows < limit:
            return name
    return "n>1T" if rows > 10**12 else "1B<n<10B"


def flat_figures(quality: dict) -> dict[str, object]:
    """{name: value} of the numbers in a quality dict, nested dicts as `outer.inner` (one level)."""
    out = {}
    for key, value in quality.items():
        if key in NOT_FIGURES:
            continue
        if isinstance(value, dict):
            for inner, v in value.items():
                if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                    out[f"{key}.{inner}"] = v
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            out[key] = value
    return out


def readme(out: str, manifest: Manifest, quality: dict, meanings: dict[str, str], preview: Preview,
           history: list[dict], files: set[str]) -> str:
    total_bytes = sum(storage.size(storage.join(out, e.file)) if e.bytes is None else e.bytes for e in manifest.shards)
    warnings = quality.get("warnings", [])
    name = manifest.recipe.get("name", manifest.family)
    lines = ["---", yaml.safe_dump(front_matter(manifest, total_bytes), sort_keys=False).rstrip(), "---", "",
             f"# {name}: {manifest.num_rows:,} synthetic rows", "",
             f"Made by raygen from a `{manifest.family}` checkpoint: "
             f"{manifest.num_rows:,} rows in {len(manifest.shards)} Parquet shards (`{data_files(manifest)}`), "
             f"{total_bytes / 1e6:,.1f} MB. Every row is a pure function of (checkpoint, recipe, seed, row id): "
             "`raygen verify` checks the shards against `_manifest.json`.", "", "## Health", ""]
    if not quality:
        lines.append("No figures: this family has no reference to score these rows against.")
    elif warnings:
        lines.append(f"**{len(warnings)} warning{'s' if len(warnings) > 1 else ''}**; look before you use it:")
        lines += ["", *[f"- {w}" for w in warnings]]
    else:
        lines.append("**Healthy**: no figure crossed its warning threshold (each is checked for significance "
                     "at this many rows).")
    if quality.get("summary"):
        lines += ["", f"In short: {quality['summary']}."]
    if manifest.gate_counts:
        c = manifest.gate_counts
        lines += ["", f"Filter `{manifest.gate.describe()}`: {c['accepted_first_try']:,} of {c['requested']:,} rows "
                  f"passed at the first try, {c['accepted_later']:,} later, {c['rejected']:,} never "
                  "(`status` = `rejected`)."]
    if SAMPLES_PICTURE in files or preview.excerpts:
        lines += ["", "## Samples"]
        if SAMPLES_PICTURE in files:
            lines += ["", f"![{preview.caption}]({SAMPLES_PICTURE})", "", f"*{preview.caption}*"]
        for excerpt in preview.excerpts:
            lines += ["", "```text", excerpt.replace("```", "'''"), "```"]
    figures = flat_figures(quality)
    if figures:
        lines += ["", "## Figures", "", "| figure | value | what it means |", "|---|---|---|"]
        for key, value in figures.items():
            shown = f"{value:,.4g}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
            meaning = meanings.get(key) or meanings.get(key.rsplit(".", 1)[-1], "")
            lines.append(f"| `{key}` | {shown} | {meaning.replace('|', chr(92) + '|')} |")
    if history:
        lines += ["", "## Training", ""]
        if TRAINING_PICTURE in files:
            lines += [f"![training curves]({TRAINING_PICTURE})", ""]
        last = history[-1]
        lines.append(f"{len(history)} epochs recorded; the last: " + ", ".join(
            f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)) + ".")
        events = [e for m in history for e in m.get("guard_events", [])]
        if events:
            lines += ["", "Training guard events:", "", *[f"- {e}" for e in events]]
    identity = manifest.identity()
    lines += ["", "## Provenance", "",
              f"- checkpoint: `{manifest.checkpoint}` (weights sha256 `{manifest.checkpoint_sha256[:16]}…`)",
              f"- made by: {identity.describe()}",
              f"- seed {manifest.seed}, {manifest.rows_per_shard:,} rows per shard, raygen {manifest.raygen_version}",
              f"- dataset digest: `{identity.digest()}`"]
    if manifest.command is not None:
        command = shlex.join(["raygen", "generate", "--out", out, *manifest.command])
        lines.append(f"- command (the same bytes, with any --workers): `{command}`")
    lines += ["", "<details><summary>recipe</summary>", "", "```json", json.dumps(manifest.recipe, indent=2), "```", "",
              "</details>", "", "## Use", "", "```python", "from datasets import load_dataset", "",
              f"ds = load_dataset(\"parquet\", data_files=\"{storage.join(out, data_files(manifest))}\", split=\"train\")",
              "```", "", "Figures again, on more rows or after a change: `raygen quality "
              f"{out}`.", ""]
    return "\n".join(lines)


def training_picture(history: list[dict]) -> bytes | None:
    """PNG of every numeric per-epoch figure against the epoch, one small panel each (None without history)."""
    keys = [k for k in history[0] if k not in ("epoch", "seconds", "rollbacks")
            and all(isinstance(m.get(k), (int, float)) and not isinstance(m.get(k), bool) for m in history)] if history else []
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster
    import matplotlib.pyplot as plt

    keys = keys[:12]
    columns = min(4, len(keys))
    rows = (len(keys) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    epochs = [m["epoch"] for m in history]
    for ax, key in zip(axes.flat, keys):
        ax.plot(epochs, [m[key] for m in history], marker="." if len(epochs) < 30 else None, linewidth=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
