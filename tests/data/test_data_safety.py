"""Nothing of the user's is lost: raygen writes and deletes only what it can prove is its own.

Each test sets up a folder as a user might have it, runs `raygen generate` on it and
checks that every file that is not raygen's is untouched, byte for byte.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO
from gen_jobs.core import storage
from gen_jobs.core.errors import UserError
from gen_jobs.core.lease import Lease, LeaseRecord, this_machine
from gen_jobs.verify import problems
from test_cli_errors import error_of
from test_verify import make_dataset


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: (os.readlink(p).encode() if p.is_symlink() else p.read_bytes()) for p in sorted(folder.iterdir())}


def dataset_snapshot(folder) -> dict[str, object]:
    """The shards' bytes and the manifest's content but for the command that made it (it names --out), and
    the dataset card's file names (the card names its folder too)."""
    files = snapshot(folder)
    manifest = json.loads(files.pop("_manifest.json"))
    manifest.pop("command", None)
    card = sorted(name for name in list(files) if not name.startswith("part-") and files.pop(name) is not None)
    return {**files, "_manifest.json": manifest, "card": card}


CARD = ["README.md", "_card.json", "card-samples.png", "quality.json"]  # what a finished CLI run adds (untrained: no curves)


def generate_args(checkpoint: str, out, *extra: str) -> list[str]:
    return ["generate", "--checkpoint", checkpoint, "--out", str(out), "--num-samples", "50", "--rows-per-shard", "20",
            *extra]


def test_overwrite_never_follows_a_symlink_into_the_users_file(capsys, random_checkpoint, tmp_path):
    precious = tmp_path / "thesis.txt"
    precious.write_text("four years of work")
    out = tmp_path / "data"
    out.mkdir()
    (out / "part-00000.parquet").symlink_to(precious)
    err = error_of(capsys, generate_args(random_checkpoint, out, "--overwrite"))
    assert "not raygen's (part-00000.parquet (a symbolic link))" in err
    assert precious.read_text() == "four years of work" and (out / "part-00000.parquet").is_symlink()


def test_overwrite_leaves_other_tools_files_alone(capsys, random_checkpoint, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "part-00000-x.snappy.parquet").write_bytes(b"spark's output")
    (out / "part-notes.txt").write_text("notes")
    pq.write_table(pa.table({"id": np.arange(20)}), out / "part-00000.parquet")  # shard-named, but not raygen's
    before = snapshot(out)
    err = error_of(capsys, generate_args(random_checkpoint, out, "--overwrite"))
    assert "not raygen's" in err and "part-00000-x.snappy.parquet" in err and "part-00000.parquet" in err
    assert "choose an empty --out" in err
    assert snapshot(out) == before


@pytest.mark.parametrize("name, content", [
    ("_manifest.json", json.dumps({"version": 3, "files": ["a.csv"]}).encode()),  # another tool's manifest
    ("_manifest.json", b"{not json"),
    ("_pending.json", b"[1, 2, 3]"),
    ("_card.json", json.dumps({"title": "my notes"}).encode()),
    ("_shards.parquet", b"PAR1 not raygen's PAR1"),
])
def test_overwrite_removes_no_state_file_that_raygen_did_not_write_and_never_suggests_itself(
        capsys, random_checkpoint, tmp_path, name, content):
    out = tmp_path / "data"
    out.mkdir()
    (out / name).write_bytes(content)
    for extra in ([], ["--overwrite"], ["--resume"]):
        err = error_of(capsys, generate_args(random_checkpoint, out, *extra))
        assert f"not raygen's ({name} (not written by raygen))" in err and "choose an empty --out" in err
        assert "pass --overwrite" not in err and "--overwrite to" not in err
    assert (out / name).read_bytes() == content


@pytest.mark.parametrize("content, says", [
    (b"{not json", "is not a valid raygen manifest: it is damaged"),
    (b"[1, 2, 3]", "is not a valid raygen manifest: it is damaged"),
    (json.dumps({"family": "dcgan", "seed": 0, "shards": []}).encode(), "made by an earlier raygen"),
])
def test_a_damaged_manifest_is_a_clear_error_that_overwrite_gets_past(capsys, ray_cluster, random_checkpoint, tmp_path,
                                                                      content, says):
    out = tmp_path / "data"
    make_dataset(random_checkpoint, str(out))
    (out / "_manifest.json").write_bytes(content)
    err = error_of(capsys, generate_args(random_checkpoint, out))
    assert says in err and "--resume" in err and "--overwrite" in err
    (out / "notes.txt").write_text("mine")  # a foreign file makes even --overwrite refuse...
    assert "not raygen's (notes.txt)" in error_of(capsys, generate_args(random_checkpoint, out, "--overwrite"))
    (out / "notes.txt").unlink()  # ...and without it, --overwrite deletes raygen's shards only and starts again
    from gen_jobs.cli import main as raygen

    assert raygen(generate_args(random_checkpoint, out, "--overwrite")) == 0
    assert problems(str(out))[0] == []


