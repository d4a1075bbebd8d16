"""Recipes: one pydantic object, built from a YAML file plus `--set key=value` overrides.

A recipe names a model family and holds everything that family needs: model
size, training data source and hyper-parameters, generation defaults. The same
object flows unchanged from the CLI to the Ray Train loop, the Ray Data sampler
and the Serve app builder, and it is stored as JSON in every checkpoint.

Built-in recipes live in `gen_jobs/recipes/*.yaml` and are addressed by name
(`dcgan_digits`); any other recipe is addressed by its path.
"""

from __future__ import annotations

import importlib.resources
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gen_jobs.core import registry
from gen_jobs.core.errors import UserError


class StrictModel(BaseModel):
    """Base of every recipe section: an unknown key is an error, never ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GenerateDefaults(StrictModel):
    """How a dataset is cut into shards and micro-batches (same for every family)."""

    rows_per_shard: int = Field(1000, gt=0, description="rows in each part-NNNNN.parquet")
    batch_size: int = Field(
        250,
        gt=0,
        description="sampler micro-batch; fixed by the recipe so output never depends on worker count",
    )
    seed: int = Field(0, ge=0, description="base seed; row i's seed is derived from (seed, i)")


class GuardConfig(StrictModel):
    """Training guards (`train.guard`, every family): what counts as divergence or collapse, and what then."""

    max_loss: float | None = Field(None, gt=0, description="a step loss above this is divergence; "
                                                          "null: only non-finite losses or weights are")
    max_rollbacks: int = Field(3, ge=0, description="rollbacks to the last good epoch before training stops")
    lr_factor: float = Field(0.5, gt=0, lt=1, description="every learning rate is multiplied by this on a rollback")
    on_collapse: Literal["warn", "stop", "rollback"] = Field(
        "warn", description="a significant mode collapse after the first quarter of the epochs (image families): "
                            "log it, stop training, or roll back with lower learning rates")


# A run's or recipe's name becomes one folder name (OUT/runs/<name>): letters, digits, _ . -, not starting
# with a dot, so never "..", a hidden name or a path.
SAFE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$"


class RecipeBase(StrictModel):
    name: str = Field(pattern=SAFE_NAME, description="short name, used for run and output folder names: letters, "
                                                     "digits, _ . - (not starting with a dot)")
    family: str = Field(description="model family, a key of gen_jobs.families.REGISTRY")
    generate: GenerateDefaults = GenerateDefaults()

    def row_classes(self) -> int | None:
        """How many classes a row may ask for (`raygen generate --labels`, Serve's `label`); None: none."""
        return None

    def rows_from(self, family_rows_from: str) -> str:
        """What this model's rows are made from: its family's `rows_from` ("ids", "prompts", "images"), unless
        the recipe says otherwise (a diffusion pipeline made elsewhere that draws images from prompts)."""
        return family_rows_from

    def for_dataset(self) -> "RecipeBase":
        """This recipe with whatever the machine would choose fixed (checked), for a dataset's identity.

        `raygen generate` calls it once when it plans a job, so a resumed job
        makes the same bytes on another machine (music: the SoundFont found installed).
        """
        return self


def builtin_recipes() -> list[str]:
    folder = importlib.resources.files("gen_jobs") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        if name_or_path not in builtin_recipes():
            raise UserError(
                f"unknown recipe {name_or_path!r}: use one of {', '.join(builtin_recipes())} "
                "or the path of a .yaml recipe file"
            )
        text = (importlib.resources.files("gen_jobs") / "recipes" / f"{name_or_path}.yaml").read_text()
    else:
        if not path.is_file():
            raise UserError(f"recipe file {name_or_path} does not exist")
        text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"malformed YAML in recipe {name_or_path}: {str(e).splitlines()[0]} ({_yaml_where(e)})") from e
    if not isinstance(data, dict):
        raise UserError(f"recipe {name_or_path} must be a YAML mapping of keys to values")
    return data


def _yaml_where(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark else "position unknown"


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides; values are parsed as YAML scalars (`3`, `true`, `1e-4`)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            raise UserError(f"--set {item!r}: value is not valid YAML") from e
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def recipe_from_dict(data: dict[str, Any]) -> RecipeBase:
    """Validate a recipe mapping with its family's pydantic class."""
    family = data.get("family")
    if family not in registry.names():
        raise UserError(f"recipe key 'family' is {family!r}; valid families: {', '.join(registry.names())}")
    cls = registry.get(family).load("recipe")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise UserError(describe_validation_error(e, cls, "recipe key")) from e


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> RecipeBase:
    return recipe_from_dict(apply_overrides(_read_yaml(name_or_path), overrides or []))


def describe_validation_error(error: ValidationError, cls: type[BaseModel], what: str) -> str:
    """One line per problem, naming the dotted key; unknown keys list the valid ones."""
    lines = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            valid = _fields_at(cls, err["loc"][:-1])
            lines.append(f"unknown {what} {key!r}; valid keys here: {', '.join(valid)}")
        elif not key:  # a check across several keys
            lines.append(err["msg"].removeprefix("Value error, "))
        else:
            lines.append(f"{what} {key!r}: {err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r})")
    return "; ".join(lines)


def _fields_at(cls: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        if isinstance(part, int):  # an index into a list: the list's item type was taken at its field
            continue
        field = cls.model_fields.get(str(part))
        if field is None:
            return []
        inner = field.annotation
        candidates = [inner, *typing.get_args(inner)]
        models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not models:
            return []
        cls = models[0]
    return sorted(cls.model_fields)
