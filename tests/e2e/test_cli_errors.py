"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing written."""

import json
import re
import shutil

import pytest

from conftest import run_cli
from gen_jobs.cli import main as raygen
from test_verify import make_dataset

RAY_FORWARDED = re.compile(r"^(\x1b\[\d+m)?\(pid=")


def error_of(capsys, argv: list[str]) -> str:
    code = raygen(argv)
    # (Lines Ray forwards from its own processes, "(pid=gcs_server) ...", reach this test process's
    # stderr because it joined the session's cluster itself; a raygen command's own driver drops them.)
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines() if not RAY_FORWARDED.match(line))
    assert code == 2, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_unknown_recipe_from_the_console_script_has_no_traceback():
    result = run_cli("train", "dcgan_digitz", timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    from gen_jobs.core.recipes import builtin_recipes

    assert lines[0].startswith(f"error: unknown recipe 'dcgan_digitz': use one of {', '.join(builtin_recipes())} ")


def test_unknown_command():
    assert raygen(["trian"]) == 2


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "dcgan_digits", "--set", "train.epochs=0"], "'train.epochs': Input should be greater than 0"),
        (["train", "dcgan_digits", "--set", "model.widht=3"], "unknown recipe key 'model.widht'"),
        (["train", "dcgan_digits", "--workers", "0"], "argument 'workers'"),
        (["train", "dcgan_digits", "--storage", "ftp://x/y"], "unsupported URI scheme 'ftp'"),
        (["train", "dcgan_digits", "--set", "data.source=/nonexistent/images"], "training data /nonexistent/images does not exist"),
        (["train", "dcgan_digits", "--name", ".."], "argument 'name'"),  # a run folder outside --storage
        (["train", "dcgan_digits", "--name", "a/b"], "argument 'name'"),
        (["train", "dcgan_digits", "--set", "name=../../elsewhere/run"], "'name': String should match pattern"),
    ],
)
def test_train_bad_input(capsys, argv, needle):
    assert needle in error_of(capsys, argv)


def test_generate_bad_numbers(capsys, random_checkpoint, tmp_path):
    base = ["generate", "--checkpoint", random_checkpoint, "--out", str(tmp_path / "o")]
    assert "'num_samples'" in error_of(capsys, [*base, "--num-samples", "0"])
    assert "'rows_per_shard'" in error_of(capsys, [*base, "--num-samples", "5", "--rows-per-shard", "0"])
    assert "'labels'" in error_of(capsys, [*base, "--num-samples", "5", "--labels", "three"])
    assert "out of range" in error_of(capsys, [*base, "--num-samples", "5", "--labels", "3,12"])
    assert not (tmp_path / "o").exists()


def test_generate_bad_checkpoints(capsys, tmp_path):
    out = ["--out", str(tmp_path / "o"), "--num-samples", "5"]
    assert "does not exist" in error_of(capsys, ["generate", "--checkpoint", str(tmp_path / "missing"), *out])
    (tmp_path / "not_a_ckpt").mkdir()
    assert "is not a raygen checkpoint" in error_of(capsys, ["generate", "--checkpoint", str(tmp_path / "not_a_ckpt"), *out])
    assert "unsupported URI scheme" in error_of(capsys, ["generate", "--checkpoint", "gs://b/c", *out])
    assert not (tmp_path / "o").exists()


