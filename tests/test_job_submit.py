"""End to end: `ray start --head` on loopback, `ray job submit` a generation job, verify."""

import os
import subprocess
import time
import urllib.request

import pytest

from conftest import BIN, REPO, free_port
from gen_jobs.verify import problems


@pytest.fixture()
def ray_head(tmp_path_factory):
    """A separate Ray head (its own temp dir and ports), stopped by ending `ray start --block`."""
    ports = {name: free_port() for name in (
        "port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
    )}
    temp = tmp_path_factory.mktemp("rayhead")
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           "--num-cpus=2", "--object-store-memory=150000000", "--include-dashboard=true", "--disable-usage-stats",
           f"--temp-dir={temp}", *[f"--{k}={v}" for k, v in ports.items()]]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}:{env['PATH']}"  # the job's `python` is this environment's
    log = open(temp / "head.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except OSError:
            assert head.poll() is None, (temp / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Ray head did not start in 120 s"
            time.sleep(0.5)
    yield address, env
    head.terminate()
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, 9)
        head.wait()
    log.close()


@pytest.mark.slow
def test_ray_job_submit_generation_succeeds(ray_head, checkpoint, tmp_path):
    address, env = ray_head
    out = tmp_path / "submitted"
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--",
         "python", "-m", "gen_jobs.generate", "--checkpoint", checkpoint, "--out", str(out),
         "--num-samples", "300", "--rows-per-shard", "100", "--workers", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    assert f"dataset: {out}" in result.stdout
    assert problems(str(out))[0] == []
