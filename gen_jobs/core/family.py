"""The family contract: what a model family declares once, and what the shared core asks of it.

A family is one package under `gen_jobs/families/<name>/` whose `__init__`
holds `FAMILY = Family(...)` and nothing heavy (no torch import), so listing
families costs nothing. The descriptor names, as `module:attribute` strings
loaded on first use, the family's parts:

    recipe          its pydantic Recipe (a RecipeBase)
    training        its TrainingTask class, which gen_jobs.training.harness drives on Ray Train
    sampler         its Sampler: `__init__(checkpoint_uri, device, recipe=None)` loads once;
                    `__call__(batch)` maps request columns (id, seed, and label / prompt / image
                    as `rows_from` says) to output columns. Ray Data and Ray Serve both use it.
    to_table        sampler output -> the dataset's Arrow table (schema + HuggingFace features)
    score_dataset   the quality figures recorded in the manifest (or None)
    figures         (optional) {figure name: what it means, in a sentence}: the dataset card's table
    preview         (optional) `preview(dataset URI, manifest) -> Preview`: the dataset card's samples
    describe_epoch  `describe_epoch(metrics, epochs) -> (line, warnings)`: the training log for one epoch

and, as plain values:

    rows_from       what its rows are made from besides id and seed: "ids" (nothing more),
                    "prompts" (a text column), "images" (an input image dataset)
    prompt_files    suffixes of files a prompt may name instead of being text (music's primers):
                    the row gets the file's bytes, and the files are digested into the identity
    serve_api       the serving.apis module of its HTTP API, or None
    demo            its demo defaults (recipe name, rows, what to show, example files, input), or None
    foreign_checkpoint  a `module:function` that describes a checkpoint folder made
                    elsewhere (no raygen recipe.json) with a recipe, or None

The shared core (generate, demo, checkpoint, manifest, serving) reaches a
family only through this descriptor: it never tests a family's name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

RowsFrom = Literal["ids", "prompts", "images"]


@dataclass(frozen=True)
class DemoDefaults:
    recipe: str  # a built-in recipe name
    num_samples: int  # rows the demo generates
    show: Literal["grid", "text", "files"]  # what the demo's report shows: a label grid, texts, or `examples`' files
    examples: str | None = None  # "module:function(dataset, out, name) -> [written URIs]": files beside the dataset
    input: str | None = None  # "module:function(out) -> URI": writes the images an "images" family's demo transforms


@dataclass(frozen=True)
class Preview:
    """What a dataset card shows of the rows: a picture (PNG bytes), text excerpts, or both."""

    picture: bytes | None = None
    caption: str = ""
    excerpts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    name: str
    recipe: str
    training: str
    sampler: str
    to_table: str
    score_dataset: str
    describe_epoch: str
    rows_from: RowsFrom = "ids"
    prompt_files: tuple[str, ...] = ()  # suffixes of files a prompt may name (music: MIDI, MusicXML primers)
    serve_api: str | None = None
    demo: DemoDefaults | None = None
    foreign_checkpoint: str | None = None
    figures: str | None = None  # "module:DICT"
    preview: str | None = None  # "module:function"

    def load(self, part: str) -> Any:
        """The object a `module:attribute` field names, imported on first use."""
        return load_attribute(getattr(self, part))


def load_attribute(path: str) -> Any:
    """The object `module:attribute` names (imported now)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
