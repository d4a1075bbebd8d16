"""Recipes: built-ins load, overrides apply, and every mistake names the key at fault."""

import pytest

from gen_jobs.core.errors import UserError
from gen_jobs.core.recipes import builtin_recipes, load_recipe


def test_builtin_recipe_loads_by_name_and_by_path():
    by_name = load_recipe("dcgan_digits")
    assert "dcgan_digits" in builtin_recipes()
    assert by_name.family == "dcgan"
    assert by_name.model.image_size == 32
    path = f"{__import__('gen_jobs').__path__[0]}/recipes/dcgan_digits.yaml"
    assert load_recipe(path) == by_name


def test_set_overrides_nested_keys_with_yaml_typed_values():
    recipe = load_recipe("dcgan_digits", ["train.epochs=3", "model.conditional=false", "train.lr_g=1e-3"])
    assert recipe.train.epochs == 3
    assert recipe.model.conditional is False
    assert recipe.train.lr_g == pytest.approx(1e-3)


def test_unknown_key_is_named_with_the_valid_ones():
    with pytest.raises(UserError) as e:
        load_recipe("dcgan_digits", ["model.widht=8"])
    msg = str(e.value)
    assert "'model.widht'" in msg
    assert "width" in msg and "latent_dim" in msg


def test_unknown_top_level_key():
    with pytest.raises(UserError, match="unknown recipe key 'trian'.*train"):
        load_recipe("dcgan_digits", ["trian.epochs=1"])


@pytest.mark.parametrize(
    "override, key",
    [("train.epochs=0", "train.epochs"), ("train.epochs=many", "train.epochs"),
     ("generate.rows_per_shard=-1", "generate.rows_per_shard"), ("model.image_size=30", "model.image_size")],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(UserError, match=f"'{key}'"):
        load_recipe("dcgan_digits", [override])


def test_unknown_recipe_lists_builtins():
    with pytest.raises(UserError, match="unknown recipe 'dcgan_digts'.*dcgan_digits"):
        load_recipe("dcgan_digts")


def test_malformed_yaml_says_where(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfamily: dcgan\ntrain: {epochs: 1\n")
    with pytest.raises(UserError, match="malformed YAML.*line"):
        load_recipe(str(bad))


def test_unknown_family(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("name: x\nfamily: vae\n")
    with pytest.raises(UserError, match="valid families: dcgan, gpt"):
        load_recipe(str(f))


def test_override_without_equals_sign():
    with pytest.raises(UserError, match="KEY=VALUE"):
        load_recipe("dcgan_digits", ["train.epochs"])
