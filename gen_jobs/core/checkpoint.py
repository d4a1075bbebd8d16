"""Checkpoints: a folder (local path or s3:// URI) that rebuilds a model on its own.

    recipe.json          the resolved recipe (family, sizes, data, defaults)
    raygen.json          family, raygen version, epoch, training figures (the last epoch's, and
                         `history`: every epoch's up to this one)
    model.safetensors    the weights sampling uses (the EMA generator for GANs)
    *.safetensors        other weights training needs to resume
    train_state.pt       optimiser state; loaded with torch.load(weights_only=True)

Weights are safetensors, never an arbitrary pickle, so a checkpoint from
someone else cannot run code when loaded.

A folder made elsewhere (no recipe.json) is read by the family whose
`foreign_files` it holds: a HuggingFace causal-LM folder (text), a diffusers
pipeline folder (diffusion); that family describes it with a recipe.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gen_jobs import __version__
from gen_jobs.core import registry, storage
from gen_jobs.core.errors import UserError
from gen_jobs.core.recipes import RecipeBase, recipe_from_dict

RECIPE_FILE = "recipe.json"
INFO_FILE = "raygen.json"
SAMPLER_WEIGHTS = "model.safetensors"


def write(folder: Path, recipe: RecipeBase, weights: dict[str, dict], info: dict[str, Any]) -> None:
    """Write a checkpoint into a local folder. `weights` maps file stem -> state dict."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for stem, state in weights.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / f"{stem}.safetensors"))
    (folder / RECIPE_FILE).write_text(recipe.model_dump_json(indent=2))
    (folder / INFO_FILE).write_text(
        json.dumps({"family": recipe.family, "raygen_version": __version__, **info}, indent=2, sort_keys=True)
    )


def read_recipe(uri: str) -> RecipeBase:
    """The recipe stored in a checkpoint; a clear error if `uri` is not a raygen checkpoint."""
    names = _checkpoint_names(uri, [RECIPE_FILE, SAMPLER_WEIGHTS, *_foreign_files()])
    return _recipe(uri, names, lambda name: storage.read_bytes(storage.join(uri, name)))


def _foreign_families() -> list:
    """The families that read folders made elsewhere, each with the files that mark them."""
    families = (registry.get(name) for name in registry.names())
    return [family for family in families if family.foreign_checkpoint and family.foreign_files]


def _foreign_files() -> set[str]:
    return {name for family in _foreign_families() for name in family.foreign_files}


def _must_exist(uri: str) -> None:
    if not storage.exists(uri):
        raise UserError(f"checkpoint {uri} does not exist: pass the URI printed as 'checkpoint: ...' by raygen train")


def _checkpoint_names(uri: str, wanted: list[str]) -> set[str]:
    """Which of the file names `wanted` the checkpoint folder holds (an error if the folder does not exist)."""
    _must_exist(uri)
    return {name for name in wanted if storage.exists(storage.join(uri, name))}


def _recipe(uri: str, names: set[str], read) -> RecipeBase:
    """The checkpoint's recipe, from its file names and `read(name) -> bytes` (not called without a
    recipe.json); a clear error if the folder is no checkpoint."""
    if RECIPE_FILE not in names:
        # A checkpoint made elsewhere (a HuggingFace save_pretrained folder): the family whose files it holds reads it.
        for family in _foreign_families():
            if set(family.foreign_files) <= names:
                return family.load("foreign_checkpoint")(uri)
    if RECIPE_FILE not in names or SAMPLER_WEIGHTS not in names:
        made_elsewhere = "; ".join(f"{' and '.join(f.foreign_files)} ({f.name})" for f in _foreign_families())
        raise UserError(
            f"{uri} is not a raygen checkpoint (it needs {RECIPE_FILE} and {SAMPLER_WEIGHTS}) nor a folder made "
            f"elsewhere that raygen reads ({made_elsewhere}): pass the folder printed as 'checkpoint: ...' by "
            "raygen train"
        )
    recipe_uri = storage.join(uri, RECIPE_FILE)
    try:
        data = json.loads(read(RECIPE_FILE))
    except json.JSONDecodeError as e:
        raise UserError(f"{recipe_uri} is not valid JSON ({e}); the checkpoint is damaged") from e
    return recipe_from_dict(data)


def latest(uri: str) -> str:
    """`uri` itself if it is a checkpoint, else the newest checkpoint of the Ray Train run folder `uri`.

    Ray Train names checkpoints checkpoint_<timestamp>, so the last name in
    order is the newest. Lets a config name a run (out/runs/dcgan_digits) and
    always serve what it trained last. A checkpoint still being uploaded (one
    without all of its weights, recipe.json and raygen.json yet) is passed over.
    """
    uri = uri.rstrip("/")
    if storage.exists(storage.join(uri, SAMPLER_WEIGHTS)):
        return uri
    present: dict[str, set[str]] = {}
    for f in storage.list_files(uri, recursive=True):
        folder, _, name = f.rpartition("/")
        present.setdefault(folder.rsplit("/", 1)[-1], set()).add(name)
    complete = {SAMPLER_WEIGHTS, RECIPE_FILE, INFO_FILE}
    candidates = sorted(name for name, files in present.items() if name.startswith("checkpoint_") and complete <= files)
    if not candidates:
        read_recipe(uri)  # a folder made elsewhere (a pipeline) is its own checkpoint; else the usual error
        return uri
    return storage.join(uri, candidates[-1])


