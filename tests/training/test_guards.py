"""Training guards act on forced failures: a learning rate that blows up, NaN weights, a generator crippled to collapse."""

from __future__ import annotations

import math
import re

import pytest
import torch

from conftest import TINY, run_cli
from gen_jobs.core import registry
from gen_jobs.core.recipes import load_recipe
from gen_jobs.training.guard import scale_learning_rates, step_problem
from gen_jobs.training.harness import Workers, run_epochs

ONE_WORKER = Workers(0, 1, torch.device("cpu"))
BLOWS_UP = ["train.lr_g=1000", "train.lr_d=1000"]  # losses in the thousands after one step (healthy: single digits)


def dcgan_task(*overrides: str):
    recipe = load_recipe("dcgan_digits", [*TINY, "train.quality_samples=100", *overrides])
    torch.manual_seed(recipe.train.seed)
    Task = registry.get("dcgan").load("training")
    return recipe, Task(recipe, Task.prepare(recipe), ONE_WORKER)


def run(recipe, task) -> list[tuple[dict, bool]]:
    """(metrics, whether a checkpoint came with them) for every report of an in-process run."""
    reports = []
    run_epochs(task, recipe, ONE_WORKER, 0, lambda metrics, folder: reports.append((metrics, folder is not None)))
    return reports


def test_rollbacks_lower_every_learning_rate_and_keep_the_schedule():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + s))
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    scale_learning_rates(state, 0.5)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * 1e-2 / 4)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * 1e-2 / 5)  # the schedule goes on, at half height


def test_non_finite_losses_and_weights_are_divergence():
    model = torch.nn.Linear(3, 2)
    assert step_problem({"loss": 1.0, "lr": 3.0}, [model], max_loss=2.0) is None
    assert step_problem({"loss": math.nan}, [model], None) == "loss is nan"
    assert "above train.guard.max_loss 2" in step_problem({"loss": 5.0}, [model], max_loss=2.0)
    with torch.no_grad():
        model.weight[0, 0] = math.inf
    assert "weights became non-finite" in step_problem({"loss": 1.0}, [model], None)


def test_a_learning_rate_that_blows_up_rolls_back_and_training_recovers():
    recipe, task = dcgan_task(*BLOWS_UP, "train.guard.max_rollbacks=1", "train.guard.lr_factor=0.00001")
    reports = run(recipe, task)
    (metrics, saved), = reports
    assert saved and metrics["epoch"] == 1 and metrics["rollbacks"] == 1
    event, = metrics["guard_events"]
    assert "above train.guard.max_loss 100 at step 1 of epoch 1: rolled back to epoch 0, learning rates x1e-05" in event
    assert metrics["loss_d"] < 100 and metrics["loss_g"] < 100  # the rerun epoch trained at 1000 x 1e-5
    assert task.model.opt_g.param_groups[0]["lr"] == pytest.approx(1000 * 1e-5)
    assert all(torch.isfinite(p).all() for p in task.model.G.parameters())


def test_divergence_that_persists_stops_training_with_the_reason():
    recipe, task = dcgan_task(*BLOWS_UP, "train.guard.max_rollbacks=2", "train.guard.lr_factor=0.5")
    (metrics, saved), = run(recipe, task)
    assert saved and metrics["epoch"] == 0 and metrics["rollbacks"] == 2  # no epoch ended well: the initial state kept
    assert len(metrics["guard_events"]) == 2 and "learning rates x0.25" in metrics["guard_events"][1]
    assert "after 2 rollbacks (train.guard.max_rollbacks); lower the learning rates under train" in metrics["stopped"]


def crippled(recipe, task):
    """A generator that ignores its noise: every weight zero and frozen, so every sample is the same image."""
    with torch.no_grad():
        for G in (task.model.G, task.model.G_ema):
            for p in G.parameters():
                p.zero_()
                p.requires_grad_(False)
    return recipe, task


@pytest.mark.parametrize("on_collapse", ["warn", "stop", "rollback"])
def test_a_generator_crippled_to_collapse_trips_the_alarm(on_collapse):
    # (D wins against a frozen G, so losses soar: the loss guard is off to see the collapse alarm alone.)
    recipe, task = crippled(*dcgan_task(f"train.guard.on_collapse={on_collapse}", "train.guard.max_rollbacks=1",
                                        "train.guard.max_loss=null"))
    reports = run(recipe, task)
    metrics, saved = reports[-1]
    if on_collapse == "warn":  # logged by the epoch line, training goes on
        assert saved and metrics["classes_covered"] == 1 and "stopped" not in metrics
        return
    assert metrics["stopped"].startswith("mode collapse: only 1 of 10 classes appear in 100 rows; mode collapse within "
                                         "classes: diversity 0.000 of real (< 0.35) in 100 rows at epoch 1")
    if on_collapse == "stop":
        assert "(train.guard.on_collapse is stop)" in metrics["stopped"] and metrics["rollbacks"] == 0
    else:  # rolled back once with lower learning rates, collapsed again, then stopped
        assert metrics["rollbacks"] == 1 and "rolled back to epoch 0" in metrics["guard_events"][0]
        assert "after 1 rollbacks" in metrics["stopped"]


def test_raygen_train_stops_a_diverging_run_and_says_why(ray_cluster, tmp_path):
    result = run_cli("train", "dcgan_digits", "--storage", str(tmp_path), "--name", "diverges",
                     *[arg for setting in [*TINY, *BLOWS_UP, "train.guard.max_rollbacks=0"] for arg in ("--set", setting)])
    assert result.returncode != 0
    # (two workers: which loss and step trip first depends on the global batch)
    assert re.search(r"error: training stopped: loss_[dg] is \d+, above train.guard.max_loss 100 at step \d+ of epoch 1, "
                     r"after 0 rollbacks", result.stderr), result.stderr[-2000:]
    assert "no epoch ended well (the run's last checkpoint holds the initial weights: " in result.stderr
