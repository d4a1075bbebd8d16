"""Requests/s and p50/p99 latency of the Serve app, batching on and off, against calling the sampler directly.

    .venv/bin/python bench/serve_load.py [--seconds 6] [--concurrency 1 8 32]

Starts a local Ray cluster and the raygen app on a loopback port, serving the
demo-sized digits DCGAN and pydoc GPT (random weights: the cost does not depend
on them), one replica each. For each endpoint, batching (max_batch_size 32 / 1)
and concurrency, closed-loop httpx clients send requests for --seconds
(images: one 32x32 PNG; text: 16 new tokens from an empty prompt). The
baseline is the same Sampler called directly in this process with one thread,
one row at a time (what one request costs without Serve). Prints one line per
run, then the ratios:

    image  batching on  c=32: <rps> req/s, p50 <ms> ms, p99 <ms> ms
    ...
    image: batching gives <R>x the requests/s at concurrency 32
    image: Serve adds <ms> ms to the p50 of a lone request (direct sampler call <ms> ms)

A lone request's overhead is read with batching off: with it on, a request
alone also waits out batch_wait_timeout_s (5 ms) for company. Last, where a
lone request's time goes: Serve's own floor (a trivial deployment behind the
proxy; a trivial two-deployment app, ingress -> model handle, no raygen code),
the proxy -> gateway hop (GET /healthz) and a no-op gateway -> model call (a
deployment handle from this process); then the goals, judged against the
two-deployment floor measured in the same run:

    goal image lone p50 <= two-deployment floor + direct call + 2 ms: <ms> <= <ms> ms: met|not met
    goal text batching >= 3x at concurrency 32: <R>x: met|not met
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from gen_jobs.core import registry

QUIET = {"log_level": "WARNING", "enable_access_log": False}  # no per-request log lines to write and forward
BODIES = {
    "image": ("/v1/images/generations", {"model": "image"}),
    "text": ("/v1/completions", {"model": "text", "prompt": "", "max_tokens": 16}),
}


def free_port() -> int:
    """A free loopback port outside Ray's worker-port range (10002-19999)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if not 10002 <= port <= 19999:
            return port


def make_checkpoints(folder: Path) -> dict[str, str]:
    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.families.dcgan.training import GAN
    from gen_jobs.families.gpt.data import load_documents
    from gen_jobs.families.gpt.model import build_model, save as save_gpt, train_tokenizer

    torch.manual_seed(0)
    GAN(load_recipe("dcgan_digits"), torch.device("cpu")).save(folder / "dcgan", {"epoch": 0})
    recipe = load_recipe("gpt_pydoc")
    tokenizer = train_tokenizer(load_documents(recipe.data), recipe.model.vocab_size)
    save_gpt(folder / "gpt", recipe, build_model(recipe.model), tokenizer, {"epoch": 0})
    return {"image": str(folder / "dcgan"), "text": str(folder / "gpt")}


def direct_p50_ms(kind: str, checkpoint: str, calls: int = 60) -> float:
    from gen_jobs.data.images import encode_png

    torch.set_num_threads(1)  # a replica with num_cpus=1 runs torch on one thread too
    sampler = registry.get("dcgan" if kind == "image" else "gpt").load("sampler")(checkpoint)
    batch = {"seed": np.array([1])}
    if kind == "text":
        from gen_jobs.data.columns import object_column

        batch["max_new_tokens"] = np.array([16])
        batch["stop"] = object_column([[]])
    times = []
    for i in range(calls):
        batch["seed"] = np.array([i])
        started = time.perf_counter()
        out = sampler(batch)
        if kind == "image":
            encode_png(out["image"])  # the response carries PNG bytes
        times.append(time.perf_counter() - started)
    return statistics.median(times[5:]) * 1000