def training_state(uri: str) -> str | None:
    """None when `uri` (a checkpoint, or a run folder's newest) holds a finished training's model,
    else where training is, in words ("no checkpoint yet", "at epoch 3 of 10")."""
    try:
        found = latest(uri)
    except UserError:
        return "no checkpoint yet"
    epoch = _training_info(found).get("epoch")
    epochs = getattr(getattr(read_recipe(found), "train", None), "epochs", None)
    if epoch is None or epochs is None or epoch >= epochs:  # bring-your-own weights count as trained
        return None
    return f"at epoch {epoch} of {epochs}"


def wait_until_trained(uri: str, timeout_s: float, log=print, poll_s: float = 30.0) -> None:
    """Return once `uri` holds a finished training's model; UserError after `timeout_s` seconds.

    Lets a generation job or the Serve app be started before (or while) its model trains,
    as `kubectl apply -k k8s/` does, instead of failing for good or using a half-trained model.
    """
    import time

    deadline = time.monotonic() + timeout_s
    while (state := training_state(uri)) is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise UserError(f"{uri} still holds no trained model after waiting {timeout_s:.0f} s ({state}); "
                            "check its training job, or wait longer")
        log(f"waiting for {uri} to hold a trained model: {state} (up to {left / 60:.0f} min more)")
        time.sleep(min(poll_s, left))


def _training_info(uri: str) -> dict:
    """The checkpoint's raygen.json ({} for bring-your-own models, which have none)."""
    info_uri = storage.join(uri, INFO_FILE)
    return json.loads(storage.read_bytes(info_uri)) if storage.exists(info_uri) else {}


def training_metrics(uri: str) -> dict:
    """The last epoch's figures stored in raygen.json ({} for bring-your-own models)."""
    return _training_info(uri).get("metrics", {})


def training_history(uri: str) -> list[dict]:
    """Every epoch's figures up to this checkpoint, oldest first ([] for bring-your-own models and
    checkpoints written before raygen kept them)."""
    return _training_info(uri).get("history", [])


def load_state(folder: Path, stem: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / f"{stem}.safetensors"))


TRAINING_ONLY = ("train_state.pt",)  # what sampling never reads


@dataclass(frozen=True)
class Pinned:
    """A checkpoint read once, by `pin`: what sampling needs of it, as a copy that outlives its folder.

    Generation and Serve pin their checkpoint this way, so Ray Train's num_to_keep (or a user)
    deleting the folder while a job runs cannot change or break it, and the weights are read once.
    """

    uri: str
    files: dict[str, bytes]  # {relative path: bytes}, all but TRAINING_ONLY
    sha256: str  # the checkpoint's identity in a dataset's manifest: see files_sha256
    recipe: RecipeBase


def pin(uri: str) -> Pinned:
    """Read checkpoint `uri` once: its files, its weights' sha256 and its recipe (parsed from the bytes read)."""
    _must_exist(uri)
    listing = storage.list_relative(uri, recursive=True)
    foreign = None  # a folder made elsewhere, or no checkpoint: said before any file is read (it may be a dataset)
    if RECIPE_FILE not in listing or SAMPLER_WEIGHTS not in listing:
        foreign = _recipe(uri, set(listing), read=None)
    files = {}
    for relative, size in listing.items():
        if size is None:  # a symbolic link: never followed out of the checkpoint's folder
            raise UserError(f"{storage.join(uri, relative)} is a symbolic link; a checkpoint is read only from its "
                            "own files: copy the file into the checkpoint folder instead of linking it")
        if relative.split("/")[-1] not in TRAINING_ONLY:
            files[relative] = storage.read_bytes(storage.join(uri, relative))
    recipe = foreign or _recipe(uri, set(files), files.__getitem__)
    return Pinned(uri, files, files_sha256(files), recipe)


def files_sha256(files: dict[str, bytes]) -> str:
    """A checkpoint's identity: the sha256 of its SAMPLER_WEIGHTS where it has them (raygen's checkpoints, a
    HuggingFace LM folder); for a folder made elsewhere without (a diffusers pipeline: weights, configs and
    tokenizer in sub-folders), the sha256 of its `sha256sum`-style listing, one "<sha256>  <path>" line per
    file in path order, so any file's change changes it."""
    if SAMPLER_WEIGHTS in files:
        return hashlib.sha256(files[SAMPLER_WEIGHTS]).hexdigest()
    listing = "".join(f"{hashlib.sha256(files[path]).hexdigest()}  {path}\n" for path in sorted(files))
    return hashlib.sha256(listing.encode()).hexdigest()


def materialise(pinned: Pinned) -> tempfile.TemporaryDirectory:
    """A temporary local folder holding the pinned files, for a sampler to load from (`with materialise(p) as
    folder:`; removed on exit); file names that would leave it are refused."""
    folder = tempfile.TemporaryDirectory(prefix="raygen-ckpt-")
    for relative, data in pinned.files.items():
        parts = Path(relative).parts
        if Path(relative).is_absolute() or ".." in parts:
            raise UserError(f"a checkpoint file is named {relative!r}, which would land outside its folder")
        (Path(folder.name) / relative).parent.mkdir(parents=True, exist_ok=True)
        (Path(folder.name) / relative).write_bytes(data)
    return folder


class LocalCheckpoint:
    """A checkpoint's files on local disk (downloaded from S3 when needed).

    Use as a context manager: a temporary download is removed on exit.
    """

    def __init__(self, uri: str, recipe: RecipeBase | None = None):
        self.uri = uri
        self.recipe = recipe if recipe is not None else read_recipe(uri)  # given by a pinned checkpoint
        self._tmp = None
        if storage.is_s3(uri):
            self._tmp = tempfile.TemporaryDirectory(prefix="raygen-ckpt-")
            self.path = storage.download_dir(uri, self._tmp.name)
        else:
            self.path = Path(storage.resolve(uri)[1])

    def __enter__(self) -> "LocalCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
