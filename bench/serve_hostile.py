"""Latency of ordinary requests while costly ones arrive: the p99 under attack against an idle server's.

    .venv/bin/python bench/serve_hostile.py [--pairs 5] [--requests 20]

Starts a local Ray cluster (2 CPUs) and the raygen app on a loopback port with
the demo-sized music and style models (random weights: the cost does not
depend on them), one replica each, the default limits. The ordinary request is
a 32-token piece from the music model. The attack keeps six costly requests in
flight, the review's probes at the largest size the limits let through:
three MusicXML primers of one note and 9,000 <print/> elements (under every
count; music21 needs seconds for them) and three edits of a 4096x4096 16-bit
PNG (at limits.max_input_pixels) with n=8.

Phases A (idle) and B (under attack) alternate, --pairs times; each sends
--requests ordinary requests one after the other and reads their p99. Prints
each pair, then the median ratio B/A and its spread, what the costly requests
got, and whether anything was left behind (a primer process, a request
unanswered):

    pair 1: idle p99 <ms> ms, under attack p99 <ms> ms, ratio <r>
    ...
    p99 under attack / idle: median ratio <r> over <n> pairs (<min> to <max>); goal <= 2: met|not met
    costly requests answered: {status: count}; left running afterwards: <n> primer processes
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import statistics
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from pairs import summary  # noqa: E402  (this folder's own helpers)
from serve_load import QUIET, free_port  # noqa: E402

from serving.primer import running_parsers  # noqa: E402

ORDINARY = {"model": "music", "max_tokens": 32}


def make_checkpoints(folder: Path) -> dict[str, str]:
    import torch

    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.families.music.model import build_model, build_tokenizer, save, special_ids
    from gen_jobs.families.style.training import TrainingTask
    from gen_jobs.training.harness import Workers

    torch.manual_seed(0)
    recipe = load_recipe("music_chorales")
    tokenizer = build_tokenizer(recipe.tokenizer)
    save(folder / "music", recipe, build_model(recipe.model, len(tokenizer), *special_ids(tokenizer)), tokenizer,
         {"epoch": 0})
    recipe = load_recipe("style_sample")
    TrainingTask(recipe, TrainingTask.prepare(recipe), Workers(0, 1, torch.device("cpu"))).save(folder / "style",
                                                                                                 {"epoch": 0})
    return {"music": str(folder / "music"), "style": str(folder / "style")}


def costly_bodies() -> tuple[dict, dict]:
    """(the primer request's JSON, the edit request's form fields and file), each the largest the limits let in."""
    from PIL import Image

    xml = (b'<?xml version="1.0"?><score-partwise><part-list><score-part id="P1"><part-name>x</part-name>'
           b'</score-part></part-list><part id="P1"><measure number="1"><attributes><divisions>1</divisions>'
           b'</attributes><note><pitch><step>C</step><octave>4</octave></pitch><duration>1</duration></note>'
           + b"<print/>" * 9_000 + b"</measure></part></score-partwise>")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("score.xml", xml)
    primer = {"model": "music", "max_tokens": 8, "primer": base64.b64encode(archive.getvalue()).decode()}
    png = io.BytesIO()
    Image.new("I;16", (4096, 4096)).save(png, format="PNG")
    edit = {"data": {"model": "style", "prompt": "", "style": "0", "n": "8"},
            "files": {"image": ("big.png", png.getvalue(), "image/png")}}
    return primer, edit


async def ordinary_p99_ms(c: httpx.AsyncClient, requests: int, seed: int) -> float:
    times = []
    for i in range(requests):
        started = time.perf_counter()
        answer = await c.post("/v1/music/generations", json={**ORDINARY, "seed": seed + i})
        answer.raise_for_status()
        times.append(time.perf_counter() - started)
    return float(np.percentile(np.array(times) * 1000, 99))


async def attack(c: httpx.AsyncClient, primer: dict, edit: dict, stop: asyncio.Event, statuses: Counter) -> None:
    async def primers() -> None:
        while not stop.is_set():
            statuses[f"primer {(await c.post('/v1/music/generations', json=primer)).status_code}"] += 1

    async def edits() -> None:
        while not stop.is_set():
            statuses[f"edit {(await c.post('/v1/images/edits', **edit)).status_code}"] += 1

    await asyncio.gather(*(primers() for _ in range(3)), *(edits() for _ in range(3)))


async def run(url: str, pairs: int, requests: int) -> None:
    primer, edit = costly_bodies()
    statuses: Counter = Counter()
    ratios = []
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=16)) as c:
        await ordinary_p99_ms(c, 5, 10**6)  # warm-up
        for pair in range(1, pairs + 1):
            idle = await ordinary_p99_ms(c, requests, pair * 1000)
            stop = asyncio.Event()
            attackers = asyncio.create_task(attack(c, primer, edit, stop, statuses))
            await asyncio.sleep(2)  # the costly requests are in flight
            loaded = await ordinary_p99_ms(c, requests, pair * 1000 + 500)
            stop.set()
            await attackers  # every costly request answered before the next idle phase
            ratios.append(loaded / idle)
            print(f"pair {pair}: idle p99 {idle:.0f} ms, under attack p99 {loaded:.0f} ms, ratio {ratios[-1]:.2f}",
                  flush=True)
    await asyncio.sleep(1)
    met = statistics.median(ratios) <= 2
    print(f"p99 under attack / idle: {summary(ratios)}; goal <= 2: {'met' if met else 'not met'}")
    print(f"costly requests answered: {dict(sorted(statuses.items()))}; left running afterwards: "
          f"{running_parsers()} primer processes")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--requests", type=int, default=20)
    args = p.parse_args()
    os.environ.pop("RAYGEN_API_KEY", None)

    import ray
    from ray import serve

    from serving.app import build_app
    from serving.config import AppConfig

    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = make_checkpoints(Path(tmp))
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
                 object_store_memory=150 * 1024 * 1024)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=QUIET)
        try:
            config = AppConfig(models=[{"name": kind, "checkpoint": uri, "num_cpus": 1}
                                       for kind, uri in checkpoints.items()])
            serve.run(build_app(config), name="raygen", route_prefix="/", blocking=False, logging_config=QUIET)
            asyncio.run(run(f"http://127.0.0.1:{port}", args.pairs, args.requests))
        finally:
            serve.shutdown()
            ray.shutdown()


if __name__ == "__main__":
    main()
