"""The family contract (gen_jobs/core/family.py), checked over every family in the registry.

What the core, the faces and the Serve app ask of a family, so that a new family
(docs: adding a family) fails here, by name, before it fails in a job:
every `module:attribute` its descriptor names loads; its built-in recipes
validate with its recipe model; its `serve_api` module has what the Serve app
calls; its sampler maps a batch of 3 rows of the row source it declares, and
`to_table` makes them a 3-row Arrow table with the id and seed columns; every
figure it reports has a meaning for the dataset card; its own `raygen generate`
options set keys its recipe has (or name a shared option) and clash with no other flag.
"""

from __future__ import annotations

import importlib
import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from gen_jobs.core import registry
from gen_jobs.core.family import load_attribute
from gen_jobs.core.recipes import builtin_recipes, load_recipe
from gen_jobs.core.row_seed import row_seeds
from gen_jobs.generate import GenerateArgs, parser

FAMILIES = registry.names()
MODULE_PARTS = ("recipe", "training", "sampler", "to_table", "score_dataset", "describe_epoch", "figures", "preview",
                "foreign_checkpoint")
SERVE_API = ("KIND", "add_routes", "describe", "rows", "respond")  # what serving.app and serving.model_server call
# A small checkpoint of each family, built without Ray (tests/conftest.py); a new family adds its own.
CHECKPOINT_FIXTURE = {"dcgan": "random_checkpoint", "gpt": "gpt_checkpoint", "music": "music_checkpoint",
                      "style": "style_checkpoint", "diffusion": "diffusion_checkpoint"}


@pytest.mark.parametrize("name", FAMILIES)
def test_every_part_the_descriptor_names_loads(name):
    family = registry.get(name)
    assert family.name == name
    for part in MODULE_PARTS:
        if getattr(family, part) is not None:
            assert family.load(part) is not None, part
    if family.demo is not None:
        assert family.demo.recipe in builtin_recipes()
        for path in (family.demo.examples, family.demo.input):
            if path is not None:
                assert callable(load_attribute(path)), path


@pytest.mark.parametrize("name", FAMILIES)
def test_its_builtin_recipes_validate_with_its_recipe_model(name):
    model = registry.get(name).load("recipe")
    recipes = [load_recipe(r) for r in builtin_recipes()]
    own = [r for r in recipes if r.family == name]
    assert own, f"family {name} has no built-in recipe in gen_jobs/recipes/"
    assert all(isinstance(r, model) for r in own)


@pytest.mark.parametrize("name", FAMILIES)
def test_its_serve_api_has_what_the_app_calls(name):
    family = registry.get(name)
    if family.serve_api is None:
        pytest.skip(f"{name} has no HTTP API")
    api = importlib.import_module(family.serve_api)
    assert [part for part in SERVE_API if not hasattr(api, part)] == []


@pytest.mark.parametrize("name", FAMILIES)
def test_its_figures_have_meanings(name):
    family = registry.get(name)
    assert family.figures is not None, f"{name} declares no figure meanings (Family.figures)"
    meanings = family.load("figures")
    assert meanings and all(isinstance(text, str) and text.strip() for text in meanings.values()), meanings


@pytest.mark.parametrize("name", FAMILIES)
def test_its_generate_options_set_its_recipe_keys_or_name_a_shared_option(name):
    family = registry.get(name)
    recipe = load_recipe(family.demo.recipe if family.demo else next(
        r for r in builtin_recipes() if load_recipe(r).family == name)).model_dump()
    for option in family.generate_options:
        assert (option.recipe_key is None) != (option.same_as is None), f"{option.flag}: a recipe key or a shared option"
        for key in filter(None, (option.recipe_key, option.needs)):
            node = recipe
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{option.flag}: {name}'s recipe has no key {key}"
                node = node[part]
        if option.same_as:
            assert option.same_as in GenerateArgs.model_fields and option.same_as != "options", option.flag
    help_text = parser().format_help()
    if family.generate_options:
        section = help_text.split(f"\n{name} models:\n", 1)[1].split("\n\n", 1)[0]  # shown under its name
        assert all(option.flag in section for option in family.generate_options), section


def test_no_two_generate_options_share_a_flag():
    flags = [option.flag for name in FAMILIES for option in registry.get(name).generate_options]
    assert len(flags) == len(set(flags))
    parser()  # argparse itself refuses a family flag that is also a shared one


def png(size: int, shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (shade, 255 - shade, 128)).save(out, format="PNG")
    return out.getvalue()


def three_rows(rows_from: str) -> dict[str, np.ndarray]:
    """A batch of 3 rows as a shard writer hands it to a sampler, for each kind of row source."""
    ids = np.arange(3, dtype=np.int64)
    batch = {"id": ids, "seed": row_seeds(0, ids)}
    if rows_from == "prompts":
        batch["prompt"] = np.array([None, None, None], dtype=object)  # unconditional rows of a prompts dataset
    elif rows_from == "images":
        batch["input"] = np.array([png(40, 30), png(33, 200), png(48, 90)], dtype=object)
        batch["source"] = np.array(["a.png", "b.png", "c.png"], dtype=object)
    return batch


@pytest.mark.parametrize("name", FAMILIES)
def test_its_sampler_maps_three_rows_to_a_three_row_table(name, request):
    assert name in CHECKPOINT_FIXTURE, f"add a small {name} checkpoint fixture to CHECKPOINT_FIXTURE"
    family = registry.get(name)
    sampler = family.load("sampler")(request.getfixturevalue(CHECKPOINT_FIXTURE[name]))
    table = family.load("to_table")(sampler(three_rows(family.rows_from)), sampler.recipe)
    assert isinstance(table, pa.Table) and table.num_rows == 3
    assert table.column("id").to_pylist() == [0, 1, 2]
    assert table.column("seed").to_pylist() == row_seeds(0, np.arange(3)).tolist()
