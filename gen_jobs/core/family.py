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
    foreign_files   the files whose presence marks such a folder as this family's (text:
                    config.json and model.safetensors; diffusion: model_index.json)
    generate_options    its own `raygen generate` flags (GenerateOption), which --help shows
                    under the family's name: each sets a recipe key or is the family's name for
                    a shared option (style's --styles is --labels)

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
    in_default_run: bool = True  # run by a plain `raygen demo` (and trained by a plain `raygen serve`); else only
    # with --family, for a family whose training would take the default demo past its 15 minutes on 2 CPUs


@dataclass(frozen=True)
class Preview:
    """What a dataset card shows of the rows: a picture (PNG bytes), text excerpts, or both."""

    picture: bytes | None = None
    caption: str = ""
    excerpts: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerateOption:
    """A `raygen generate` flag of one family: `--sample-rate` for the name `sample_rate`.

    Given, its value either sets `recipe_key` in the run's recipe (a flag sets it true; text is
    set as typed, not parsed as YAML), so it is part of the dataset's identity like any recipe
    key, or is the value of the shared option `same_as` under the family's own name. `needs`
    is a recipe key that must be true for the value to matter (music's --sample-rate needs
    audio.enabled, which --audio sets).
    """

    name: str
    help: str
    kind: Literal["flag", "int", "text"] = "text"
    recipe_key: str | None = None
    same_as: str | None = None
    needs: str | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


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
    foreign_files: tuple[str, ...] = ()  # with foreign_checkpoint: the files that mark such a folder
    figures: str | None = None  # "module:DICT"
    preview: str | None = None  # "module:function"
    generate_options: tuple[GenerateOption, ...] = ()

    def load(self, part: str) -> Any:
        """The object a `module:attribute` field names, imported on first use."""
        return load_attribute(getattr(self, part))


def load_attribute(path: str) -> Any:
    """The object `module:attribute` names (imported now)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
