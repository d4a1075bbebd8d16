"""Rows/s of raygen's Ray Data generation path vs a bare one-thread PyTorch loop.

    .venv/bin/python bench/generate_throughput.py [--num-samples 120000] [--rows-per-shard 1000]

Both sides sample the same rows from the same digits DCGAN checkpoint (untrained
weights of the default recipe: the cost is the same as trained ones), encode each
image as PNG and write Parquet shards. The baseline is a plain loop in this
process with torch.set_num_threads(1), one core's worth of work; the Ray path is
`raygen generate` with 1 and then 2 workers, timed after the cluster has started.
It prints exactly two lines on stdout:

    1 worker: <rows/s> rows/s vs bare loop <rows/s> rows/s, ratio <R>
    2 workers: <rows/s> rows/s vs bare loop <rows/s> rows/s, ratio <R>
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image


def make_checkpoint(folder: Path) -> str:
    from gen_jobs.families.dcgan.training import GAN
    from gen_jobs.recipes import load_recipe

    torch.manual_seed(0)
    GAN(load_recipe("dcgan_digits"), torch.device("cpu")).save(folder, {"epoch": 0})
    return str(folder)


def bare_loop(checkpoint: str, out: Path, num_rows: int, rows_per_shard: int, micro_batch: int) -> float:
    """The plain-PyTorch baseline: one thread, no Ray. Returns seconds."""
    from safetensors.torch import load_file

    from gen_jobs.checkpoint import read_recipe
    from gen_jobs.families.dcgan.model import Generator
    from gen_jobs import seeding
    from gen_jobs.seeding import row_seeds

    torch.set_num_threads(1)
    started = time.perf_counter()
    cfg = read_recipe(checkpoint).model
    G = Generator(cfg)
    G.load_state_dict(load_file(f"{checkpoint}/model.safetensors"))
    G.eval()
    out.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, num_rows, rows_per_shard)):
        ids = np.arange(start, min(start + rows_per_shard, num_rows), dtype=np.int64)
        seeds = row_seeds(0, ids)
        labels, pngs = [], []
        for i in range(0, len(ids), micro_batch):
            s = seeding.seed_tensor(seeds[i: i + micro_batch])  # the same counter-based noise as raygen's rows
            y = seeding.integers(s, seeding.LABEL, cfg.num_classes)
            z = seeding.normals(s, seeding.LATENT, cfg.latent_dim)
            with torch.inference_mode():
                x = G(z, y)
            images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()
            for img in images:
                buf = io.BytesIO()
                Image.fromarray(img, mode="L").save(buf, format="PNG", compress_level=6)
                pngs.append(buf.getvalue())
            labels += y.tolist()
        image = pa.StructArray.from_arrays(
            [pa.array(pngs, pa.binary()), pa.array([f"{i}.png" for i in ids], pa.string())], names=["bytes", "path"]
        )
        table = pa.table({"id": ids, "seed": seeds, "label": pa.array(labels, pa.int64()), "image": image})
        pq.write_table(table, out / f"part-{k:05d}.parquet", row_group_size=len(table), compression="zstd")
    return time.perf_counter() - started


def ray_path(checkpoint: str, out: Path, num_rows: int, rows_per_shard: int, workers: int) -> float:
    from gen_jobs.generate import GenerateArgs, generate

    started = time.perf_counter()
    generate(
        GenerateArgs(checkpoint=checkpoint, out=str(out), num_samples=num_rows, rows_per_shard=rows_per_shard, workers=workers),
        log=lambda *_: None,
    )
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-samples", type=int, default=120_000)
    p.add_argument("--rows-per-shard", type=int, default=1000)
    args = p.parse_args()

    import ray

    from gen_jobs.checkpoint import read_recipe
    from gen_jobs.cluster import quiet_data_progress

    with tempfile.TemporaryDirectory(prefix="raygen-bench-") as tmp:
        tmp = Path(tmp)
        ckpt = make_checkpoint(tmp / "ckpt")
        micro_batch = read_recipe(ckpt).generate.batch_size
        n = args.num_samples
        bare_s = bare_loop(ckpt, tmp / "bare", n, args.rows_per_shard, micro_batch)
        bare_rate = n / bare_s
        print(f"bare loop: {n} rows in {bare_s:.1f} s", file=sys.stderr)

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        quiet_data_progress()
        results = {}
        for workers in (1, 2):
            seconds = ray_path(ckpt, tmp / f"ray{workers}", n, args.rows_per_shard, workers)
            results[workers] = n / seconds
            print(f"ray, {workers} worker(s): {n} rows in {seconds:.1f} s", file=sys.stderr)
        ray.shutdown()
        # Same work on both sides: the baseline's images are raygen's, pixel for pixel.
        bare_images = pq.read_table(tmp / "bare" / "part-00000.parquet").column("image")
        ray_images = pq.read_table(tmp / "ray1" / "part-00000.parquet").column("image")
        if not bare_images.equals(ray_images):
            sys.exit("the baseline does not produce the same images as raygen; fix the benchmark")
    print(f"1 worker: {results[1]:,.0f} rows/s vs bare loop {bare_rate:,.0f} rows/s, ratio {results[1] / bare_rate:.2f}")
    print(f"2 workers: {results[2]:,.0f} rows/s vs bare loop {bare_rate:,.0f} rows/s, ratio {results[2] / bare_rate:.2f}")


if __name__ == "__main__":
    main()
