"""The quality figures of any raygen dataset, and its dataset card.

    raygen quality URI [--rows N] [--no-card]
    python -m gen_jobs.quality_report URI ...        # the same, for `ray job submit`

Reads the dataset's manifest and first N rows (default 10,000), computes the
family's figures (gen_jobs.quality.scoring: the family's own, duplicates, training
copies), prints them with their warnings, and writes `quality.json` and the
dataset card (README.md with HuggingFace front matter, card-samples.png,
card-training.png: gen_jobs.quality.card) into the dataset's folder, local or s3://.
The manifest is left as it is: it records what `raygen generate` measured.
Exit 0 when no figure warns, 1 when some do (a script can gate on it), 2 on bad input.
"""

from __future__ import annotations

import sys

from pydantic import Field

from gen_jobs.cli_args import ArgumentParser, run_main, validate_args
from gen_jobs.core import storage
from gen_jobs.core.errors import UserError
from gen_jobs.core.recipes import StrictModel
from gen_jobs.quality.scoring import SCORED_ROWS


class QualityArgs(StrictModel):
    uri: str
    rows: int = Field(SCORED_ROWS, gt=0, le=10_000_000)
    card: bool = True


def quality_report(args: QualityArgs, log=print) -> dict:
    """The dataset's figures (and its card, unless args.card is False)."""
    from gen_jobs.data.manifest import read_manifest
    from gen_jobs.quality.card import QUALITY, write_card
    from gen_jobs.quality.scoring import score

    if not storage.exists(args.uri):
        raise UserError(f"{args.uri} does not exist: pass a dataset folder written by raygen generate")
    manifest = read_manifest(args.uri)
    if manifest is None:
        raise UserError(f"{args.uri} has no _manifest.json: not a raygen dataset, or not finished "
                        "(complete it with raygen generate ... --resume)")
    rows = min(args.rows, manifest.num_rows)
    log(f"scoring the first {rows:,} of {manifest.num_rows:,} rows of {args.uri} ({manifest.family})")
    quality = score(args.uri, manifest.identity(), manifest.shards, max_rows=rows) or {}
    if args.card:
        write_card(args.uri, manifest, quality, log)
    else:
        log(f"--no-card: nothing written ({QUALITY} and README.md left as they were)")
    return quality


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        p = ArgumentParser(prog="raygen quality", description="Quality figures and dataset card of a raygen dataset.")
        p.add_argument("uri", help="dataset folder: path or s3:// URI")
        p.add_argument("--rows", type=int, default=SCORED_ROWS, help=f"rows scored, from id 0 (default {SCORED_ROWS:,})")
        p.add_argument("--no-card", dest="card", action="store_false",
                       help="print the figures only; write no quality.json, README.md or pictures")
        args = validate_args(QualityArgs, vars(p.parse_args(argv)))
        quality = quality_report(args)
        print(f"quality: {quality.get('summary', 'no figures for this family')}")
        warnings = quality.get("warnings", [])
        for warning in warnings:
            print(f"warning: {warning}")
        return 1 if warnings else 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
