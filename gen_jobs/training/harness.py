"""The training harness: the Ray Train loop every family shares.

    gen_jobs.train runs `TorchTrainer(train_loop_per_worker, ...)`; nothing here runs at import.

What the harness does, so that no family writes it again:
  - worker context: rank, world size, device (Ray Train's: a GPU per worker with --gpu);
  - the same initial weights on every worker (torch seeded with train.seed before the task is built);
  - resume: the run's latest checkpoint (weights + `train_state.pt`, loaded with
    weights_only=True) gives the task its state and the epoch to continue from;
  - determinism across interruptions: every epoch reseeds torch from
    (train.seed, epoch, rank) and shuffles with a generator seeded from
    (train.seed, epoch), so a run resumed at epoch e draws exactly what an
    uninterrupted run draws from epoch e on, and ends with the same weights
    (tested). No RNG state needs saving, and a resumed run may change its
    worker count;
  - the epoch's shuffled example order, cut into global batches, each worker taking
    every world-th example of a batch (its slice);
  - step metrics averaged over steps and all-reduced over workers;
  - checkpoint cadence (train.checkpoint_every, and always the last epoch), written by
    rank 0 and reported with `ray.train.report`; other epochs report metrics only;
  - guards (gen_jobs.training.guard, `train.guard`): a diverged step or, by recipe, a collapsed
    epoch rolls back to the last good epoch with lower learning rates, or stops the run
    with the last good state as its final checkpoint. Events go into the epoch's metrics
    (`guard_events`, `rollbacks`) and the log.

A family supplies a TrainingTask (see the Protocol below): its models and
optimisers, one training step on a batch of example indices, end-of-epoch
figures, and how to save and load its state.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from gen_jobs.core import metrics as run_metrics, registry
from gen_jobs.core.checkpoint import INFO_FILE
from gen_jobs.core.console import report_progress
from gen_jobs.core.recipes import RecipeBase
from gen_jobs.training.guard import TRAIN_STATE, Guard


class Workers:
    """This worker's place in the group and the collectives a task may need."""

    def __init__(self, rank: int, world: int, device: torch.device):
        self.rank, self.world, self.device = rank, world, device

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over workers (a CPU float64 tensor in, the same shape out)."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        out = values.to(self.device)
        dist.all_reduce(out)
        return out.cpu()

    def average_gradients(self, module: torch.nn.Module) -> None:
        """Average `module`'s gradients over workers in one flat all-reduce (for models not wrapped in DDP)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()


class TrainingTask(Protocol):
    """What a family gives the harness. Built on every worker after torch is seeded."""

    num_examples: int  # examples shuffled each epoch

    def __init__(self, recipe: RecipeBase, prepared: dict, workers: Workers): ...

    @staticmethod
    def prepare(recipe: RecipeBase) -> dict:
        """Driver-side, before any worker starts: check the data, build what all workers share."""
        ...

    def train_step(self, indices: torch.Tensor) -> dict[str, float]:
        """One optimisation step on this worker's slice of a batch; returns its losses."""
        ...

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """Figures after an epoch (every worker calls it: it may use collectives)."""
        ...

    def modules(self) -> list[torch.nn.Module]:
        """The modules being trained: the divergence guard checks their weights stay finite."""
        ...

    # Optional, for families that can tell a collapse (image families):
    #   def collapse(self, figures: dict) -> list[str]
    # the collapse warnings an epoch's `end_epoch` figures show (rank 0's figures; [] elsewhere),
    # acted on by `train.guard.on_collapse` (gen_jobs.training.guard).

    def save(self, folder: Path, info: dict) -> None:
        """Write a checkpoint (weights, recipe, `info`) that gen_jobs.core.checkpoint can read."""
        ...

    def train_state(self) -> dict:
        """Optimiser and schedule state (tensors and plain values only: loaded with weights_only=True)."""
        ...

    def load(self, folder: Path, train_state: dict) -> None:
        """Take the state of a checkpoint written by `save` and `train_state`."""
        ...


PROGRESS_EVERY = 1.0  # seconds between rank 0's step updates (the driver's progress display)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Torch's seed for one worker's epoch: distinct per worker, the same on every rerun."""
    return (seed * 1_000_003 + epoch * 1009 + rank) % (2**63)


def batch_indices(order: torch.Tensor, step: int, batch_size: int, workers: Workers) -> torch.Tensor:
    """This worker's slice of global batch `step`: every world-th index of it."""
    return order[step * batch_size * workers.world:][workers.rank:: workers.world][:batch_size]


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's loop: config = {"family", "recipe" (JSON), "prepared" (the task's prepare())}."""
    import ray.train
    import ray.train.torch

    family = registry.get(config["family"])
    recipe = family.load("recipe").model_validate(config["recipe"])
    ctx = ray.train.get_context()
    workers = Workers(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())

    torch.manual_seed(recipe.train.seed)  # the same initial weights on every worker
    task = family.load("training")(recipe, config["prepared"], workers)
    start_epoch, rollbacks, history = 0, 0, []
    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as folder:
            state = torch.load(Path(folder) / TRAIN_STATE, map_location="cpu", weights_only=True)
            task.load(Path(folder), state)
            start_epoch, rollbacks = int(state["epoch"]), int(state.get("guard_rollbacks", 0))
            history = json.loads((Path(folder) / INFO_FILE).read_text()).get("history", [])

    def report(metrics: dict, folder: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
        ray.train.report(metrics, checkpoint=checkpoint)

    run_epochs(task, recipe, workers, start_epoch, report, rollbacks, history)


class TrainingExport:
    """What rank 0 adds to the run's training metrics (gen_jobs.core.metrics): steps, epochs, losses, guard events."""

    def __init__(self, recipe: str):
        self.metrics = run_metrics.training()
        self.tags = run_metrics.training_tags(recipe)

    def step(self, steps: int) -> None:
        self.metrics.step.set(steps, self.tags)

    def epoch(self, metrics: dict, losses: list[str], events: int) -> None:
        self.metrics.epoch.set(metrics["epoch"], self.tags)
        for name in losses:  # the per-epoch means of the step losses
            self.metrics.loss.set(metrics[name], {**self.tags, "name": name})
        self.guard_events(events)

    def guard_events(self, count: int) -> None:
        run_metrics.add(self.metrics.guard_events, count, self.tags)


