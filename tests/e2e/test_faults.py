"""Faults injected for real: killed processes and an unreachable S3 server, on the session's cluster.

The promise under test: whatever fails, no row is lost or duplicated, and the
dataset ends byte-identical to an undisturbed run (or the run fails with a clear
message and `--resume` completes it to those bytes).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import test_metrics
from conftest import CLUSTER, REPO, TINY, restart_s3_server
from gen_jobs.core import storage
from gen_jobs.generate import GenerateArgs, generate
from gen_jobs.verify import problems
from test_ray_pipeline import shard_bytes

pytestmark = pytest.mark.slow


def pids_of(pattern: str) -> list[int]:
    """The session cluster's processes whose command line matches the regular expression `pattern` (Ray names
    workers after their actor); another Ray's on this machine (the background demo's) are not among them."""
    found = subprocess.run(["pgrep", "-s", str(CLUSTER["session_id"]), "-f", pattern], capture_output=True,
                           text=True).stdout.split()
    return [int(p) for p in found if int(p) != os.getpid()]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start_generate(checkpoint: str, out: str, *extra: str, num_samples: int = 3000,
                   rows_per_shard: int = 100) -> subprocess.Popen:
    """`python -m gen_jobs.generate` as a driver on the session's cluster (RAY_ADDRESS), as `ray job submit` runs it."""
    cmd = [sys.executable, "-m", "gen_jobs.generate", "--checkpoint", checkpoint, "--out", out,
           "--num-samples", str(num_samples), "--rows-per-shard", str(rows_per_shard), "--workers", "1", *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_sampler_actor_is_replaced_and_no_byte_changes(ray_cluster, checkpoint, tmp_path):
    """SIGKILL the ShardWriter while it writes shard 1 (its temporary file exists): Ray restarts the actor and
    sends it the shard again, the run says so and counts a shard retry, and no byte differs."""
    out, undisturbed = tmp_path / "data", tmp_path / "undisturbed"
    sizes = dict(num_samples=3000, rows_per_shard=1000)  # shards long enough to be killed in the middle of one
    proc = start_generate(checkpoint, str(out), **sizes)
    wait_for(lambda: list(out.glob(".part-00001.parquet.*")) or proc.poll() is not None, 120, "shard 1 to start")
    actors = pids_of("ShardWriter")
    assert actors, "no ShardWriter actor process found"
    for pid in actors:
        os.kill(pid, signal.SIGKILL)
    log = proc.communicate(timeout=300)[0]
    print(f"outcome: the driver exited {proc.returncode} after its sampler actor was killed")
    if proc.returncode != 0:  # Ray gave up on the task: the run must say so, and --resume must finish it
        assert "error" in log.lower(), log[-2000:]
        generate(GenerateArgs(checkpoint=checkpoint, out=str(out), resume=True, workers=1, **sizes), log=lambda *_: None)
    else:  # the shard ran again on the restarted actor: a shard retry, in the log and the run's metrics
        assert "(1 shard started again after its worker died)" in log, log[-2000:]
        expected = {("ray_raygen_generate_shard_retries", "counter"): 1}
        assert test_metrics.wait_for(expected, str(out)) == expected
    generate(GenerateArgs(checkpoint=checkpoint, out=str(undisturbed), workers=1, **sizes), log=lambda *_: None)
    assert problems(str(out))[0] == []
    assert shard_bytes(out) == shard_bytes(undisturbed)


def test_s3_down_for_20_seconds_mid_job(ray_cluster, checkpoint, s3_server, tmp_path):
    out = "s3://raygen/faults/outage"
    proc = start_generate(checkpoint, out)
    fs, path = storage.resolve(out)
    wait_for(lambda: storage.exists(out + "/part-00000.parquet") or proc.poll() is not None, 120, "the first shard")
    restart_s3_server(down_for=20)
    log = proc.communicate(timeout=400)[0]
    print(f"outcome: the driver exited {proc.returncode} after 20 s without S3")
    manifest_there = storage.exists(out + "/_manifest.json")
    if proc.returncode != 0:  # retries did not carry it through: one clear line, then --resume finishes it
        assert not manifest_there, "a failed run wrote a manifest"
        assert "error: S3 failed after" in log and "--resume" in log, log[-2000:]
        generate(GenerateArgs(checkpoint=checkpoint, out=out, num_samples=3000, rows_per_shard=100, workers=1,
                              resume=True), log=lambda *_: None)
    assert problems(out)[0] == []  # every listed shard present and whole: no partial object, none missing
    undisturbed = tmp_path / "undisturbed"
    generate(GenerateArgs(checkpoint=checkpoint, out=str(undisturbed), num_samples=3000, rows_per_shard=100, workers=1),
             log=lambda *_: None)
    for name, data in shard_bytes(undisturbed).items():
        assert storage.read_bytes(f"{out}/{name}") == data, name


def test_a_driver_killed_while_writing_the_manifest_is_repaired_by_resume(random_checkpoint, tmp_path, capsys):
    """The state such a kill leaves: shards done, the manifest's temporary half-written, no manifest."""
    from gen_jobs.cli import main as raygen
    from test_verify import make_dataset

    out = tmp_path / "data"
    make_dataset(random_checkpoint, str(out))
    manifest = (out / "_manifest.json").read_bytes()
    (out / "_manifest.json").unlink()
    (out / f"._manifest.json.{'c' * 32}.tmp").write_bytes(manifest[: len(manifest) // 2])
    pending = json.loads(manifest)
    for key in ("shards", "schema", "quality", "raygen_version"):
        pending.pop(key)
    (out / "_pending.json").write_text(json.dumps(pending))
    assert raygen(["verify", str(out)]) == 2
    assert "not finished" in capsys.readouterr().err
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert raygen(["generate", "--checkpoint", random_checkpoint, "--out", str(out), "--num-samples", "50",
                   "--rows-per-shard", "20", "--resume"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == before  # no shard rewritten
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "_card.json", "_manifest.json", "card-samples.png",
                                                     "part-00000.parquet", "part-00001.parquet", "part-00002.parquet",
                                                     "quality.json"]  # the dataset and its card, nothing else
    assert raygen(["verify", str(out)]) == 0


def test_a_training_worker_killed_mid_run_restarts_from_its_checkpoint_to_the_same_weights(ray_cluster, tmp_path):
    from gen_jobs.core.checkpoint import load_state
    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.train import train

    overrides = [*TINY[:1], *TINY[2:], "train.epochs=3", "train.checkpoint_every=1"]
    cmd = [sys.executable, "-m", "gen_jobs.train", "dcgan_digits", "--storage", str(tmp_path), "--name", "killed",
           *[a for item in overrides for a in ("--set", item)]]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    while not any(line.startswith("epoch 1/3") for line in lines):  # (not "training: epoch 1/3, step ...")
        line = proc.stdout.readline()
        assert line or proc.poll() is None, "".join(lines)
        lines.append(line)
    workers = pids_of("RayTrainWorker")
    assert workers
    os.kill(workers[-1], signal.SIGKILL)
    rest = proc.communicate(timeout=300)[0]
    log = "".join(lines) + rest
    assert proc.returncode == 0, log[-3000:]
    resumed = Path(log.strip().splitlines()[-1].split("checkpoint: ", 1)[1])
    assert json.loads((resumed / "raygen.json").read_text())["epoch"] == 3
    epochs = [int(line.split("epoch ", 1)[1].split("/")[0]) for line in log.splitlines() if line.startswith("epoch ")]
    assert set(epochs) == {1, 2, 3} and epochs[-1] == 3
    straight = Path(train(load_recipe("dcgan_digits", overrides), str(tmp_path), "straight", workers=2, gpu=False))
    for stem in ("model", "generator", "discriminator"):
        a, b = load_state(resumed, stem), load_state(straight, stem)
        assert all((a[k] == b[k]).all() for k in a), stem


def test_a_worker_node_removed_mid_job(checkpoint, tmp_path):
    """Two nodes, one ShardWriter each; the worker node goes away (no drain) after the first shard."""
    out, undisturbed = tmp_path / "data", tmp_path / "undisturbed"
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / "node_loss_generate.py"), checkpoint, str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    outcome = [line for line in result.stdout.splitlines() if line.startswith("outcome:")]
    print(outcome, "node removed" in result.stdout)
    assert "node removed" in result.stdout and outcome
    if outcome[0].startswith("outcome: failed"):
        assert "resumed" in result.stdout
    generate(GenerateArgs(checkpoint=checkpoint, out=str(undisturbed), num_samples=4000, rows_per_shard=100, workers=1),
             log=lambda *_: None)
    assert problems(str(out))[0] == []
    assert shard_bytes(out) == shard_bytes(undisturbed)
