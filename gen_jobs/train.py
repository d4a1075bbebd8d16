"""Train a model family on Ray Train; print its checkpoint URI last.

    raygen train dcgan_digits [--storage URI] [--name RUN] [--workers N] [--gpu] [--set k=v ...]
    python -m gen_jobs.train dcgan_digits ...        # the same, for `ray job submit`

The loop is gen_jobs.training.harness, driving the family's TrainingTask on N workers
(gloo on CPU, NCCL with --gpu). Checkpoints go to
STORAGE/RUN/ (a local path or s3:// URI) through `ray.train.report`; running
again with the same --name resumes from the latest one. The last line printed
is exactly `checkpoint: <URI>`.
"""

from __future__ import annotations

import sys

from pydantic import Field
from ray.train import UserCallback

from gen_jobs.cli_args import ArgumentParser, run_main, validate_args
from gen_jobs.core import registry, smoke, storage
from gen_jobs.core.console import progress
from gen_jobs.core.errors import UserError, user_error_in
from gen_jobs.core.recipes import SAFE_NAME, RecipeBase, StrictModel, load_recipe
from gen_jobs.core.storage import Uri

DEFAULT_STORAGE = "./out/runs"


class TrainArgs(StrictModel):
    recipe: str
    storage: Uri = DEFAULT_STORAGE
    name: str | None = Field(None, pattern=SAFE_NAME)  # one folder under --storage, never a path out of it
    workers: int = Field(2, gt=0, le=1024)
    gpu: bool = False
    set: list[str] = []


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="raygen train", description="Train a model family on Ray Train.")
    p.add_argument("recipe", help="built-in recipe name (e.g. dcgan_digits) or path to a recipe .yaml")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="where runs and checkpoints go: path or s3:// URI")
    p.add_argument("--name", help="run name (default: the recipe's name); the same name resumes")
    p.add_argument("--workers", type=int, default=2, help="training workers (one process each)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    return p


class EpochLog(UserCallback):
    """Ray Train callback (runs in the train controller): one log line per epoch, for the user.

    Printed with console.say: the driver shows the line without Ray's `(TrainController pid=...)`
    prefix. (Printing from rank 0's worker instead would show each line twice, since Train V2
    both forwards worker stdout and copies print() to its own log.)
    """

    def __init__(self, family: str, epochs: int):
        self.family = family
        self.epochs = epochs
        self.reports = 0

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        from gen_jobs.core.console import say

        first = metrics[0]
        if self.reports == 0 and first.get("epoch", 1) > 1:
            say(f"resumed from the run's latest checkpoint at epoch {first['epoch'] - 1}")
        self.reports += 1
        for event in first.get("guard_events", ()):
            say(f"guard: {event}")
        if "stopped" in first:  # the driver raises with the reason; say where the last good state went
            return
        epoch_line, warnings = registry.get(self.family).load("describe_epoch")(first, self.epochs)
        say(epoch_line + ("  checkpoint saved" if checkpoint else ""))
        for warning in warnings:
            say(f"  {warning}")


def train(recipe: RecipeBase, storage_uri: str, name: str, workers: int, gpu: bool) -> str:
    """Run Ray Train for `recipe`; returns the final checkpoint's URI."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from gen_jobs.core.cluster import connect
    from gen_jobs.training.harness import train_loop_per_worker

    storage.check_lasting(storage_uri, "--storage")
    prepared = registry.get(recipe.family).load("training").prepare(recipe)
    fs, path = storage.resolve(storage_uri)
    if not storage.is_s3(storage_uri):
        fs.create_dir(path, recursive=True)
    connect()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"family": recipe.family, "recipe": recipe.model_dump(mode="json"), "prepared": prepared},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpu),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=recipe.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[EpochLog(recipe.family, recipe.train.epochs)],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # EpochLog says what matters
        ),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # Ray wraps the worker's exception; show its message, not Ray's stack
        raise UserError(f"training failed: {_root_cause(e)}") from e
    finally:
        progress().done()
    stopped = (result.metrics or {}).get("stopped")
    if stopped:
        uri = ("s3://" if storage.is_s3(storage_uri) else "") + result.checkpoint.path
        epoch = result.metrics.get("epoch", 0)
        kept = (f"the last good checkpoint (epoch {epoch}): {uri}" if epoch else
                f"no epoch ended well (the run's last checkpoint holds the initial weights: {uri})")
        raise UserError(f"training stopped: {stopped}; {kept}")
    if result.checkpoint is None:
        raise UserError("training ended without a checkpoint; check the log above")
    return ("s3://" if storage.is_s3(storage_uri) else "") + result.checkpoint.path


def _root_cause(error: BaseException) -> str:
    found = user_error_in(error)  # a worker's own message (bad data, a bad recipe value) says it best
    if found is not None:
        return str(found)
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def parse(argv: list[str] | None = None) -> TrainArgs:
    """The command line as validated arguments (argparse exits on an unknown flag; a bad value is a UserError)."""
    return validate_args(TrainArgs, vars(parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = parse(argv)
        recipe = load_recipe(args.recipe, smoke.train_settings(args.set))
        uri = train(recipe, args.storage, args.name or recipe.name, args.workers, args.gpu)
        print(f"checkpoint: {uri}", flush=True)
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
