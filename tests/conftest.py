"""Shared fixtures: one local Ray cluster and one S3 server per test session.

Everything listens on 127.0.0.1, on free ports outside Ray's worker-port range
(10002-19999), and is stopped when the session ends.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY_WORKER_PORTS = range(10002, 20000)
TINY = ["model.width=8", "train.epochs=1", "train.batch_size=64", "train.quality_samples=100", "generate.batch_size=64"]


def free_port() -> int:
    """A free loopback TCP port outside Ray's worker-port range."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RAY_WORKER_PORTS:
            return port


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto) on loopback, with a bucket `raygen`.

    Its address goes into AWS_ENDPOINT_URL before Ray starts, so Ray workers
    (which inherit the environment) reach it too.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="raygen")
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray cluster for the whole session (2 CPUs, no dashboard)."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=150 * 1024 * 1024,
        _node_ip_address="127.0.0.1",
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def checkpoint(ray_cluster, tmp_path_factory) -> str:
    """A tiny digits DCGAN trained for one epoch on 2 Ray Train workers."""
    from gen_jobs.recipes import load_recipe
    from gen_jobs.train import train

    recipe = load_recipe("dcgan_digits", TINY)
    storage = tmp_path_factory.mktemp("runs")
    return train(recipe, str(storage), "tiny", workers=2, gpu=False)


@pytest.fixture()
def random_checkpoint(tmp_path) -> str:
    """An untrained DCGAN checkpoint written without Ray: fast, for unit tests."""
    import torch

    from gen_jobs.models.dcgan import GAN
    from gen_jobs.recipes import load_recipe

    torch.manual_seed(0)
    recipe = load_recipe("dcgan_digits", TINY)
    folder = tmp_path / "ckpt"
    GAN(recipe, torch.device("cpu")).save(folder, {"epoch": 0})
    return str(folder)


def run_cli(*args: str, env: dict | None = None, timeout: float = 300):
    """Run the `raygen` console script; returns the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [str(BIN / "raygen"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
