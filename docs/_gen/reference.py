"""The site's reference pages, written from the code at every build (mkdocs-gen-files runs this), so
neither is written twice:

    reference/commands.md   each `raygen COMMAND --help`, from the command's own argument parser
    reference/recipes.md    each built-in recipe's keys, from its pydantic model: type, value, description
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
from typing import Any
from unittest import mock

import mkdocs_gen_files
from pydantic import BaseModel

from gen_jobs.cli import COMMANDS
from gen_jobs.core import registry
from gen_jobs.core.recipes import builtin_recipes, load_recipe


def command_help(module: str) -> str:
    """What `raygen COMMAND --help` prints, at a fixed width."""
    out = io.StringIO()
    with (mock.patch.dict(os.environ, {"COLUMNS": "100"}),  # argparse wraps to the terminal's width
          contextlib.redirect_stdout(out), contextlib.suppress(SystemExit)):
        importlib.import_module(module).main(["--help"])
    return out.getvalue().rstrip()


def commands_page() -> str:
    lines = ["# Commands", "", "Every command is `raygen COMMAND` and, for `ray job submit`, `python -m MODULE`.",
             "This page is `--help` of each, written from the argument parsers at every build.", ""]
    for name, (module, summary) in COMMANDS.items():
        lines += [f"## raygen {name}", "", f"{summary[0].upper()}{summary[1:]} (`python -m {module}`).", "",
                  "```text", command_help(module), "```", ""]
    return "\n".join(lines)


def type_name(annotation: Any) -> str:
    return str(getattr(annotation, "__name__", annotation)).replace("typing.", "").replace("NoneType", "None")


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def recipe_rows(model: BaseModel, prefix: str = "") -> list[str]:
    """One table row per leaf key (`train.epochs`); nested models are walked."""
    rows = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            rows += recipe_rows(value, f"{prefix}{name}.")
            continue
        shown = json.dumps(model.model_dump(mode="json", include={name})[name])
        rows.append(f"| `{prefix}{name}` | `{cell(type_name(field.annotation))}` | `{cell(shown)}` | "
                    f"{cell(field.description or '')} |")
    return rows


def recipes_page() -> str:
    lines = ["# Recipes", "",
             "A recipe is one pydantic object per family, read from a YAML file (a built-in one by name, or a path)",
             "and changed per run with `--set key=value` (e.g. `--set train.epochs=5`). Unknown keys are errors.",
             "This page lists every key of every built-in recipe with the value it has there, written from the",
             "recipe models at every build.", ""]
    for name in builtin_recipes():
        recipe = load_recipe(name)
        family = registry.get(recipe.family)
        lines += [f"## {name}", "", f"Family `{recipe.family}` ({family.load('recipe').__module__}).", "",
                  "| key | type | value | meaning |", "|---|---|---|---|", *recipe_rows(recipe), ""]
    return "\n".join(lines)


with mkdocs_gen_files.open("reference/commands.md", "w") as f:
    f.write(commands_page())
with mkdocs_gen_files.open("reference/recipes.md", "w") as f:
    f.write(recipes_page())
