"""Rows/s of raygen's Ray Data generation path vs a bare one-thread PyTorch loop.

    .venv/bin/python bench/generate_throughput.py [--num-samples 120000] [--rows-per-shard 1000] [--baseline-samples 60000]

Both sides make the same rows from the same digits DCGAN checkpoint (untrained
weights of the default recipe: the cost is the same as trained ones): sample,
score each image (classifier confidence, distance to the nearest training digit),
encode it as PNG and write Parquet shards; the benchmark checks that the two
sides' first shards hold equal columns. The baseline is a plain loop in this
process with torch.set_num_threads(1), one core's worth of work; the Ray path is
`raygen generate` with 1 and then 2 workers, each on a fresh local Ray, timed after
the cluster has started. This machine's speed drifts, so the bare loop runs before,
between and after them (--baseline-samples rows each), and each Ray run is compared
with the mean of the bare-loop runs either side of it.
It prints exactly four lines on stdout:

    1 worker: <rows/s> rows/s vs bare loop <rows/s> rows/s, ratio <R>
    2 workers: <rows/s> rows/s vs bare loop <rows/s> rows/s, ratio <R>
    steady state: 1 worker ratio <A>, 2 workers ratio <B>
    fixed start: <F> s

The first two are end to end: generate()'s whole call. The last two separate its
parts, from the times the shard files were written (their modification times):
steady state is the rows/s from the moment every worker has written its first
shard to the last shard, against the bare loop's rows/s; fixed start is the time
from generate()'s call to the first shard written, less one shard's time at the
steady rate of one worker (the larger of the 1- and 2-worker runs' figures).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import threadpoolctl
import torch
from PIL import Image


def make_checkpoint(folder: Path) -> str:
    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.families.dcgan.training import GAN

    torch.manual_seed(0)
    GAN(load_recipe("dcgan_digits"), torch.device("cpu")).save(folder, {"epoch": 0})
    return str(folder)


def bare_loop(checkpoint: str, out: Path, num_rows: int, rows_per_shard: int, micro_batch: int) -> float:
    """The plain-PyTorch baseline: one thread, no Ray, the same rows and columns. Returns seconds.

    Each row's quality figures (classifier confidence, distance to the nearest training
    digit) come from the same functions raygen's rows use: they are part of the work.
    """
    from safetensors.torch import load_file

    from gen_jobs.core import seeding
    from gen_jobs.core.checkpoint import read_recipe
    from gen_jobs.core.seeding import row_seeds
    from gen_jobs.families.dcgan.model import Generator
    from gen_jobs.quality.digits import row_figures

    torch.set_num_threads(1)
    # One core, like a Ray worker with num_cpus=1 (Ray sets OMP_NUM_THREADS=1 there): numpy's BLAS too.
    blas = threadpoolctl.threadpool_limits(limits=1)
    started = time.perf_counter()
    recipe = read_recipe(checkpoint)
    cfg = recipe.model
    G = Generator(cfg)
    G.load_state_dict(load_file(f"{checkpoint}/model.safetensors"))
    G.eval()
    out.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, num_rows, rows_per_shard)):
        ids = np.arange(start, min(start + rows_per_shard, num_rows), dtype=np.int64)
        seeds = row_seeds(0, ids)
        labels, pngs, figures = [], [], []
        for i in range(0, len(ids), micro_batch):
            s = seeding.seed_tensor(seeds[i: i + micro_batch])  # the same counter-based noise as raygen's rows
            y = seeding.integers(s, seeding.LABEL, cfg.num_classes)
            z = seeding.normals(s, seeding.LATENT, cfg.latent_dim)
            with torch.inference_mode():
                x = G(z, y)
            images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            figures.append(row_figures({"image": images, "label": y.numpy()}, recipe))
            for img in images[..., 0]:
                buf = io.BytesIO()
                Image.fromarray(img, mode="L").save(buf, format="PNG", compress_level=6)
                pngs.append(buf.getvalue())
            labels += y.tolist()
        image = pa.StructArray.from_arrays(
            [pa.array(pngs, pa.binary()), pa.array([f"{i}.png" for i in ids], pa.string())], names=["bytes", "path"]
        )
        columns = {"id": ids, "seed": seeds, "label": pa.array(labels, pa.int64())}
        for name in figures[0]:
            values = np.concatenate([f[name] for f in figures])
            columns[name] = pa.array(values, pa.bool_() if values.dtype == bool else pa.float64())
        table = pa.table({**columns, "image": image})
        pq.write_table(table, out / f"part-{k:05d}.parquet", row_group_size=len(table), compression="zstd")
    seconds = time.perf_counter() - started
    blas.restore_original_limits()
    return seconds


def ray_path(checkpoint: str, out: Path, num_rows: int, rows_per_shard: int, workers: int) -> dict[str, float]:
    """Runs `raygen generate`; returns its seconds end to end, steady rows/s and fixed start (s)."""
    from gen_jobs.generate import GenerateArgs, generate

    started_wall, started = time.time(), time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # its progress display: stdout is this benchmark's four lines
        manifest = generate(
            GenerateArgs(checkpoint=checkpoint, out=str(out), num_samples=num_rows, rows_per_shard=rows_per_shard,
                         workers=workers),
            log=lambda *_: None,
        )
    seconds = time.perf_counter() - started
    # When each shard was written: its file's modification time (the atomic rename keeps the write's).
    finished = sorted((os.stat(out / e.file).st_mtime, e.rows) for e in manifest.shards)
    if len(finished) < workers + 2:
        sys.exit(f"--num-samples gives {len(finished)} shards: too few to see a steady state with {workers} workers")
    all_started = finished[workers - 1][0]  # by then every worker has written a shard
    steady_rows = sum(rows for t, rows in finished[workers:])
    steady_rate = steady_rows / (finished[-1][0] - all_started)
    one_shard = rows_per_shard / (steady_rate / workers)  # one worker's time for one shard, at the steady rate
    return {"seconds": seconds, "steady_rate": steady_rate, "fixed_start": finished[0][0] - started_wall - one_shard}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-samples", type=int, default=120_000)
    p.add_argument("--rows-per-shard", type=int, default=1000)
    p.add_argument("--baseline-samples", type=int, default=60_000,
                   help="rows of each bare-loop run (its rate does not depend on the count; default 60,000)")
    args = p.parse_args()

    import ray

    from gen_jobs.core.checkpoint import read_recipe
    from gen_jobs.core.cluster import quiet_data_progress

    with tempfile.TemporaryDirectory(prefix="raygen-bench-") as tmp:
        tmp = Path(tmp)
        ckpt = make_checkpoint(tmp / "ckpt")
        micro_batch = read_recipe(ckpt).generate.batch_size
        n, n_bare = args.num_samples, min(args.baseline_samples, args.num_samples)
        bare_rates = []

        def measure_bare() -> None:
            out = tmp / f"bare{len(bare_rates)}"
            seconds = bare_loop(ckpt, out, n_bare, args.rows_per_shard, micro_batch)
            bare_rates.append(n_bare / seconds)
            print(f"bare loop: {n_bare} rows in {seconds:.1f} s", file=sys.stderr)
            if bare_rates[1:]:
                shutil.rmtree(out)  # (the first run's rows are kept for the comparison below)

        # The machine's speed drifts (a shared host): each Ray run is compared with the mean of the
        # bare-loop runs just before and just after it. Each Ray run is a fresh Ray, as a job's would be.
        measure_bare()
        results, steady, fixed, baseline = {}, {}, {}, {}
        for workers in (1, 2):
            ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
            quiet_data_progress()
            run = ray_path(ckpt, tmp / f"ray{workers}", n, args.rows_per_shard, workers)
            ray.shutdown()
            measure_bare()
            baseline[workers] = (bare_rates[-2] + bare_rates[-1]) / 2
            results[workers], steady[workers], fixed[workers] = n / run["seconds"], run["steady_rate"], run["fixed_start"]
            print(f"ray, {workers} worker(s): {n} rows in {run['seconds']:.1f} s, steady {run['steady_rate']:,.0f} rows/s, "
                  f"fixed start {run['fixed_start']:.1f} s", file=sys.stderr)
        # Same work on both sides: the baseline's rows are raygen's, column for column.
        bare = pq.read_table(tmp / "bare0" / "part-00000.parquet")
        ray_rows = pq.read_table(tmp / "ray1" / "part-00000.parquet")
        if bare.column_names != ray_rows.column_names or any(
                not bare.column(c).equals(ray_rows.column(c)) for c in bare.column_names):
            sys.exit("the baseline does not produce the same rows as raygen; fix the benchmark")
    for workers in (1, 2):
        print(f"{workers} worker{'s' if workers > 1 else ''}: {results[workers]:,.0f} rows/s vs bare loop "
              f"{baseline[workers]:,.0f} rows/s, ratio {results[workers] / baseline[workers]:.2f}")
    print(f"steady state: 1 worker ratio {steady[1] / baseline[1]:.2f}, 2 workers ratio {steady[2] / baseline[2]:.2f}")
    print(f"fixed start: {max(fixed.values()):.1f} s")


if __name__ == "__main__":
    main()
