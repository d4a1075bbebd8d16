"""Images/s of raygen's diffusion Sampler vs a bare loop of the same diffusers calls, A and B interleaved.

    .venv/bin/python bench/diffusion_sampler.py [--device cuda] [--rows 1024] [--batch 256] [--pairs 5] [--set KEY=VALUE ...]

Both sides sample with the recipe's U-Net (random weights: the cost does not depend
on them), its scheduler, steps and guidance, at the same batch size, in one process.
The bare loop is what a diffusers pipeline does: torch.randn noise, both guidance
branches in one U-Net call on the whole batch, `scheduler.step`, uint8 images.
The Sampler adds what a dataset row needs: the row's label and noise from its seed
(gen_jobs.core.seeding, on the device) and U-Net calls of exactly `sampling.chunk`
rows (the last one padded), which make a row's bytes independent of its batch.
The two run in turn, `--pairs` times (this machine drifts by 10% within minutes);
it prints each pair's ratio, then their median and spread:

    pair 1: sampler <img/s>, bare <img/s>, ratio <R>
    ...
    median ratio <R> over <P> pairs (<min> to <max>); <rows> images a side, batch <B>, chunk <C>, <device>
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
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()

    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.families.diffusion.model import sampling_scheduler, training_scheduler
    from gen_jobs.families.diffusion.sampler import Sampler
    from gen_jobs.families.diffusion.training import Denoiser

    recipe = load_recipe("diffusion_digits", args.set)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        Denoiser(recipe, torch.device("cpu")).save(Path(tmp) / "ckpt", {"epoch": 0})
        sampler = Sampler(str(Path(tmp) / "ckpt"), args.device)
    device, cfg, sampling = torch.device(args.device), recipe.model, recipe.sampling
    seeds = np.arange(args.rows, dtype=np.int64)

    def sampler_rate() -> float:
        started = time.perf_counter()
        for i in range(0, args.rows, args.batch):
            sampler({"seed": seeds[i: i + args.batch]})
        return args.rows / (time.perf_counter() - started)

    def bare_rate() -> float:
        unet = sampler.unet
        started = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, args.rows, args.batch):
                n = min(args.batch, args.rows - i)
                scheduler = sampling_scheduler(training_scheduler(recipe.noise).config, sampling.scheduler)
                scheduler.set_timesteps(sampling.steps, device=device)
                x = torch.randn(n, cfg.channels, cfg.image_size, cfg.image_size, device=device)
                y = torch.randint(cfg.num_classes, (n,), device=device)
                both = torch.cat([y, torch.full_like(y, cfg.num_classes)])
                for t in scheduler.timesteps:
                    model_in = scheduler.scale_model_input(x, t)
                    cond, uncond = unet(torch.cat([model_in, model_in]), t, class_labels=both).sample.chunk(2)
                    x = scheduler.step(uncond + sampling.guidance_scale * (cond - uncond), t, x).prev_sample
                ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        return args.rows / (time.perf_counter() - started)

    sampler_rate(), bare_rate()  # warm-up (allocator, cuDNN's algorithm choice)
    ratios = interleaved_ratios(sampler_rate, bare_rate, args.pairs,
                                lambda _, ours, theirs: f"sampler {ours:,.1f} img/s, bare {theirs:,.1f} img/s")
    print(f"{summary(ratios)}; "
          f"{args.rows:,} images a side, batch {args.batch}, chunk {sampling.chunk}, {args.device}")


if __name__ == "__main__":
    main()
