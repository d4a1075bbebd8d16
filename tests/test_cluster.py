"""cluster/: the cloud launcher config validates against Ray's own schema, and
cluster/local.sh runs a real multi-node Ray cluster that takes a `ray job submit`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import BIN, REPO
from gen_jobs.verify import problems

LOCAL_SH = REPO / "cluster" / "local.sh"


def launcher_schema() -> jsonschema.Validator:
    import ray.autoscaler

    return jsonschema.Draft7Validator(json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text()))


def aws_config() -> dict:
    return yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())


def test_aws_config_validates_against_the_cluster_launcher_schema_ray_ships():
    config = aws_config()
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in launcher_schema().iter_errors(config)]
    assert errors == []
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head runs no work"
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 < gpu["max_workers"] <= config["max_workers"]
    assert any("RAY_AUTH_MODE=token" in command for command in config["head_start_ray_commands"])
    assert any("RAY_AUTH_MODE=token" in command for command in config["worker_start_ray_commands"])


def test_the_schema_check_rejects_a_misspelt_key():
    config = aws_config()
    config["idle_timeout_minute"] = config.pop("idle_timeout_minutes")
    assert not launcher_schema().is_valid(config)


def local_sh(*args: str, state: Path, timeout: float = 240, **settings: str) -> subprocess.CompletedProcess:
    """Run cluster/local.sh with its state in `state`; `settings` override its environment variables."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAYGEN_LOCAL_DIR": str(state),
           "RAYGEN_WORKER_CPUS": "2", "RAYGEN_OBJECT_STORE_MB": "150", **settings}
    return subprocess.run(["bash", str(LOCAL_SH), *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


@pytest.mark.parametrize("args, says", [(["up", "two"], "number of worker nodes"), (["sideways"], "usage")])
def test_local_sh_rejects_bad_arguments(args, says, tmp_path):
    result = local_sh(*args, state=tmp_path / "state")
    assert result.returncode == 2
    assert says in result.stderr
    assert not (tmp_path / "state").exists(), "nothing started"


def test_local_sh_up_that_fails_leaves_nothing_running(tmp_path):
    state = tmp_path / "state"
    result = local_sh("up", "1", state=state, RAYGEN_OBJECT_STORE_MB="1")  # below Ray's minimum: the head refuses to start
    assert result.returncode == 2
    assert "head exited while starting" in result.stderr and "object store" in result.stderr.lower()
    assert not list(state.glob("*.pid")), "whatever started was stopped"


def addresses(state: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (state / "addresses").read_text().split())


def alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)  # any process left in the node's process group
        return True
    except ProcessLookupError:
        return False


@pytest.mark.slow
def test_local_sh_up_one_worker_takes_a_ray_job_submit_then_down_stops_it(random_checkpoint, tmp_path):
    state = tmp_path / "state"
    # The checkpoint inside a training-run folder: the job names the run, as RayJobs do.
    run = tmp_path / "run"
    run.mkdir()
    Path(random_checkpoint).rename(run / "checkpoint_000000")
    out = tmp_path / "digits"

    up = local_sh("up", "1", state=state)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        where = addresses(state)
        assert f"dashboard, jobs   {where['DASHBOARD']}" in up.stdout and where["DASHBOARD"].startswith("http://127.0.0.1:")
        assert "1 worker node(s)" in up.stdout
        assert local_sh("up", "1", state=state).returncode == 2, "a second `up` refuses to start another cluster"

        env = {**os.environ, "RAY_AUTH_TOKEN": (state / "auth_token").read_text(), "RAY_AUTH_MODE": "token"}
        env.pop("RAY_ADDRESS", None)
        nodes = subprocess.run([str(BIN / "ray"), "list", "nodes", "--address", where["DASHBOARD"], "--format", "json"],
                               capture_output=True, text=True, env=env, timeout=120)
        listed = json.loads(nodes.stdout)
        assert sorted(n["is_head_node"] for n in listed if n["state"] == "ALIVE") == [False, True]
        assert {n["node_ip"] for n in listed} == {"127.0.0.1"}, "every node on loopback"

        job = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", where["DASHBOARD"], "--working-dir", ".", "--",
             "python", "-m", "gen_jobs.generate", "--checkpoint", str(run), "--out", str(out),
             "--num-samples", "200", "--rows-per-shard", "100", "--workers", "2"],
            cwd=REPO, capture_output=True, text=True, env=env, timeout=300,
        )
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout
        assert f"checkpoint: {run}/checkpoint_000000 (the newest in {run})" in job.stdout
        assert problems(str(out))[0] == []
    finally:
        pids = [int(p.read_text()) for p in state.glob("*.pid")]
        down = local_sh("down", state=state)
    assert down.returncode == 0, down.stderr
    assert "local cluster stopped" in down.stdout
    assert pids and not any(alive(pid) for pid in pids), "every process of every node is gone"
    assert local_sh("status", state=state).returncode == 1
