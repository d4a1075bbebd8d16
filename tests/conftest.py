"""Shared fixtures: one local Ray cluster, one S3 server and one Serve app per test session.

Everything listens on 127.0.0.1, on free ports outside Ray's worker-port range
(10002-19999), and is stopped when the session ends.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# Ray's single-machine mode: every Ray process (and every driver we start) binds
# and connects to 127.0.0.1 instead of the machine's network address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# Token authentication on, as on any shared cluster, with a token of this session's own
# (not ~/.ray/auth_token), inherited by the head, the drivers and `ray job submit`.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
# On SIGTERM a Ray 2.60 node first drains its work elsewhere for up to 30 s; the
# session's head is the whole cluster, so stopping it has nothing to drain to.
os.environ["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY_WORKER_PORTS = range(10002, 20000)
TINY = ["model.width=8", "train.epochs=1", "train.batch_size=64", "train.quality_samples=100", "generate.batch_size=64"]


def pytest_collection_modifyitems(items) -> None:
    """Tiers: a test that needs the session's Ray cluster (directly or through a fixture built on it:
    a trained checkpoint, the Serve app) is marked `ray`; `make check` runs what is neither `ray` nor `slow`.

    Order: the tests of the Serve app (`server`, started once per session) run together near the end, so
    the app's replicas hold no CPU while the other tests train and generate on the session's cluster;
    the tests of `raygen demo` run last, so the demo (started in the background when the session starts,
    see `start_demo`) has the whole run to finish in.
    """
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
    items.sort(key=lambda item: ("demo" in getattr(item, "fixturenames", ()),
                                 "server" in getattr(item, "fixturenames", ())))  # (stable: file order otherwise)


def pytest_collection_finish(session) -> None:
    """Start `raygen demo` now when a selected test needs it (after `-m`/`-k` selection: `make check` never does)."""
    if not session.config.option.collectonly and any("demo" in getattr(item, "fixturenames", ())
                                                     for item in session.items):
        # (a hook cannot request tmp_path_factory: a folder of its own, removed at the end if the session passed)
        temp = Path(tempfile.mkdtemp(prefix="raygen-demo-"))
        (temp / "new-user").mkdir()
        (temp / "demo-console").mkdir()
        DEMO.update(start_demo(temp / "new-user", temp / "demo-console"), folder=temp)


def pytest_sessionfinish(session) -> None:
    if "process" in DEMO and DEMO["process"].poll() is None:  # a run cut short: stop the demo and its Ray
        subprocess.run(["pkill", "-KILL", "-s", str(DEMO["process"].pid)])  # (Ray's workers have groups of their own)
        DEMO["process"].wait()
    if "folder" in DEMO and session.testsfailed == 0:
        shutil.rmtree(DEMO["folder"], ignore_errors=True)


DEMO: dict = {}  # the background `raygen demo`: its process, working directory and output files


def start_demo(cwd: Path, logs: Path) -> dict:
    """`raygen demo` as a new user runs it: in an empty working directory, default --out, no cluster to join
    (so it starts a Ray instance of its own, as `ray.init()` does on a laptop).

    It runs beside the rest of the suite (its 14 minutes of training would otherwise run alone) and takes
    the CPU the tests leave idle while they wait on servers, processes and Ray. It starts at nice 10, so
    its Ray workers run at nice 19 (Ray adds its worker niceness) against the session cluster's 15: when
    both want the CPU, the tests' jobs get about two thirds of it. Its processes live in a session of their
    own, so the fault tests that kill the session cluster's workers by name never touch its workers.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    stdout, stderr = open(logs / "stdout", "w"), open(logs / "stderr", "w")
    process = subprocess.Popen([str(BIN / "raygen"), "demo"], cwd=cwd, stdout=stdout, stderr=stderr, env=env,
                               start_new_session=True, preexec_fn=lambda: os.nice(10))
    return {"process": process, "cwd": cwd, "logs": logs, "stdout": stdout, "stderr": stderr,
            "started": time.monotonic()}


def wait_for_demo(timeout: float = 3600) -> tuple[int, Path, str, str]:
    """The background demo's (exit status, working directory, stdout, stderr), once it has finished."""
    process = DEMO["process"]
    process.wait(timeout=max(1.0, DEMO["started"] + timeout - time.monotonic()))
    DEMO["stdout"].close()
    DEMO["stderr"].close()
    return process.returncode, DEMO["cwd"], (DEMO["logs"] / "stdout").read_text(), (DEMO["logs"] / "stderr").read_text()