async def load(url: str, kind: str, concurrency: int, seconds: float) -> tuple[float, float, float, int]:
    path, body = BODIES[kind]
    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds

    async def client(c: httpx.AsyncClient, worker: int) -> None:
        nonlocal errors
        i = worker
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            answer = await c.post(path, json={**body, "seed": i})
            if answer.status_code != 200:
                errors += 1
            latencies.append(time.perf_counter() - started)
            i += concurrency

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        started = time.perf_counter()
        await asyncio.gather(*(client(c, w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return len(latencies) / elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), errors


async def lone_p50_ms(call, calls: int = 200) -> float:
    """Median ms of `await call()`, one call at a time, the first 10 left out as warm-up."""
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times[10:]) * 1000


async def lone_get_p50_ms(url: str, path: str) -> float:
    async with httpx.AsyncClient(base_url=url) as c:
        async def get() -> None:
            (await c.get(path)).raise_for_status()

        return await lone_p50_ms(get)


def breakdown(url: str) -> float:
    """Where a lone request's milliseconds go, hop by hop; returns the two-deployment floor's p50 (ms)."""
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0})  # the model replicas hold both CPUs
    class Trivial:
        async def __call__(self, request) -> str:
            return "ok"

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class TrivialModel:
        async def __call__(self, value: str) -> str:
            return value

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class TrivialIngress:  # raygen's shape with nothing of raygen: proxy -> ingress -> model handle
        def __init__(self, model):
            self.model = model

        async def __call__(self, request) -> str:
            return await self.model.remote("ok")

    serve.run(Trivial.bind(), name="floor", route_prefix="/floor", logging_config=QUIET)
    floor = asyncio.run(lone_get_p50_ms(url, "/floor"))
    serve.delete("floor")
    serve.run(TrivialIngress.bind(TrivialModel.bind()), name="floor2", route_prefix="/floor2", logging_config=QUIET)
    floor2 = asyncio.run(lone_get_p50_ms(url, "/floor2"))
    serve.delete("floor2")
    gateway = asyncio.run(lone_get_p50_ms(url, "/healthz"))
    handle = serve.get_deployment_handle("model-image", "raygen")
    model_hop = asyncio.run(lone_p50_ms(handle.describe.remote))  # answers from memory: the call's own cost
    print(f"Serve's floor: a trivial deployment answers a lone GET in {floor:.1f} ms p50; "
          f"a trivial ingress -> model handle app in {floor2:.1f} ms p50")
    print(f"raygen: proxy -> gateway (GET /healthz) {gateway:.1f} ms p50; a no-op gateway -> model call {model_hop:.1f} ms p50")
    return floor2


def deploy(checkpoints: dict[str, str], max_batch_size: int) -> None:
    from ray import serve

    from serving.app import build_app
    from serving.config import AppConfig

    config = AppConfig(models=[
        {"name": kind, "checkpoint": uri, "num_cpus": 1, "batching": {"max_batch_size": max_batch_size},
         "max_ongoing_requests": 64, "max_queued_requests": -1}
        for kind, uri in checkpoints.items()
    ], limits={"max_n": 1})
    serve.run(build_app(config), name="raygen", route_prefix="/", blocking=False, logging_config=QUIET)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = p.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback
    os.environ.pop("RAYGEN_API_KEY", None)

    import ray
    from ray import serve

    results: dict[tuple[str, bool, int], tuple] = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = make_checkpoints(Path(tmp))
        direct = {kind: direct_p50_ms(kind, uri) for kind, uri in checkpoints.items()}
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
                 object_store_memory=150 * 1024 * 1024)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=QUIET)
        url = f"http://127.0.0.1:{port}"
        try:
            for batching in (True, False):
                deploy(checkpoints, 32 if batching else 1)
                for kind in BODIES:
                    asyncio.run(load(url, kind, 4, 1.0))  # warm-up
                    for c in args.concurrency:
                        rps, p50, p99, errors = results[kind, batching, c] = asyncio.run(load(url, kind, c, args.seconds))
                        print(f"{kind:<5}  batching {'on ' if batching else 'off'}  c={c:<3}: {rps:7.1f} req/s, "
                              f"p50 {p50:7.1f} ms, p99 {p99:7.1f} ms" + (f", {errors} errors" if errors else ""), flush=True)
            floor2 = breakdown(url)
        finally:
            serve.shutdown()
            ray.shutdown()
    top = max(args.concurrency)
    for kind in BODIES:
        gain = results[kind, True, top][0] / results[kind, False, top][0]
        print(f"{kind}: batching gives {gain:.2f}x the requests/s at concurrency {top}")
        # Batching off: with batching on, a lone request also waits out batch_wait_timeout_s.
        lone = results[kind, False, 1][1] if 1 in args.concurrency else float("nan")
        print(f"{kind}: Serve adds {lone - direct[kind]:.1f} ms to the p50 of a lone request "
              f"(direct sampler call {direct[kind]:.1f} ms)")
    # The goals, against the floor measured in this same run.
    if 1 in args.concurrency:
        lone, budget = results["image", False, 1][1], floor2 + direct["image"] + 2
        print(f"goal image lone p50 <= two-deployment floor + direct call + 2 ms: {lone:.1f} <= {budget:.1f} ms: "
              f"{'met' if lone <= budget else 'not met'}")
    gain = results["text", True, top][0] / results["text", False, top][0]
    print(f"goal text batching >= 3x at concurrency {top}: {gain:.2f}x: {'met' if gain >= 3 else 'not met'}")


if __name__ == "__main__":
    main()
