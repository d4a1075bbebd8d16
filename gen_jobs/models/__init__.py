"""The model families: family name -> module.

A family module holds its pydantic `Recipe`, its torch modules,
`prepare_config(recipe)` (driver-side checks and preparation before training),
its Ray Train loop (`train_loop_per_worker`), `describe_epoch` (the training
log line), its `Sampler` (used by Ray Data and Serve alike), `to_table`
(sampler output -> Arrow table with the dataset's schema) and `score_dataset`
(the quality figures recorded in the manifest), and `TAKES_PROMPTS` (whether
`raygen generate --prompts` applies).
"""

from __future__ import annotations

import importlib
from types import ModuleType

FAMILIES: dict[str, str] = {
    "dcgan": "gen_jobs.models.dcgan",
    "gpt": "gen_jobs.models.gpt",
}


def family_module(name: str) -> ModuleType:
    return importlib.import_module(FAMILIES[name])
