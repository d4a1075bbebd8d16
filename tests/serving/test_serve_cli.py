"""`raygen serve` as a user runs it: starts, answers, stops cleanly on SIGTERM; bad arguments fail fast.

Runs before the session's Serve app starts (conftest orders the tests that use it last): one Serve per cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import BIN, REPO, free_port, run_cli
from gen_jobs.core.checkpoint import latest, pin
from serving.config import read_config
from serving.run import serve_is_running, shut_down_serve


def test_the_shipped_serve_config_is_valid():
    document = yaml.safe_load((REPO / "serving" / "config.yaml").read_text())
    config = read_config(document, "serving/config.yaml")
    from gen_jobs.core import registry

    served = [registry.get(name).demo.recipe for name in registry.names() if registry.get(name).serve_api]
    assert [m.name for m in config.models] == served  # one model of every family with an HTTP API
    assert document["applications"][0]["import_path"] == "serving.app:build_app"


def test_a_model_may_have_a_whole_gpu_a_share_of_one_or_none():
    from gen_jobs.core.errors import UserError

    def gpu(value):
        return read_config({"models": [{"name": "m", "checkpoint": "c", "gpu": value}]}, "test").models[0].gpu

    assert (gpu(True), gpu(False), gpu(0.25), gpu(1)) == (1.0, 0.0, 0.25, 1.0)
    for wrong in (1.5, -0.25, "half"):
        with pytest.raises(UserError, match="gpu"):
            gpu(wrong)


@pytest.mark.parametrize("args, says", [
    (["--model", "digits"], "NAME=CHECKPOINT_URI"),
    (["--model", "digits=/nowhere/at/all"], "does not exist"),
    (["no-such-config.yaml"], "does not exist"),
    (["--port", "0", "--model", "a=b"], "port"),
])
def test_bad_arguments_fail_fast_with_a_clear_error(args, says):
    result = run_cli("serve", *args, timeout=120)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr


def test_a_bad_config_key_is_named(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text("models:\n  - name: digits\n    checkpoint: x\n    replicas: 3\n")
    result = run_cli("serve", str(config), timeout=120)
    assert result.returncode == 2 and "replicas" in result.stderr and "autoscaling" in result.stderr


class RaygenServe:
    """`raygen serve ARGS` in `cwd`, its console read by a thread: a wait keeps its deadline even while the
    command prints nothing, and a pipe nobody reads never blocks the command. On leaving the `with`, a
    command still running is killed and whatever Serve it left on the session's cluster is shut down, so one
    failed test cannot take the cluster's CPUs (and the port of the later tests' Serve app) with it."""

    def __init__(self, *args: str, cwd: Path | str):
        self.process = subprocess.Popen([str(BIN / "raygen"), "serve", *args], cwd=cwd, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env={**os.environ})
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    @property
    def said(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.said:
            assert self.process.poll() is None and time.monotonic() < deadline, self.said
            time.sleep(0.2)
        return self.said

    def stop(self, sig: int, timeout: float) -> int:
        """Send `sig`; the exit status, once the rest of what the command printed is read."""
        self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=30)
        return code

    def __enter__(self) -> RaygenServe:
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            shut_down_serve(print)


def test_raygen_serve_answers_then_stops_cleanly(ray_cluster, checkpoint):
    port = free_port()
    run_folder = str(Path(checkpoint).parent)  # a Ray Train run folder: its newest checkpoint is served
    with RaygenServe("--model", f"digits={run_folder}", "--port", str(port), cwd=REPO) as server:
        said = server.wait_for("playground: ", timeout=180)
        assert f"serving on http://127.0.0.1:{port}" in said
        assert f"playground: http://127.0.0.1:{port}/" in said
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)  # the address printed is the page
        assert page.status_code == 200 and "raygen playground" in page.text
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json()
        served = models["data"][0]["raygen"]["weights_sha256"]
        assert served == pin(latest(run_folder)).sha256  # its newest checkpoint (other tests may add to the run)
        image = httpx.post(f"http://127.0.0.1:{port}/v1/images/generations", json={"model": "digits", "seed": 1}, timeout=60)
        assert image.status_code == 200
        assert server.stop(signal.SIGTERM, timeout=200) == 0
        assert "stopping Serve" in server.said
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert not serve_is_running(), "Serve still runs on the cluster after `raygen serve` stopped"


def test_models_without_num_cpus_share_the_cluster_and_chosen_ones_keep_theirs():
    from serving.run import share_cpus

    config = read_config({"models": [{"name": n, "checkpoint": "x"} for n in "abcd"]}, "test")
    assert [m.num_cpus for m in share_cpus(config, 2.0).models] == [0.5] * 4  # the demo's four on 2 CPUs
    assert [m.num_cpus for m in share_cpus(config, 16.0).models] == [1.0] * 4  # at most 1 CPU a replica
    chosen = read_config({"models": [{"name": "a", "checkpoint": "x", "num_cpus": 1}, {"name": "b", "checkpoint": "x"},
                                      {"name": "c", "checkpoint": "x"}]}, "test")
    assert [m.num_cpus for m in share_cpus(chosen, 2.0).models] == [1.0, 0.5, 0.5]


def test_a_model_that_cannot_be_placed_is_said_in_words_and_ctrl_c_stops_the_wait(ray_cluster, checkpoint, tmp_path):
    # Three replicas of 1 CPU each on the session's 2-CPU cluster: one can never be placed.
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": n, "checkpoint": checkpoint, "num_cpus": 1} for n in "abc"]}))
    with RaygenServe("serve.yaml", "--port", str(free_port()), cwd=tmp_path) as server:
        said = server.wait_for("is not placed", timeout=180)
        assert "needs 1 CPU, the models need 3 CPUs in all and the cluster has 2" in said
        assert "lower num_cpus in a Serve config" in said and "serving on" not in said
        assert server.stop(signal.SIGINT, timeout=200) == 0  # Ctrl-C while Serve still waits for the replica
        rest = server.said[len(said):]
        assert "stopping Serve" in rest and "graceful_shutdown" not in rest and "Started Serve" not in server.said
        assert not serve_is_running(), "Serve still runs on the cluster after Ctrl-C"


def test_a_server_for_other_machines_needs_a_key_or_says_it_does_not(capsys, monkeypatch):
    from test_cli_errors import error_of

    monkeypatch.delenv("RAYGEN_API_KEY", raising=False)
    said = error_of(capsys, ["serve", "--host", "0.0.0.0", "--model", "digits=out/runs/dcgan_digits"])
    assert "--host 0.0.0.0 serves other machines, and no API key is set: export RAYGEN_API_KEY" in said
    assert "--allow-no-key" in said


def test_a_keyless_server_refuses_posts_from_pages_of_another_origin():
    from fastapi.testclient import TestClient

    from serving.config import Limits
    from serving.http import http_app

    class Keyless:  # the gateway's side the guard reads: no key, no models
        models, limits, created, api_key_sha256 = {}, Limits(), 0, None

        def authorized(self, header):
            return True

    client = TestClient(http_app(Keyless()), base_url="http://127.0.0.1:8000")
    form = {"model": (None, "styles"), "prompt": (None, "0")}
    foreign = client.post("/v1/images/edits", files=form, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "another origin" in foreign.json()["error"]["message"]
    own = client.post("/v1/images/edits", files=form, headers={"Origin": "http://127.0.0.1:8000"})
    program = client.post("/v1/images/edits", files=form)  # no Origin: a program, not a page
    assert own.status_code != 403 and program.status_code != 403
