"""What a person sees: raygen's lines without Ray's internals (unless --verbose), progress that suits the
terminal or the log, and pictures made for looking."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TINY
from gen_jobs.core.console import MARK, PROGRESS, Progress, TrainingEta

RAY_INTERNALS = ("Reporting training result", "core_worker.cc", "TrainingReport(", "pid=")


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """A raygen command as a user runs it: its own process, joining the session's cluster (RAY_ADDRESS)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAYGEN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-m", "gen_jobs.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def train_args(storage, name: str) -> list[str]:
    return ["train", "dcgan_digits", "--storage", str(storage), "--name", name, "--workers", "2",
            *[a for item in TINY for a in ("--set", item)]]


@pytest.mark.slow
def test_train_and_generate_print_raygens_lines_and_none_of_rays_internals(ray_cluster, tmp_path):
    trained = run(*train_args(tmp_path, "quiet"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    output = trained.stdout + trained.stderr
    for internal in RAY_INTERNALS:
        assert internal not in output, (internal, output[-3000:])
    lines = trained.stdout.splitlines()
    assert any(line.startswith("epoch 1/1  loss_d") and line.endswith("checkpoint saved") for line in lines), lines
    assert lines[-1].startswith("checkpoint: ") and MARK not in output and PROGRESS not in output

    made = run("generate", "--checkpoint", lines[-1].split(": ", 1)[1], "--out", str(tmp_path / "data"),
               "--num-samples", "400", "--rows-per-shard", "100", "--workers", "1")
    assert made.returncode == 0, made.stderr[-3000:]
    output = made.stdout + made.stderr
    for internal in (*RAY_INTERNALS, "Progress bars disabled", "streaming_executor"):
        assert internal not in output, (internal, output[-3000:])
    assert "\r" not in made.stdout and "\x1b[" not in made.stdout  # not a terminal: plain lines only
    assert f"wrote 400 rows in 4 shards to {tmp_path / 'data'}" in made.stdout


@pytest.mark.slow
def test_verbose_shows_rays_own_lines(ray_cluster, tmp_path):
    trained = run(*train_args(tmp_path, "loud"), "--verbose")
    assert trained.returncode == 0, trained.stderr[-3000:]
    output = trained.stdout + trained.stderr
    assert "Reporting training result" in output and "pid=" in output
    made = run("generate", "--checkpoint", str(tmp_path / "loud"), "--out", str(tmp_path / "data"),
               "--num-samples", "100", "--rows-per-shard", "100", "--workers", "1", "--verbose")
    assert made.returncode == 0, made.stderr[-3000:]
    assert "core_worker.cc" in made.stdout + made.stderr  # the native notice, shown as Ray prints it


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_live_line_on_a_terminal_and_plain_lines_elsewhere():
    tty = Progress(Terminal())
    for k in range(3):
        tty.update(f"generating: {k}/3")
    tty.line("epoch 1/3 done")
    tty.done()
    shown = tty.stream.getvalue()
    assert shown.count("\r\x1b[2K") >= 4 and "generating: 2/3" in shown and "epoch 1/3 done\n" in shown

    log = Progress(io.StringIO(), plain_every=3600)
    for k in range(100):
        log.update(f"generating: {k}/100")  # nothing printed for an hour: no line yet
    log.line("wrote 100 rows")
    assert log.stream.getvalue() == "wrote 100 rows\n"
    log = Progress(io.StringIO(), plain_every=0)
    log.update("generating: 1/2")
    log.update("generating: 2/2")
    assert log.stream.getvalue() == "generating: 1/2\ngenerating: 2/2\n"  # whole lines, no escape codes


def test_training_progress_says_how_long_is_left(monkeypatch):
    import gen_jobs.core.console as console

    clock = iter([100.0, 110.0, 500.0, 520.0])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    eta = TrainingEta()
    assert eta.describe("epoch 1/4 step 10/100") == "training: epoch 1/4, step 10/100"
    # 10 s for 100 steps; 290 steps to go: 29 s
    assert eta.describe("epoch 2/4 step 10/100") == "training: epoch 2/4, step 10/100, about 29 s left"
    # the next run in the same process (the demo's next family) starts its own clock
    assert eta.describe("epoch 1/12 step 5/31") == "training: epoch 1/12, step 5/31"
    assert eta.describe("epoch 1/12 step 15/31") == "training: epoch 1/12, step 15/31, about 11 min 54 s left"  # 20 s for 10 steps, 357 to go


def test_the_digits_grid_is_readable_and_labelled():
    from PIL import Image

    from gen_jobs.data.digit_sets import bundled_digits
    from gen_jobs.data.images import labelled_grid, png_bytes, resize_uint8

    raw, labels = bundled_digits()
    grid = labelled_grid(resize_uint8(raw, 32), labels)
    assert grid.shape == (10 * (64 + 4) + 4, 48 + 10 * (64 + 4))  # 64-pixel tiles, 4 pixels apart, a label margin
    bands = [grid[4 + row * 68: 4 + row * 68 + 64, :48] for row in range(10)]
    for row, band in enumerate(bands):  # each row's label is written in the margin (light on dark), each its own
        assert band.max() > 200 and (band > 128).mean() > 0.01, row
    assert len({band.tobytes() for band in bands}) == 10
    assert labelled_grid(resize_uint8(raw, 32), np.where(labels == 3, 0, labels)) is None  # a label with no images
    Image.open(io.BytesIO(png_bytes(grid))).load()
