"""The memory one Serve replica of a model needs at its largest batch: how many replicas may share one GPU.

    .venv/bin/python bench/replica_memory.py CHECKPOINT [CHECKPOINT ...] [--device cpu|cuda] [--config serving/config.yaml]

Each checkpoint (a checkpoint or run folder, local or s3://) is measured in a process of its own, as a
replica holds it: its pinned files written to a folder, the family's sampler built from them, then one
batch of the Serve config's `max_batch_size` rows for that model at the largest request the config's
limits let through (text and music: as many new tokens as the context holds; images: the largest
returned size; edits: an input photo of max_image_pixels, which the sampler shrinks to its
stylize.max_pixels). Printed per model: the weights' bytes and the peak memory the batch took
(cuda: torch.cuda.max_memory_allocated, which leaves out the CUDA context, ~0.3-0.5 GiB per process;
cpu: the process's peak RSS above what it held before the batch). The Serve configs' `gpu` fractions
(k8s/ray-service.raygen.yaml) rest on these figures.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from gen_jobs.core import checkpoint, registry
from gen_jobs.core.row_seed import row_seeds

REPO = Path(__file__).resolve().parents[1]


def photo(pixels: int) -> bytes:
    """A square noise photo of about `pixels` pixels, PNG."""
    from PIL import Image

    side = int(pixels ** 0.5)
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def largest_batch(rows_from: str, rows: int, limits: dict) -> dict[str, np.ndarray]:
    """`rows` rows of the largest request of a model whose rows come from `rows_from`."""
    ids = np.arange(rows, dtype=np.int64)
    batch = {"id": ids, "seed": row_seeds(0, ids)}
    if rows_from == "prompts":
        batch["prompt"] = np.array([None] * rows, dtype=object)
    elif rows_from == "images":
        batch["input"] = np.array([photo(limits["max_image_pixels"])] * rows, dtype=object)
        batch["source"] = np.array([f"{i}.png" for i in ids], dtype=object)
    return batch


def measure(uri: str, device: str, rows: int, limits: dict) -> dict:
    """In this process: the sampler of `uri` built as a replica builds it, then its largest batch."""
    import torch

    pinned = checkpoint.pin(checkpoint.latest(uri))
    recipe = pinned.recipe
    family = registry.get(recipe.family)
    sampling = getattr(recipe, "sampling", None)
    if sampling is not None and hasattr(sampling, "max_new_tokens"):  # as many new tokens as the context holds
        context = recipe.model.n_positions
        recipe = recipe.model_copy(update={"sampling": sampling.model_copy(
            update={"max_new_tokens": min(limits["max_tokens"], context - 1)})})
    with checkpoint.materialise(pinned) as folder:
        sampler = family.load("sampler")(folder, device, recipe)
    batch = largest_batch(family.rows_from, rows, limits)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        sampler(batch)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
    return {"family": recipe.family, "weights_bytes": len(pinned.files[checkpoint.SAMPLER_WEIGHTS]),
            "rows": rows, "peak_bytes": peak}


def served_models(config: Path) -> tuple[dict[str, dict], dict]:
    """{checkpoint's run name: model spec} and the limits of a Serve config."""
    args = yaml.safe_load(config.read_text())["applications"][0]["args"]
    return {Path(m["checkpoint"]).name: m for m in args["models"]}, {"max_tokens": 512, "max_image_pixels": 1048576,
                                                                     **args.get("limits", {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--config", default=str(REPO / "serving" / "config.yaml"), help="whose batch sizes and limits")
    p.add_argument("--one", help=argparse.SUPPRESS)  # (a child process: measure this one checkpoint)
    args = p.parse_args()
    models, limits = served_models(Path(args.config))
    if args.one:
        newest = checkpoint.latest(args.one)  # a run folder names its newest checkpoint; the config names the run
        run = Path(args.one).name if newest != args.one.rstrip("/") else Path(newest).parent.name
        rows = models.get(run, {}).get("batching", {}).get("max_batch_size", 8)
        print(json.dumps(measure(args.one, args.device, rows, limits)))
        return
    for uri in args.checkpoints:
        done = subprocess.run([sys.executable, __file__, uri, "--one", uri, "--device", args.device,
                               "--config", args.config], capture_output=True, text=True, check=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{figures['family']:6} {uri}: weights {figures['weights_bytes'] / 2**20:.1f} MiB, "
              f"batch of {figures['rows']} rows at the largest request: peak {figures['peak_bytes'] / 2**20:.0f} MiB "
              f"({args.device})")


if __name__ == "__main__":
    main()