def test_generate_refuses_to_resume_a_different_dataset(capsys, random_checkpoint, tmp_path):
    out = tmp_path / "data"
    make_dataset(random_checkpoint, str(out), seed=0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    base = ["generate", "--checkpoint", random_checkpoint, "--out", str(out), "--num-samples", "50", "--rows-per-shard", "20"]
    assert "different seed" in error_of(capsys, [*base, "--seed", "1", "--resume"])
    assert "different rows_per_shard" in error_of(capsys, [*base[:-1], "25", "--resume"])
    assert "already holds a complete dataset" in error_of(capsys, base)
    other = tmp_path / "other_ckpt"
    shutil.copytree(random_checkpoint, other)
    recipe = json.loads((other / "recipe.json").read_text())
    recipe["generate"]["batch_size"] = 7
    (other / "recipe.json").write_text(json.dumps(recipe))
    assert "different recipe" in error_of(capsys, ["generate", "--checkpoint", str(other), *base[3:], "--resume"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_generate_complete_dataset_resume_is_a_no_op(capsys, random_checkpoint, tmp_path):
    out = tmp_path / "data"
    make_dataset(random_checkpoint, str(out))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code = raygen(["generate", "--checkpoint", random_checkpoint, "--out", str(out), "--num-samples", "50",
                   "--rows-per-shard", "20", "--resume"])
    assert code == 0
    assert "nothing to do" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert {name: after[name] for name in before} == before  # shards and manifest untouched
    # a dataset finished without its card (--no-card, or a run stopped between manifest and card) gets it now
    assert sorted(set(after) - set(before)) == ["README.md", "_card.json", "card-samples.png", "quality.json"]
    assert raygen(["generate", "--checkpoint", random_checkpoint, "--out", str(out), "--num-samples", "50",
                   "--rows-per-shard", "20", "--resume", "--no-card"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == after


def test_malformed_recipe_file(capsys, tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("family: dcgan\n  name: [x\n")
    assert "malformed YAML" in error_of(capsys, ["train", str(bad)])


def test_verify_missing_path(capsys, tmp_path):
    assert "does not exist" in error_of(capsys, ["verify", str(tmp_path / "nope")])


def _write_checkpoint(folder, epoch: int) -> None:
    import torch

    from conftest import TINY
    from gen_jobs.core.recipes import load_recipe
    from gen_jobs.families.dcgan.training import GAN

    GAN(load_recipe("dcgan_digits", TINY), torch.device("cpu")).save(folder, {"epoch": epoch})


def test_a_job_started_before_its_model_finished_training_waits_for_it(tmp_path, capsys):
    """`--wait-for-training` (and the Serve config's wait_for_training_s): the order of k8s/ applies heals."""
    import threading

    from conftest import TINY
    from gen_jobs.core import checkpoint
    from gen_jobs.core.recipes import load_recipe

    epochs = load_recipe("dcgan_digits", TINY).train.epochs
    run = tmp_path / "runs" / "dcgan_digits"
    err = error_of(capsys, ["generate", "--checkpoint", str(run), "--out", str(tmp_path / "out"), "--num-samples", "4",
                            "--wait-for-training", "0.2"])
    assert f"{run} still holds no trained model after waiting 0 s (no checkpoint yet)" in err
    assert not (tmp_path / "out").exists()

    _write_checkpoint(run / "checkpoint_2026-01-01_00-00-00.000000", epoch=epochs - 1)  # training is under way
    with pytest.raises(checkpoint.UserError, match=f"at epoch {epochs - 1} of {epochs}"):
        checkpoint.wait_until_trained(str(run), 0.2, log=lambda _: None, poll_s=0.05)
    from serving.app import build_app
    from serving.config import AppConfig

    with pytest.raises(checkpoint.UserError, match="still holds no trained model after waiting 0 s \\(at epoch"):
        build_app(AppConfig(models=[{"name": "digits", "checkpoint": str(run)}], wait_for_training_s=0.2))

    final = run / "checkpoint_2026-01-01_00-00-09.000000"
    finishing = threading.Timer(0.5, _write_checkpoint, (final, epochs))
    finishing.start()
    said: list[str] = []
    checkpoint.wait_until_trained(str(run), 60, log=said.append, poll_s=0.05)
    finishing.join()
    assert said and all(f"at epoch {epochs - 1} of {epochs}" in line for line in said)
    assert checkpoint.latest(str(run)) == str(final)