def free_port() -> int:
    """A free loopback TCP port outside Ray's worker-port range."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RAY_WORKER_PORTS:
            return port


S3_SECRET = "raygen-test-secret-" + secrets.token_hex(8)  # distinctive: tests check it never leaks
S3_SERVER: dict = {}  # the running moto server and its port, for tests that take it down


def restart_s3_server(down_for: float) -> None:
    """Stop the S3 server for `down_for` seconds, then start it again on the same port.

    moto keeps its buckets in this process, so they are all there again afterwards,
    as on a real store that was unreachable for a while.
    """
    from moto.server import ThreadedMotoServer

    S3_SERVER["server"].stop()
    time.sleep(down_for)
    S3_SERVER["server"] = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_SERVER["port"], verbose=False)
    S3_SERVER["server"].start()


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
    S3_SERVER["server"], S3_SERVER["port"] = server, port
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="raygen")
    yield endpoint
    S3_SERVER["server"].stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


CLUSTER: dict = {}  # the session cluster's process session id (for tests that find its workers by name)


@pytest.fixture(scope="session")
def ray_cluster(s3_server, tmp_path_factory):
    """One Ray head for the whole session, joined by this process: 2 CPUs, on loopback.

    Started with `ray start --head --block` (not `ray.init()`) so that it has a
    dashboard for `ray job submit`, and so that RAY_ADDRESS, set before it starts,
    is known to all its processes and to every driver the tests launch.
    Yields (ray module, dashboard URL).
    """
    import ray

    ports = {name: free_port() for name in (
        "port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
    )}
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{ports['port']}"
    os.environ["PATH"] = f"{BIN}:{os.environ['PATH']}"  # a submitted job's `python` is this environment's
    temp = tmp_path_factory.mktemp("ray")
    log = open(temp / "head.log", "w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
         "--num-cpus=2", f"--object-store-memory={150 * 1024 * 1024}", "--include-dashboard=true",
         "--disable-usage-stats", f"--temp-dir={temp}", *[f"--{k}={v}" for k, v in ports.items()]],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    dashboard = f"http://127.0.0.1:{ports['dashboard-port']}"
    CLUSTER["session_id"] = head.pid  # every process of this cluster, its workers too, is in the head's session
    CLUSTER["metrics"] = f"http://127.0.0.1:{ports['metrics-export-port']}/metrics"  # the node's Prometheus endpoint
    try:
        _wait_for_http(dashboard, head, temp / "head.log")
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level="WARNING")
        yield ray, dashboard
    finally:
        ray.shutdown()
        head.terminate()  # `ray start --block` stops the head's processes on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()


def _wait_for_http(url: str, process, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:  # answering (401 when token authentication is on): up
            return
        except OSError:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{url} did not answer in {timeout} s"
            time.sleep(0.5)


@pytest.fixture(scope="session")
def checkpoint(ray_cluster, tmp_path_factory) -> str:
    """A tiny digits DCGAN trained for one epoch on 2 Ray Train workers."""
    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.train import train

    recipe = load_recipe("dcgan_digits", TINY)
    storage = tmp_path_factory.mktemp("runs")
    return train(recipe, str(storage), "tiny", workers=2, gpu=False)


@pytest.fixture()
def random_checkpoint(tmp_path) -> str:
    """An untrained DCGAN checkpoint written without Ray: fast, for unit tests."""
    import torch

    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.families.dcgan.training import GAN

    torch.manual_seed(0)
    recipe = load_recipe("dcgan_digits", TINY)
    folder = tmp_path / "ckpt"
    GAN(recipe, torch.device("cpu")).save(folder, {"epoch": 0})
    return str(folder)


# ---------------------------------------------------------------- the Serve app (test_serve, test_openai_conformance)

SERVE_API_KEY = "test-key-" + secrets.token_hex(8)


@pytest.fixture(scope="session")
def gpt_checkpoint(tmp_path_factory) -> str:
    """An untrained tiny GPT with a tokenizer trained on the bundled text (no Ray)."""
    import torch

    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.families.gpt.data import load_documents, split_documents
    from gen_jobs.families.gpt.model import build_model, save, train_tokenizer
    from test_gpt import TINY_GPT_ONE_ROW_BATCHES

    recipe = load_recipe("gpt_pydoc", TINY_GPT_ONE_ROW_BATCHES)
    train, _ = split_documents(load_documents(recipe.data), recipe.data.held_out)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("serve") / "gpt"
    save(folder, recipe, build_model(recipe.model), train_tokenizer(train, 300), {"epoch": 0})
    return str(folder)


@pytest.fixture(scope="session")
def music_checkpoint(tmp_path_factory) -> str:
    from test_music import make_music_checkpoint

    return make_music_checkpoint(tmp_path_factory.mktemp("serve") / "music")


@pytest.fixture(scope="session")
def diffusion_checkpoint(tmp_path_factory) -> str:
    """A diffusion U-Net after 2 in-process training steps (4 sampling steps: rows, not digits)."""
    from test_diffusion import checkpoint_of

    return checkpoint_of(tmp_path_factory.mktemp("serve"), [])


@pytest.fixture(scope="session")
def style_checkpoint(tmp_path_factory) -> str:
    """A style model after 3 in-process training steps."""
    from gen_jobs.core.recipes import load_recipe
    from test_style import TINY_STYLE, train_in_process

    task, _ = train_in_process(load_recipe("style_sample", TINY_STYLE), 3)
    folder = tmp_path_factory.mktemp("serve") / "style"
    task.save(folder, {"epoch": 1})
    return str(folder)


@pytest.fixture(scope="session")
def server(ray_cluster, checkpoint, gpt_checkpoint, music_checkpoint, style_checkpoint, diffusion_checkpoint,
           tmp_path_factory):
    """The raygen app on a free loopback port; yields its base URL. Started once, by the first test that needs
    it (the tests that do run last: see pytest_collection_modifyitems), and shut down with the session."""
    from ray import serve

    from serving.app import build_app
    from serving.config import AppConfig
    from serving.run import shut_down_serve

    os.environ["RAYGEN_API_KEY"] = SERVE_API_KEY  # read (and hashed) by build_app
    # Six replicas, 1 CPU in all, leave one of the cluster's two CPUs for the batch jobs some tests run.
    config = AppConfig(models=[
        {"name": "digits", "checkpoint": checkpoint, "num_cpus": 0.2},
        {"name": "pydoc", "checkpoint": gpt_checkpoint, "num_cpus": 0.2},
        {"name": "chorales", "checkpoint": music_checkpoint, "num_cpus": 0.2},
        {"name": "styles", "checkpoint": style_checkpoint, "num_cpus": 0.2},
        {"name": "diffusion", "checkpoint": diffusion_checkpoint, "num_cpus": 0.1},
        {"name": "digits-small-queue", "checkpoint": checkpoint, "num_cpus": 0.1, "max_ongoing_requests": 1,
         "max_queued_requests": 1, "batching": {"max_batch_size": 1}},
    ], limits={"max_n": 8, "max_tokens": 32, "max_body_bytes": 20_000, "max_image_pixels": 512 * 512,
               "max_prompt_chars": 5_000, "max_input_pixels": 1_000_000, "max_input_bytes": 3_000_000,
               "max_file_lines": 100, "max_file_bytes": 1_000_000},
       batch_storage=str(tmp_path_factory.mktemp("batch-api")), batch_workers=1,
       batch_rows_per_shard=10)
    port = free_port()

    def start() -> None:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
        # Under a route prefix, as behind a shared ingress: every route and guard must still apply.
        serve.run(build_app(config), name="raygen", route_prefix="/raygen", blocking=False)

    def restart() -> None:
        """Serve stopped and started again, as after an upgrade or a lost head: same port, same app."""
        shut_down_serve(print)
        start()

    shut_down_serve(print)  # a Serve left by a failed test would keep its own port: serve.start would not move it
    SERVE_APP.update(batch_storage=str(config.batch_storage), restart=restart)
    try:
        start()
        yield f"http://127.0.0.1:{port}/raygen"
    finally:
        shut_down_serve(print)
        del os.environ["RAYGEN_API_KEY"]


SERVE_APP: dict = {}  # the session's Serve app (`server`): its batch_storage, and `restart`


@pytest.fixture()
def client(server):
    """The official OpenAI client, pointed at the app."""
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=SERVE_API_KEY, max_retries=0)


@pytest.fixture()
def http(server):
    """httpx against the app, with the API key."""
    import httpx

    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {SERVE_API_KEY}"}, timeout=60) as c:
        yield c


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | str = REPO):
    """Run the `raygen` console script in `cwd`; returns the CompletedProcess."""
    return subprocess.run(
        [str(BIN / "raygen"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def read_rows(folder, columns: list[str] | None = None):
    """A dataset folder's shards as one table, in id order (the folder also holds the manifest and the
    dataset card, which `pq.read_table(folder)` would try to read as Parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(p, columns=columns) for p in sorted(Path(folder).glob("part-*.parquet"))])
