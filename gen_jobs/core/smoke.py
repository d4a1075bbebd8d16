"""RAYGEN_SMOKE_TEST=1: every job scaled down to seconds, to check that commands run, not to use what they make.

    RAYGEN_SMOKE_TEST=1 raygen train gpt_pydoc        # one epoch
    RAYGEN_SMOKE_TEST=1 raygen generate ... --num-samples 1000000    # 64 rows

The suite sets it when it runs the documented commands as written
(tests/docs/test_readme.py): the commands stay the ones a user types, their sizes
shrink. Training runs one epoch (train.epochs=1); `--num-samples` is capped at
MAX_ROWS. A scaled job says so in its first line.
"""

from __future__ import annotations

import os
from collections.abc import Callable

ENV = "RAYGEN_SMOKE_TEST"
MAX_ROWS = 64


def active() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def train_settings(settings: list[str], log: Callable[[str], None] = print) -> list[str]:
    """`--set` values for a training run: one epoch more, last (it wins), when the smoke test is on."""
    if not active():
        return settings
    log(f"{ENV} is set: training one epoch (train.epochs=1), to check the command, not to use the model")
    return [*settings, "train.epochs=1"]


def num_samples(requested: int | None, log: Callable[[str], None] = print) -> int | None:
    """--num-samples, capped at MAX_ROWS when the smoke test is on."""
    if not active() or requested is None or requested <= MAX_ROWS:
        return requested
    log(f"{ENV} is set: writing {MAX_ROWS} rows instead of {requested:,}, to check the command")
    return MAX_ROWS
