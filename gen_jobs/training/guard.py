"""Training guards: a diverged step or a collapsed model rolls back to the last good epoch, or stops training.

Used by the harness's epoch loop (gen_jobs.training.harness.run_epochs); nothing here runs at import.

    divergence  a step whose losses are not finite, whose weights became non-finite
                (a non-finite gradient does that through the optimiser step), or
                whose loss (any step figure named *loss*) is above `train.guard.max_loss`
    collapse    the family's own verdict on an epoch's figures (TrainingTask.collapse,
                image families: a mode collapse significant for the samples scored),
                from the first quarter of the epochs on; acted on when
                `train.guard.on_collapse` is "stop" or "rollback" (default "warn": logged only)

A rollback restores the state of the last epoch that ended well (kept on each
worker's local disk after every such epoch, the same files a checkpoint holds),
multiplies every learning rate by `train.guard.lr_factor` and runs that epoch
again. After `train.guard.max_rollbacks` rollbacks in a run, training stops: the
last good state is reported as the run's final checkpoint and `raygen train`
fails with the reason. Workers decide together (one all-reduce of a flag per
step when there are several), so they always roll back or stop as one.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

TRAIN_STATE = "train_state.pt"


def scale_learning_rates(state: Any, factor: float) -> None:
    """Multiply every learning rate held in a task's `train_state()` by `factor`, in place.

    Optimiser states keep theirs in `param_groups[*].lr` (and `initial_lr` once a
    scheduler ran); schedulers in `base_lrs` and `_last_lr`. So a scheduled rate
    (warm-up, cosine) keeps its shape at the lower level.
    """
    if isinstance(state, dict):
        for group in state.get("param_groups", ()):
            for key in ("lr", "initial_lr"):
                if key in group:
                    group[key] *= factor
        for key in ("base_lrs", "_last_lr"):
            if isinstance(state.get(key), list):
                state[key] = [lr * factor for lr in state[key]]
        for key, value in state.items():
            if key != "param_groups" and isinstance(value, dict | list):
                scale_learning_rates(value, factor)
    elif isinstance(state, list):
        for value in state:
            scale_learning_rates(value, factor)


def step_problem(losses: dict[str, float], modules: list[torch.nn.Module], max_loss: float | None) -> str | None:
    """Why a step diverged, or None: a non-finite or too large loss, or non-finite weights."""
    for name, value in losses.items():
        if not math.isfinite(value):
            return f"{name} is {value}"
        if max_loss is not None and "loss" in name and value > max_loss:
            return f"{name} is {value:.4g}, above train.guard.max_loss {max_loss:g}"
    params = [p.detach() for m in modules for p in m.parameters()]
    if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        return "weights became non-finite (a non-finite gradient)"
    return None


class Guard:
    """One worker's guard over a run: the last good state, the rollbacks made, the events to log."""

    def __init__(self, task, workers, cfg, rollbacks: int = 0):
        self.task, self.workers, self.cfg = task, workers, cfg
        self.rollbacks = rollbacks  # in the whole run, resumes included (kept in checkpoints' train state)
        self.events: list[str] = []
        self._folder = tempfile.TemporaryDirectory(prefix="raygen-last-good-")
        self.good = Path(self._folder.name)
        self.good_epoch = 0
        self._scale = 1.0  # learning-rate factor applied since the last good state

    def keep(self, epoch: int, metrics: dict) -> None:
        """Remember the state after `epoch` (0: the initial one) as the last good one."""
        shutil.rmtree(self.good)
        self.good.mkdir()
        self.task.save(self.good, {"epoch": epoch, "metrics": metrics})
        torch.save({"epoch": epoch, "guard_rollbacks": self.rollbacks, **self.task.train_state()}, self.good / TRAIN_STATE)
        self.good_epoch, self._scale = epoch, 1.0

    def agreed(self, problem: str | None) -> str | None:
        """The problem as every worker sees it: if any worker has one, all do."""
        if self.workers.world == 1:
            return problem
        flags = self.workers.all_reduce_sum(torch.tensor([1.0 if problem else 0.0], dtype=torch.float64))
        if flags.item() == 0:
            return None
        return problem or "another worker's step diverged"

    def check_step(self, losses: dict[str, float]) -> str | None:
        return self.agreed(step_problem(losses, self.task.modules(), self.cfg.max_loss))

    def check_collapse(self, figures: dict, epoch: int, epochs: int) -> str | None:
        """A collapse the recipe acts on (on_collapse "stop" or "rollback"), as every worker sees it."""
        collapse = getattr(self.task, "collapse", None)
        if self.cfg.on_collapse == "warn" or collapse is None or epoch <= epochs // 4:
            return None  # the same on every worker: nothing to agree on
        warnings = collapse(figures)
        return self.agreed("; ".join(warnings) if warnings else None)

    def roll_back(self, problem: str) -> bool:
        """Restore the last good state with lower learning rates; False when the rollbacks are used up."""
        if self.rollbacks >= self.cfg.max_rollbacks:
            return False
        self.rollbacks += 1
        self._scale *= self.cfg.lr_factor
        state = torch.load(self.good / TRAIN_STATE, map_location="cpu", weights_only=True)
        scale_learning_rates(state, self._scale)
        self.task.load(self.good, state)
        self.events.append(f"{problem}: rolled back to epoch {self.good_epoch}, learning rates x{self._scale:g} of "
                           f"that epoch's (rollback {self.rollbacks} of {self.cfg.max_rollbacks})")
        return True

    def stop_message(self, problem: str, collapsed: bool) -> str:
        if collapsed and self.cfg.on_collapse == "stop":
            why = f"{problem} (train.guard.on_collapse is stop)"
        else:
            why = f"{problem}, after {self.rollbacks} rollbacks (train.guard.max_rollbacks)"
        fix = ("train longer with a lower learning rate, or set train.guard.on_collapse=warn" if collapsed else
               "lower the learning rates under train (lr, or lr_g and lr_d), raise train.guard.max_rollbacks, "
               "or loosen train.guard.max_loss")
        return f"{why}; {fix}"

    def take_events(self) -> list[str]:
        events, self.events = self.events, []
        return events

    def close(self) -> None:
        self._folder.cleanup()
