"""The embedded demo: train the digits DCGAN, generate 10,000 labelled images, verify, score.

    raygen demo [--out ./out] [--workers 2] [--num-samples 10000]
    python -m gen_jobs.demo

Everything lands under --out:
    runs/dcgan_digits/           Ray Train run with its checkpoints
    dcgan_digits/                the dataset: part-*.parquet + _manifest.json
    dcgan_digits_grid.png        10x10 samples from the dataset, one row per label
A rerun trains and generates afresh (it replaces its own previous output).
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np
import pyarrow.parquet as pq
from pydantic import Field

from gen_jobs import storage
from gen_jobs.cli_args import run_main, validate_args
from gen_jobs.errors import UserError
from gen_jobs.recipes import StrictModel

RECIPE = "dcgan_digits"


class DemoArgs(StrictModel):
    out: str = "./out"
    workers: int = Field(2, gt=0)
    num_samples: int = Field(10_000, gt=0)
    set: list[str] = []


def read_dataset(out: str) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8 N x H x W x C) and labels of a dataset, in id order."""
    from gen_jobs.image_encoding import decode_png
    from gen_jobs.manifest import read_manifest

    manifest = read_manifest(out)
    images, labels = [], []
    for entry in manifest.shards:
        table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(out, entry.file))), columns=["label", "image"])
        labels.extend(table.column("label").to_pylist())
        images.extend(decode_png(cell["bytes"]) for cell in table.column("image").to_pylist())
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def sample_grid(images: np.ndarray, labels: np.ndarray, per_label: int = 10) -> np.ndarray:
    """uint8 (10*H) x (per_label*W): row k holds the first `per_label` images labelled k."""
    rows = []
    for k in range(10):
        picked = images[labels == k][:per_label]
        if len(picked) < per_label:
            raise UserError(f"the dataset has fewer than {per_label} images of label {k} for the grid")
        rows.append(np.concatenate(list(picked[..., 0]), axis=1))
    return np.concatenate(rows, axis=0)


def run(args: DemoArgs, log=print) -> dict:
    from PIL import Image

    from gen_jobs.generate import GenerateArgs, generate
    from gen_jobs.quality import DigitsReference
    from gen_jobs.recipes import load_recipe
    from gen_jobs.train import train
    from gen_jobs.verify import problems

    timings = {}
    recipe = load_recipe(RECIPE, args.set)
    runs = storage.join(args.out, "runs")
    storage.remove_tree(storage.join(runs, recipe.name))  # the demo always trains afresh
    log(f"[1/4] training {recipe.name} on {args.workers} Ray Train workers ({recipe.train.epochs} epochs)")
    started = time.perf_counter()
    ckpt = train(recipe, runs, recipe.name, args.workers, gpu=False)
    timings["train"] = time.perf_counter() - started

    dataset = storage.join(args.out, recipe.name)
    log(f"[2/4] generating {args.num_samples:,} images with {args.workers} Ray Data workers")
    started = time.perf_counter()
    generate(
        GenerateArgs(checkpoint=ckpt, out=dataset, num_samples=args.num_samples, workers=args.workers, overwrite=True),
        log=log,
    )
    timings["generate"] = time.perf_counter() - started

    log("[3/4] verifying shards against the manifest")
    bad, summary = problems(dataset)
    if bad:
        raise UserError(f"the demo dataset failed verification: {'; '.join(bad)}")
    log(summary)

    log("[4/4] scoring samples with the reference digits classifier")
    started = time.perf_counter()
    images, labels = read_dataset(dataset)
    quality = DigitsReference().score(images, labels)
    grid_uri = storage.join(args.out, f"{recipe.name}_grid.png")
    buf = io.BytesIO()
    Image.fromarray(sample_grid(images, labels)).save(buf, format="PNG")
    storage.write_bytes_atomic(grid_uri, buf.getvalue())
    timings["score"] = time.perf_counter() - started
    return {"checkpoint": ckpt, "dataset": dataset, "grid": grid_uri, "quality": quality, "timings": timings}


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        p = argparse.ArgumentParser(prog="raygen demo", description=__doc__.split("\n")[0])
        p.add_argument("--out", default="./out", help="output folder: path or s3:// URI")
        p.add_argument("--workers", type=int, default=2, help="Ray Train and Ray Data workers")
        p.add_argument("--num-samples", type=int, default=10_000, help="images to generate")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
        args = validate_args(DemoArgs, vars(p.parse_args(argv)))
        started = time.perf_counter()
        result = run(args)
        t = result["timings"]
        print()
        print(f"checkpoint:  {result['checkpoint']}")
        print(f"dataset:     {result['dataset']}  (verified)")
        print(f"sample grid: {result['grid']}  (one row per label 0-9)")
        print(f"quality:     {result['quality'].summary()}")
        for warning in result["quality"].warnings():
            print(f"warning:     {warning}")
        print(
            f"time:        {time.perf_counter() - started:.0f} s in all "
            f"(train {t['train']:.0f} s, generate {t['generate']:.0f} s, score {t['score']:.0f} s)"
        )
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