def test_resume_rebuilds_a_damaged_manifest_from_tagged_shards(capsys, ray_cluster, random_checkpoint, tmp_path):
    from gen_jobs.cli import main as raygen

    out, reference = tmp_path / "data", tmp_path / "reference"
    make_dataset(random_checkpoint, str(out))
    make_dataset(random_checkpoint, str(reference))
    (out / "_manifest.json").write_text("{oops")
    (out / "_pending.json").write_text("[]")
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert raygen(generate_args(random_checkpoint, out, "--resume")) == 0
    assert "rebuilding it from the shards" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == kept  # checked, kept, not rewritten
    assert problems(str(out))[0] == []
    assert dataset_snapshot(out) == {**dataset_snapshot(reference), "card": CARD}


def test_resume_without_a_manifest_keeps_only_shards_that_prove_they_belong(ray_cluster, random_checkpoint, tmp_path):
    from gen_jobs.cli import main as raygen

    out, other = tmp_path / "data", tmp_path / "other"
    make_dataset(random_checkpoint, str(out))
    make_dataset(random_checkpoint, str(other), seed=9)  # another dataset: same ids, other seeds and tag
    (out / "_manifest.json").unlink()
    (out / "part-00001.parquet").write_bytes((other / "part-00001.parquet").read_bytes())
    assert raygen(generate_args(random_checkpoint, out, "--resume")) == 0
    reference = tmp_path / "reference"
    make_dataset(random_checkpoint, str(reference))
    assert dataset_snapshot(out) == {**dataset_snapshot(reference), "card": CARD}


def test_verify_checks_seeds_and_tags_not_only_checksums(random_checkpoint, tmp_path):
    out, other = tmp_path / "data", tmp_path / "other"
    make_dataset(random_checkpoint, str(out))
    make_dataset(random_checkpoint, str(other), seed=9)
    manifest = json.loads((out / "_manifest.json").read_text())
    swapped = (other / "part-00001.parquet").read_bytes()
    (out / "part-00001.parquet").write_bytes(swapped)  # and make its checksum "match", as a careless copy would
    from gen_jobs.data.manifest import sha256

    manifest["shards"][1].update(sha256=sha256(swapped), bytes=len(swapped))
    (out / "_manifest.json").write_text(json.dumps(manifest))
    bad, _ = problems(str(out))
    assert len(bad) == 1 and bad[0].startswith("part-00001.parquet: its raygen tag says")


def test_a_second_run_is_refused_while_the_first_holds_the_folder(capsys, random_checkpoint, tmp_path):
    out = tmp_path / "data"
    with Lease(str(out)):
        err = error_of(capsys, generate_args(random_checkpoint, out))
        assert "is being written by another raygen run" in err and f"pid {os.getpid()}" in err
    assert not (out / "_lease.json").exists()  # released


def test_a_dead_runs_lease_is_taken_over_by_resume_only(capsys, random_checkpoint, tmp_path):
    out = tmp_path / "data"
    make_dataset(random_checkpoint, str(out))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"run_id": "ab" * 16, "host": os.uname().nodename, "pid": int(dead.stdout), "started": time.time(),
              "heartbeat": time.time(), "machine": this_machine()}
    (out / "_lease.json").write_text(json.dumps(record))
    err = error_of(capsys, generate_args(random_checkpoint, out))
    assert "holds the unfinished work of run abababab" in err and "pass --resume" in err
    from gen_jobs.cli import main as raygen

    assert raygen(generate_args(random_checkpoint, out, "--resume")) == 0  # all shards intact: nothing to write
    assert not (out / "_lease.json").exists()