def run_epochs(task: TrainingTask, recipe: RecipeBase, workers: Workers, start_epoch: int,
               report: Callable[[dict, Path | None], None], rollbacks: int = 0,
               history: list[dict] | None = None) -> None:
    """Epochs start_epoch.. of a task, guarded (gen_jobs.training.guard); `report(metrics, checkpoint folder or None)`.

    Every worker reports once per epoch (rank 0 with the checkpoint folder on
    checkpoint epochs). A run the guard stops reports {"stopped": why, ...} last,
    with the last good state as its checkpoint (epoch 0: the initial weights).
    Each checkpoint's raygen.json keeps `history`, every epoch's metrics up to it
    (those of a resumed run's earlier epochs included; epochs a rollback undid left out):
    the training curves of the dataset card.
    """
    history = list(history or [])
    t = recipe.train
    guard = Guard(task, workers, t.guard, rollbacks)
    exported = TrainingExport(recipe.name) if workers.rank == 0 and run_metrics.ray_running() else None
    try:
        guard.keep(start_epoch, {})
        steps_per_epoch = max(1, task.num_examples // (t.batch_size * workers.world))
        epoch = start_epoch
        while epoch < t.epochs:
            started = time.perf_counter()
            torch.manual_seed(epoch_seed(t.seed, epoch, workers.rank))
            order = torch.randperm(task.num_examples, generator=torch.Generator().manual_seed(t.seed + epoch))
            sums: dict[str, float] = {}
            problem, collapsed = None, False
            shown = time.monotonic()
            for step in range(steps_per_epoch):
                losses = task.train_step(batch_indices(order, step, t.batch_size, workers))
                if exported:
                    exported.step(epoch * steps_per_epoch + step + 1)
                if workers.rank == 0 and time.monotonic() - shown >= PROGRESS_EVERY:
                    report_progress(f"epoch {epoch + 1}/{t.epochs} step {step + 1}/{steps_per_epoch}")
                    shown = time.monotonic()
                problem = guard.check_step(losses)
                if problem:
                    problem = f"{problem} at step {step + 1} of epoch {epoch + 1}"
                    break
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + value
            if problem is None:
                means = workers.all_reduce_sum(torch.tensor(list(sums.values()), dtype=torch.float64))
                means /= steps_per_epoch * workers.world
                metrics = {"epoch": epoch + 1, **{k: round(v, 4) for k, v in zip(sums, means.tolist())}}
                metrics.update(task.end_epoch(epoch + 1))
                problem = guard.check_collapse(metrics, epoch + 1, t.epochs)
                collapsed = problem is not None
                if collapsed:
                    problem = f"{problem} at epoch {epoch + 1}"
            if problem is not None:
                if not (collapsed and t.guard.on_collapse == "stop") and guard.roll_back(problem):
                    epoch = guard.good_epoch
                    history = [m for m in history if m["epoch"] <= epoch]
                    continue
                stopped = {"epoch": guard.good_epoch, "stopped": guard.stop_message(problem, collapsed),
                           "rollbacks": guard.rollbacks, "guard_events": guard.take_events()}
                if exported:
                    exported.guard_events(len(stopped["guard_events"]))
                # Rank 0 reports the last good state as a checkpoint, so the driver's result holds this report
                # (Ray Train's result carries the latest checkpoint's metrics) and the state is kept.
                report(stopped, guard.good if workers.rank == 0 else None)
                return
            metrics["rollbacks"] = guard.rollbacks
            events = guard.take_events()
            if events:
                metrics["guard_events"] = events
            metrics["seconds"] = round(time.perf_counter() - started, 2)
            history.append(metrics)
            if exported:
                exported.epoch(metrics, list(sums), len(events))
            last = epoch + 1 == t.epochs
            if workers.rank == 0 and (last or (epoch + 1) % t.checkpoint_every == 0):
                with tempfile.TemporaryDirectory(prefix="raygen-ckpt-") as folder:
                    task.save(Path(folder), {"epoch": epoch + 1, "metrics": metrics, "history": history})
                    torch.save({"epoch": epoch + 1, "guard_rollbacks": guard.rollbacks, **task.train_state()},
                               Path(folder) / TRAIN_STATE)
                    report(metrics, Path(folder))
            else:
                report(metrics, None)
            epoch += 1
            if epoch < t.epochs:
                guard.keep(epoch, metrics)
    finally:
        guard.close()
