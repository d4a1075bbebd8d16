"""Images/s of raygen's DCGAN Sampler vs a bare `G(z)` loop, and CPU-vs-device agreement.

    .venv/bin/python bench/dcgan_sampler.py [--device cuda] [--rows 16384] [--batch 1024] [--pairs 5] [--set model.width=64 ...]

Both sides use the same generator (random weights: the cost does not depend on
them) and batch size in one process; the Sampler adds what a dataset row needs:
its label and latent from the row's seed (gen_jobs.core.seeding's counter-based
noise, computed on the device) and the uint8 image; the bare loop uses torch.randn.
On a GPU it also prints how many images differ from the CPU's and by how much.

The two run in turn, --pairs times (this machine drifts by 10% within minutes):

    pair 1: sampler <img/s>, bare G(z) <img/s>, ratio <R>
    ...
    median ratio <R> over <P> pairs (<min> to <max>); <rows> images a side, batch <B>, <device>
    cpu vs cuda: <D> of <N> images differ, max |pixel diff| <M>
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pairs import interleaved_ratios, summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--rows", type=int, default=16384)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()

    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.families.dcgan.sampler import Sampler
    from gen_jobs.families.dcgan.training import GAN

    recipe = load_recipe("dcgan_digits", args.set)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        GAN(recipe, torch.device("cpu")).save(Path(tmp) / "ckpt", {"epoch": 0})
        sampler = Sampler(str(Path(tmp) / "ckpt"), args.device)
        cpu = Sampler(str(Path(tmp) / "ckpt"), "cpu") if args.device != "cpu" else None
    device = torch.device(args.device)
    seeds = np.arange(args.rows, dtype=np.int64)

    def sampler_rate() -> float:
        started = time.perf_counter()
        for i in range(0, args.rows, args.batch):
            sampler({"seed": seeds[i: i + args.batch]})
        return args.rows / (time.perf_counter() - started)

    def bare_rate() -> float:
        G, cfg = sampler.G, recipe.model
        started = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, args.rows, args.batch):
                n = min(args.batch, args.rows - i)
                z = torch.randn(n, cfg.latent_dim, device=device)
                y = torch.randint(cfg.num_classes, (n,), device=device)
                x = G(z, y if cfg.conditional else None)
                ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        return args.rows / (time.perf_counter() - started)

    sampler_rate(), bare_rate()  # warm-up (cuDNN algorithm choice, allocator)
    ratios = interleaved_ratios(sampler_rate, bare_rate, args.pairs,
                                lambda _, ours, theirs: f"sampler {ours:,.0f} img/s, bare G(z) {theirs:,.0f} img/s")
    print(f"{summary(ratios)}; {args.rows:,} images a side, batch {args.batch}, {args.device}")
    if cpu is not None:
        batch = {"seed": seeds[:256]}
        a, b = sampler(batch)["image"].astype(int), cpu(batch)["image"].astype(int)
        differ = int((a != b).reshape(len(a), -1).any(axis=1).sum())
        print(f"cpu vs {args.device}: {differ} of {len(a)} images differ, max |pixel diff| {int(np.abs(a - b).max())}")


if __name__ == "__main__":
    main()