def test_a_lease_of_another_container_with_the_same_hostname_waits_for_its_expiry(tmp_path):
    now = time.time()
    # pid 999999 is not running here, but the lease names another boot / PID namespace: that pid means nothing here
    other = LeaseRecord(run_id="cd" * 16, host=os.uname().nodename, pid=999_999, started=now, heartbeat=now,
                        machine=f"{os.uname().nodename}/another-boot/pid:[4026531836]")
    assert not other.stale(now) and other.stale(now + 61)
    assert other.model_copy(update={"machine": this_machine()}).stale(now)  # here: a dead pid is dead at once


def test_the_heartbeat_never_writes_through_a_planted_link_and_release_removes_only_its_own_lease(tmp_path):
    import gen_jobs.core.lease as lease_module

    out = tmp_path / "data"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    with Lease(str(out)) as lease:
        # the old heartbeat wrote to a name anyone could read from _lease.json: plant a link there
        (out / f"._lease.json.{lease.run_id}.tmp").symlink_to(victim)
        assert lease_module._LocalLease(str(out / "_lease.json")).renew(lease.run_id, lease._bytes())
        assert victim.read_text() == "precious"
        assert json.loads((out / "_lease.json").read_text())["run_id"] == lease.run_id
        # another run took the folder over meanwhile: this run's release leaves that lease alone
        theirs = json.loads((out / "_lease.json").read_text()) | {"run_id": "ef" * 16}
        (out / "_lease.json").write_text(json.dumps(theirs))
        lease.lost = None
    assert json.loads((out / "_lease.json").read_text())["run_id"] == "ef" * 16
    assert victim.read_text() == "precious"


def test_two_runs_started_together_get_the_lease_once(random_checkpoint, tmp_path):
    # Each run imports, says "ready" and waits for "go", so all four really ask at once (on a loaded
    # machine an import can outlast a holder that only sleeps, and a later run would then rightly get
    # a released lease); the holder keeps the lease until the test has heard every outcome.
    script = ("import sys\nfrom gen_jobs.core.lease import Lease\nfrom gen_jobs.core.errors import UserError\n"
              "print('ready', flush=True); sys.stdin.readline()\n"
              "try:\n    with Lease(sys.argv[1]):\n        print('got it', flush=True); sys.stdin.read()\n"
              "except UserError as e:\n    print('refused', flush=True)\n")
    runs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "data")], cwd=REPO, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        assert [run.stdout.readline().strip() for run in runs] == ["ready"] * 4
        for run in runs:
            run.stdin.write("go\n")
            run.stdin.flush()
        outcomes = sorted(run.stdout.readline().strip() for run in runs)
    finally:
        for run in runs:
            run.stdin.close()
            run.wait(timeout=60)
    assert outcomes == ["got it", "refused", "refused", "refused"]


def test_s3_lease_is_exclusive(s3_server):
    out = "s3://raygen/leases/data"
    with Lease(out) as first:
        with pytest.raises(UserError, match="is being written by another raygen run"):
            Lease(out).acquire()
        first.assert_held()
    assert not storage.exists(out + "/_lease.json")


def test_a_checkpoint_prefix_cannot_write_outside_its_download_folder(s3_server, tmp_path):
    storage.write_bytes_atomic("s3://raygen/evil/ckpt/model.safetensors", b"weights")
    storage.s3_client().put_object(Bucket="raygen", Key="evil/ckpt/../../escaped.txt", Body=b"gotcha")
    target = tmp_path / "a" / "b"
    try:
        storage.download_dir("s3://raygen/evil/ckpt", target)
    except UserError as e:
        assert "outside the download folder" in str(e)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_the_demo_deletes_nothing_it_did_not_create(tmp_path):
    from gen_jobs.demo import new_demo_folder

    (tmp_path / "runs" / "dcgan_digits").mkdir(parents=True)
    (tmp_path / "runs" / "dcgan_digits" / "mine.txt").write_text("my training run")
    first = new_demo_folder(str(tmp_path))
    os.makedirs(first)
    second = new_demo_folder(str(tmp_path))
    assert first != second and not os.path.exists(second)
    assert (tmp_path / "runs" / "dcgan_digits" / "mine.txt").read_text() == "my training run"


