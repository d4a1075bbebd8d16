"""cluster/: the cloud launcher config validates against Ray's own schema, and
cluster/local.sh runs a real multi-node Ray cluster that takes a `ray job submit`."""

from __future__ import annotations

import json
import os
import subprocess
from importlib.metadata import version
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
    assert "-e RAY_AUTH_MODE=token" in config["docker"]["run_options"]  # every command on a node, not only ray start


def test_aws_nodes_run_the_built_image_on_one_pinned_ami_with_least_privilege_profiles():
    config = aws_config()
    kustomization = yaml.safe_load((REPO / "k8s" / "kustomization.yaml").read_text())
    image_name, _, tag = config["docker"]["image"].rpartition(":")
    assert image_name == kustomization["images"][0]["newName"] and tag.startswith(version("raygen"))  # k8s/Dockerfile's
    assert not config["setup_commands"] and "/home/ray/raygen" not in config["file_mounts"]  # nothing installed on boot
    nodes = config["available_node_types"]
    assert len({node["node_config"]["ImageId"] for node in nodes.values()}) == 1  # one pinned AMI everywhere
    profiles = {name: node["node_config"]["IamInstanceProfile"]["Name"] for name, node in nodes.items()}
    assert profiles == {"head": "raygen-head", "gpu_worker": "raygen-worker", "cpu_worker": "raygen-worker"}

    def actions(policy: str) -> set[str]:
        document = json.loads((REPO / "cluster" / "iam" / policy).read_text())
        return {action for statement in document["Statement"] for action in
                ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])}

    assert {a.split(":")[0] for a in actions("worker-policy.json")} == {"s3", "ecr"}  # workers can't touch EC2 or IAM
    head = json.loads((REPO / "cluster" / "iam" / "head-policy.json").read_text())
    passes = [st for st in head["Statement"] if st["Action"] == "iam:PassRole"]
    assert [st["Resource"] for st in passes] == ["arn:aws:iam::*:role/raygen-worker"]  # only the workers' own role
    assert "ec2:RunInstances" in actions("head-policy.json")


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


def test_local_sh_never_takes_over_a_folder_it_did_not_make(tmp_path):
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    result = local_sh("up", "1", state=mine)
    assert result.returncode == 2
    assert f"RAYGEN_LOCAL_DIR {mine} already holds files this script did not make" in result.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and (mine / "notes.txt").read_text() == "a user's file"


@pytest.mark.slow  # starts Ray, a process or a training of its own: not in `make check`
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


def ray_record() -> str | None:
    """What Ray's record of this machine's current cluster says (a bare `ray.init()` joins it), or None."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    return path.read_text() if path.exists() else None


@pytest.mark.slow
def test_local_sh_up_two_workers_is_joined_then_down_leaves_no_trace(random_checkpoint, tmp_path):
    state = tmp_path / "state"
    record_before = ray_record()
    # The checkpoint inside a training-run folder: the job names the run, as RayJobs do.
    run = tmp_path / "run"
    run.mkdir()
    Path(random_checkpoint).rename(run / "checkpoint_000000")
    out = tmp_path / "digits"

    # docs/deployment.md's example on this 2-core machine, with its default CPUs per node (the machine's, shared out).
    up = local_sh("up", "2", state=state, RAYGEN_WORKER_CPUS="")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        # Nothing on stderr but the retries of a worker that missed Ray's 30 s to register on a loaded machine.
        assert all("starting it again" in line for line in up.stderr.splitlines()), up.stderr
        where = addresses(state)
        assert f"dashboard, jobs   {where['DASHBOARD']}" in up.stdout and where["DASHBOARD"].startswith("http://127.0.0.1:")
        cpus = max(1, (os.cpu_count() or 2) // 2)
        assert f"2 worker node(s) of {cpus} CPUs" in up.stdout
        assert ray_record() == where["GCS"], "ray start --head names itself the machine's current cluster"
        assert local_sh("up", "1", state=state).returncode == 2, "a second `up` refuses to start another cluster"

        env = {**os.environ, "RAY_AUTH_TOKEN": (state / "auth_token").read_text(), "RAY_AUTH_MODE": "token"}
        env.pop("RAY_ADDRESS", None)
        nodes = subprocess.run([str(BIN / "ray"), "list", "nodes", "--address", where["DASHBOARD"], "--format", "json"],
                               capture_output=True, text=True, env=env, timeout=120)
        listed = json.loads(nodes.stdout)
        assert sorted(n["is_head_node"] for n in listed if n["state"] == "ALIVE") == [False, False, True]
        assert {n["node_ip"] for n in listed} == {"127.0.0.1"}, "every node on loopback"

        # docs/deployment.md's steps after `up` (source the env file, a `ray job submit` per family) run as written in
        # tests/docs/test_readme.py; here, raygen's own commands join through RAY_ADDRESS from the env file.
        readme_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_A")}
        joined = subprocess.run(["bash", "-c", f"source {state}/env && raygen generate --checkpoint {run} "
                                 f"--out {out} --num-samples 40 --workers 2"], cwd=REPO, capture_output=True, text=True,
                                env={**readme_env, "PATH": f"{BIN}:{os.environ['PATH']}"}, timeout=400)
        assert joined.returncode == 0, joined.stdout[-3000:] + joined.stderr[-3000:]
        assert f"checkpoint: {run}/checkpoint_000000 (the newest in {run})" in joined.stdout
        assert problems(str(out))[0] == []
    finally:
        pids = [int(p.read_text()) for p in state.glob("*.pid")]
        down = local_sh("down", state=state)
    assert down.returncode == 0, down.stderr
    assert "local cluster stopped" in down.stdout
    assert pids and not any(alive(pid) for pid in pids), "every process of every node is gone"
    assert local_sh("status", state=state).returncode == 1
    assert ray_record() == record_before, "down puts Ray's record of the current cluster back as up found it"
    assert (state / ".raygen-local-cluster").exists() and (state / "logs").is_dir()

    # Without RAY_ADDRESS, raygen starts a Ray of its own: it does not try to join the stopped cluster.
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    local = subprocess.run([str(BIN / "raygen"), "generate", "--checkpoint", str(run), "--out", str(tmp_path / "local"),
                            "--num-samples", "50", "--workers", "1"], cwd=REPO, capture_output=True, text=True,
                           env=env, timeout=180)
    assert local.returncode == 0, local.stderr[-3000:]
    assert problems(str(tmp_path / "local"))[0] == []


def test_a_dashboard_address_in_ray_address_is_one_line_saying_what_to_set(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "http://127.0.0.1:8265"}
    said = subprocess.run([str(BIN / "raygen"), "train", "dcgan_digits", "--storage", str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120)
    assert said.returncode != 0 and "Traceback" not in said.stderr
    assert said.stderr.strip().splitlines()[-1].startswith("error: RAY_ADDRESS is http://127.0.0.1:8265, a dashboard")