def test_a_job_keeps_its_pinned_checkpoint_when_the_folder_is_deleted(random_checkpoint, tmp_path):
    import shutil

    from gen_jobs.data.shard_writer import ShardWriter
    from gen_jobs.generate import GenerateArgs, plan

    reference = tmp_path / "reference"
    make_dataset(random_checkpoint, str(reference))
    identity, micro_batch, pinned = plan(GenerateArgs(checkpoint=random_checkpoint, out=str(tmp_path / "data"), num_samples=50,
                                              rows_per_shard=20))
    shutil.rmtree(random_checkpoint)  # as Ray Train's num_to_keep would, while the job runs
    ShardWriter(identity.model_dump(mode="json"), str(tmp_path / "data"), micro_batch, "cpu", pinned)(
        {"shard": np.arange(identity.num_shards)})
    for k in range(identity.num_shards):
        name = f"part-{k:05d}.parquet"
        assert (tmp_path / "data" / name).read_bytes() == (reference / name).read_bytes()


def test_a_worker_that_does_not_share_the_out_folder_refuses_to_write(random_checkpoint, tmp_path):
    from gen_jobs.data.shard_writer import ShardWriter
    from gen_jobs.generate import GenerateArgs, plan

    out = tmp_path / "data"
    identity, micro_batch, pinned = plan(GenerateArgs(checkpoint=random_checkpoint, out=str(out), num_samples=20))
    with Lease(str(out)) as lease:
        with pytest.raises(UserError, match="is not shared with node"):
            ShardWriter(identity.model_dump(mode="json"), str(out), micro_batch, "cpu", pinned, run_id="0" * 32)
        ShardWriter(identity.model_dump(mode="json"), str(out), micro_batch, "cpu", pinned, run_id=lease.run_id)


def test_the_newest_checkpoint_of_a_run_skips_one_still_uploading(random_checkpoint, tmp_path):
    import shutil

    from gen_jobs.core.checkpoint import latest

    run = tmp_path / "run"
    shutil.copytree(random_checkpoint, run / "checkpoint_2026-01-01_00-00-00.000000")
    (run / "checkpoint_2026-01-02_00-00-00.000000").mkdir()
    (run / "checkpoint_2026-01-02_00-00-00.000000" / "model.safetensors").write_bytes(b"half")  # the rest not there yet
    assert latest(str(run)).endswith("checkpoint_2026-01-01_00-00-00.000000")


# ---------------------------------------------------------------- names and state files read from a dataset folder


def test_shard_names_in_a_manifest_never_reach_outside_the_dataset(random_checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "data"
    make_dataset(random_checkpoint, str(out))
    private = tmp_path / "outside" / "private.parquet"
    private.parent.mkdir()
    pq.write_table(pa.table({"id": [0], "secret": ["do not copy me"]}), private)
    manifest = json.loads((out / "_manifest.json").read_text())
    for name in ("../outside/private.parquet", str(private)):
        manifest["shards"][0]["file"] = name
        (out / "_manifest.json").write_text(json.dumps(manifest))
        monkeypatch.chdir(tmp_path)
        for command in (["verify", "data"], ["quality", "data"]):
            assert "_manifest.json is not a valid raygen manifest" in error_of(capsys, command)
        assert not (out / "README.md").exists()
    with pytest.raises(UserError, match="not a name inside"):
        storage.join("s3://bucket/ds", "/etc/passwd")
    with pytest.raises(UserError, match="not a name inside"):
        storage.join(str(out), "../outside/private.parquet")


@pytest.mark.parametrize("plant", ["link to /dev/zero", "folder", "huge"])
def test_a_state_file_that_is_not_a_file_raygen_wrote_is_one_error_line(random_checkpoint, tmp_path, plant, capsys,
                                                                        monkeypatch):
    out = tmp_path / "data"
    make_dataset(random_checkpoint, str(out))
    state = out / "_manifest.json"
    state.unlink()
    if plant == "link to /dev/zero":
        state.symlink_to("/dev/zero")  # read whole, it never ends
    elif plant == "folder":
        state.mkdir()
    else:
        state.write_bytes(b" " * (17 * 2**20))
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    assert "_manifest.json is not a" in error_of(capsys, ["verify", "data"]) and time.monotonic() - started < 30


def test_a_shard_that_is_not_parquet_is_named_by_verify_deep(random_checkpoint, tmp_path):
    out = tmp_path / "data"
    make_dataset(random_checkpoint, str(out))
    size = (out / "part-00001.parquet").stat().st_size
    (out / "part-00001.parquet").write_bytes(b"x" * size)  # the recorded size, not Parquet
    bad, _ = problems(str(out), deep=True)
    assert bad == ["part-00001.parquet: sha256 mismatch (corrupt or modified)"]
