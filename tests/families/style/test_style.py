"""The style family: the network, image decoding, losses, batch stylising on Ray, bad input."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import read_rows, run_cli
from gen_jobs.core.errors import UserError
from gen_jobs.core.recipes import load_recipe
from gen_jobs.data.images import BadImage, decode_rgb
from gen_jobs.families.style.data import held_out_crops
from gen_jobs.families.style.model import TransformerNet, VGG19Features, load_loss_network
from gen_jobs.families.style.quality import image_figures
from gen_jobs.families.style.training import TrainingTask
from gen_jobs.training.harness import Workers

# Small enough to train in-process in seconds: crops of 64 pixels, one residual block.
TINY_STYLE = ["data.crops=64", "data.crop_size=64", "data.style_size=96", "model.residual_blocks=1", "train.lr=0.003",
              "loss.content_weight=3", "train.epochs=1", "train.held_out=4", "generate.rows_per_shard=3",
              "generate.batch_size=2"]


def train_in_process(recipe, steps: int) -> tuple[TrainingTask, list[dict]]:
    """A TrainingTask on one worker outside Ray Train, `steps` steps of the recipe's batch size."""
    torch.manual_seed(recipe.train.seed)
    task = TrainingTask(recipe, TrainingTask.prepare(recipe), Workers(0, 1, torch.device("cpu")))
    history = [task.train_step(torch.randint(task.num_examples, (recipe.train.batch_size,))) for _ in range(steps)]
    return task, history


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(a briefly trained style checkpoint, the held-out figures before and after its training)."""
    recipe = load_recipe("style_sample", TINY_STYLE)
    task, _ = train_in_process(recipe, 0)
    before = task.end_epoch(0)
    for _ in range(100):
        task.train_step(torch.randint(task.num_examples, (recipe.train.batch_size,)))
    after = task.end_epoch(1)
    folder = tmp_path_factory.mktemp("style") / "ckpt"
    task.save(folder, {"epoch": 1, "metrics": after})
    return str(folder), before, after


@pytest.fixture(scope="module")
def style_checkpoint(trained) -> str:
    return trained[0]


def png_bytes(image: Image.Image, format: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=format)
    return buf.getvalue()


def photo_folder(folder, count: int = 4, size: int = 40):
    """`count` crops of held-out photos as PNG files (odd sizes: size x size+3)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, crop in enumerate(held_out_crops(count, size + 3, seed=5)):
        (folder / f"photo-{n}.png").write_bytes(png_bytes(Image.fromarray(crop.transpose(1, 2, 0)[:size])))
    return folder


# ---------------------------------------------------------------- the network and the images


@pytest.mark.parametrize("height,width", [(1, 1), (5, 7), (37, 53), (64, 48), (130, 17)])
def test_the_network_keeps_any_image_shape_and_each_row_its_own_style(height, width):
    torch.manual_seed(0)
    recipe = load_recipe("style_sample", TINY_STYLE)
    net = TransformerNet(recipe.model, 2)
    for p in net.parameters():  # away from the identity it starts as
        torch.nn.init.normal_(p, std=0.3)
    net.requires_grad_(False)
    x = torch.rand(2, 3, height, width)
    y = net(x, torch.tensor([0, 1]))
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    alone = net(x[1:], torch.tensor([1]))
    assert torch.allclose(alone, y[1:], atol=1e-5)  # a row does not depend on the rows beside it
    if height * width > 1:
        assert not torch.allclose(net(x[:1], torch.tensor([1])), y[:1], atol=1e-3)  # the style changes the picture


def test_an_untrained_network_is_its_colour_matching_so_training_starts_from_the_content():
    recipe = load_recipe("style_sample", TINY_STYLE)
    x = torch.rand(1, 3, 21, 30) * torch.tensor([0.9, 0.4, 0.2]).view(1, 3, 1, 1)  # a strong orange cast
    net = TransformerNet(recipe.model, 2)
    net.style_colour.copy_(torch.tensor([[0.3, 0.5, 0.6, 0.2, 0.2, 0.2], [0.6, 0.2, 0.1, 0.15, 0.1, 0.05]]))
    y = net(x, torch.tensor([0]))
    assert torch.allclose(y, net.match_colours(x, torch.tensor([0])), atol=2e-3)
    # The style's colour mean and spread per channel (clamping to [0, 1] moves them a little) ...
    assert torch.allclose(y.mean(dim=(2, 3))[0], torch.tensor([0.3, 0.5, 0.6]), atol=0.02)
    assert torch.allclose(y.std(dim=(2, 3))[0], torch.tensor([0.2, 0.2, 0.2]), atol=0.02)
    # ... with the input's structure: an affine map of each channel
    assert torch.corrcoef(torch.stack([x[0, 2].ravel(), y[0, 2].ravel()]))[0, 1] > 0.99
    plain = TransformerNet(recipe.model.model_copy(update={"colour_match": False}), 2)
    assert torch.allclose(plain(x, torch.tensor([1])), x, atol=2e-3)  # without matching: the identity


def test_every_image_mode_is_converted_and_bad_files_are_refused_with_a_reason():
    rgb = decode_rgb(png_bytes(Image.new("RGB", (5, 3), (200, 10, 30))), 10**6, 10**7)
    assert rgb.shape == (3, 5, 3) and tuple(rgb[0, 0]) == (200, 10, 30)
    assert decode_rgb(png_bytes(Image.new("L", (4, 4), 77)), 10**6, 10**7)[0, 0].tolist() == [77, 77, 77]
    deep = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))  # 16-bit white: scaled, not clipped to 255 by luck
    half = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert decode_rgb(png_bytes(deep), 10**6, 10**7)[0, 0, 0] == 255
    assert decode_rgb(png_bytes(half), 10**6, 10**7)[0, 0, 0] == 128
    clear = Image.new("RGBA", (3, 3), (0, 0, 0, 0))  # transparent: white, not black
    assert decode_rgb(png_bytes(clear), 10**6, 10**7)[1, 1].tolist() == [255, 255, 255]
    palette = Image.new("P", (6, 2), 3)
    assert decode_rgb(png_bytes(palette, "GIF"), 10**6, 10**7).shape == (2, 6, 3)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # red in CMYK
    assert decode_rgb(png_bytes(cmyk, "JPEG"), 10**6, 10**7)[2, 2, 0] > 200
    big = decode_rgb(png_bytes(Image.new("RGB", (400, 100))), 10_000, 10**7)
    assert big.shape[0] * big.shape[1] <= 10_000 and abs(big.shape[1] / big.shape[0] - 4) < 0.1  # shrunk, same shape
    for data, reason in [(b"", "empty"), (b"\x89PNG not really", "not a readable image"),
                         (png_bytes(Image.new("L", (3000, 3000))), "above the limit")]:
        with pytest.raises(BadImage, match=reason):
            decode_rgb(data, 10**6, 10**6)


def test_vgg19_weights_load_by_torchvision_names_and_wrong_ones_name_the_layer(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = {k: v for k, v in VGG19Features().state_dict().items() if k.startswith("features.")}
    good = tmp_path / "vgg19.safetensors"
    save_file({**state, "classifier.0.weight": torch.zeros(2, 2)}, str(good))  # a classifier is ignored
    recipe = load_recipe("style_sample", [*TINY_STYLE, "loss_network.kind=vgg19", f"loss_network.weights={good}"])
    net, digest = load_loss_network(recipe.loss_network)
    assert len(net(torch.rand(1, 3, 32, 32))) == 5 and len(digest) == 64
    wrong = tmp_path / "wrong.safetensors"
    save_file({**state, "features.5.weight": torch.zeros(128, 64, 5, 5)}, str(wrong))
    with pytest.raises(UserError, match=r"features.5.weight has shape \(128, 64, 5, 5\).*\(128, 64, 3, 3\)"):
        load_loss_network(recipe.loss_network.model_copy(update={"weights": str(wrong)}))
    (tmp_path / "text.safetensors").write_text("not weights")
    with pytest.raises(UserError, match="not a safetensors file"):
        load_loss_network(recipe.loss_network.model_copy(update={"weights": str(tmp_path / "text.safetensors")}))
    with pytest.raises(UserError, match="needs loss_network.weights"):
        load_recipe("style_sample", ["loss_network.kind=vgg19"])


# ---------------------------------------------------------------- training


@pytest.mark.slow  # starts Ray, a process or a training of its own: not in `make check`
def test_a_short_training_lowers_the_style_loss_and_records_the_loss_network(trained):
    folder, before, after = trained
    # Untrained, the network is its colour matching: held-out photos come out in their style's palette, so
    # already closer to their styles than they went in; training brings them closer still.
    assert before["held_out_style_ratio"] < 0.6 and before["held_out_change"] > 0.05
    assert after["held_out_style_ratio"] < 0.95 * before["held_out_style_ratio"], (before, after)
    info = json.loads(open(f"{folder}/raygen.json").read())
    assert info["loss_network"] == {"kind": "random", "seed": 0, "weights_sha256": None}


def test_a_short_training_with_vgg19_weights_runs_and_records_their_digest(tmp_path):
    import hashlib

    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = tmp_path / "vgg19.safetensors"
    save_file({k: v for k, v in VGG19Features().state_dict().items() if k.startswith("features.")}, str(weights))
    recipe = load_recipe("style_sample", [*TINY_STYLE, "data.crop_size=32", "loss_network.kind=vgg19",
                                          f"loss_network.weights={weights}", "loss.content_layer=2"])
    task, history = train_in_process(recipe, 2)
    assert all(np.isfinite(h["style_loss"]) for h in history)
    task.save(tmp_path / "ckpt", {"epoch": 1})
    info = json.loads((tmp_path / "ckpt" / "raygen.json").read_text())
    assert info["loss_network"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


# ---------------------------------------------------------------- stylising


def test_stylised_images_differ_from_their_inputs_yet_keep_their_edges(style_checkpoint):
    from gen_jobs.families.style.sampler import Sampler

    sampler = Sampler(style_checkpoint)
    crops = held_out_crops(4, 64, seed=3)
    files = [png_bytes(Image.fromarray(c.transpose(1, 2, 0))) for c in crops]
    out = sampler({"id": np.arange(4), "seed": np.arange(4, dtype=np.int64), "input": np.array(files, dtype=object),
                   "label": np.array([0, 1, 0, 1])})
    assert list(out["style"]) == [0, 1, 0, 1] and list(out["status"]) == ["ok"] * 4
    own = [image_figures(crop.transpose(1, 2, 0), image) for crop, image in zip(crops, out["image"])]
    other = [image_figures(crops[(n + 1) % 4].transpose(1, 2, 0), image) for n, image in enumerate(out["image"])]
    assert min(f["change"] for f in own) > 0.05  # visibly stylised, yet with its own input's edges (not another's)
    own_edges, other_edges = np.mean([f["edge_correlation"] for f in own]), np.mean([f["edge_correlation"] for f in other])
    assert own_edges > 0.3 and own_edges > other_edges + 0.2
    assert np.abs(out["image"][0].astype(int) - sampler({"seed": np.zeros(1, dtype=np.int64), "input": np.array(
        files[:1], dtype=object), "label": np.array([1])})["image"][0]).mean() > 2  # the other style looks otherwise


def test_a_folder_with_broken_files_is_stylised_the_same_by_one_or_two_workers_and_resumes(
        ray_cluster, style_checkpoint, tmp_path):
    import datasets

    from gen_jobs.generate import GenerateArgs, generate

    photos = photo_folder(tmp_path / "photos")
    (photos / "broken.png").write_bytes(b"not an image at all")
    (photos / "empty.jpg").write_bytes(b"")
    outs, manifests = [], []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        manifests.append(generate(GenerateArgs(checkpoint=style_checkpoint, out=str(out), input=str(photos),
                                               samples_per_input=2, options={"styles": "0,1"}, workers=workers), log=lambda _: None))
        outs.append(out)
    names = sorted(p.name for p in outs[0].glob("part-*.parquet"))
    assert len(names) == 4  # 12 rows, 3 per shard
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    table = read_rows(outs[0])
    assert table.column_names[:6] == ["id", "seed", "source", "style", "image", "status"]
    sources = table.column("source").to_pylist()
    assert sources[:4] == [str(photos / "broken.png")] * 2 + [str(photos / "empty.jpg")] * 2  # sorted file names
    assert table.column("style").to_pylist() == [0, 1] * 6
    status = table.column("status").to_pylist()
    assert status[:4] == ["error: not a readable image (UnidentifiedImageError: cannot identify image file)"] * 2 + \
        ["error: empty file (0 bytes)"] * 2 and status[4:] == ["ok"] * 8
    assert table.column("image").to_pylist()[:4] == [None] * 4
    first = Image.open(io.BytesIO(table.column("image")[4].as_py()["bytes"]))
    assert first.size == Image.open(photos / "photo-0.png").size == (43, 40)  # the input's own size
    assert manifests[0].quality["bad_inputs"] == 4 and "4 of 12 inputs could not be stylised" in manifests[0].quality["warnings"][0]
    assert manifests[0].source.sha256 and manifests[0].source.inputs == 6
    ds = datasets.load_dataset("parquet", data_files=str(outs[0] / "*.parquet"), split="train")
    assert isinstance(ds.features["image"], datasets.Image) and ds[4]["image"].size == (43, 40)

    (outs[0] / names[2]).unlink()  # resume writes the missing shard again, byte for byte
    generate(GenerateArgs(checkpoint=style_checkpoint, out=str(outs[0]), input=str(photos), samples_per_input=2,
                          options={"styles": "0,1"}, workers=1, resume=True), log=lambda _: None)
    assert (outs[0] / names[2]).read_bytes() == (outs[1] / names[2]).read_bytes()
    (photos / "photo-3.png").write_bytes(png_bytes(Image.new("RGB", (9, 9))))  # a changed input is refused on resume
    with pytest.raises(UserError, match="input"):
        generate(GenerateArgs(checkpoint=style_checkpoint, out=str(outs[0]), input=str(photos), samples_per_input=2,
                              options={"styles": "0,1"}, workers=1, resume=True), log=lambda _: None)


def test_a_parquet_input_with_an_image_column_names_rows_by_index(ray_cluster, style_checkpoint, tmp_path):
    from gen_jobs.generate import GenerateArgs, generate

    photos = sorted(photo_folder(tmp_path / "photos", count=3).glob("*.png"))
    cells = [{"bytes": p.read_bytes(), "path": p.name} for p in photos] + [None]
    pq.write_table(pa.table({"picture": pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))}),
                   tmp_path / "in.parquet")
    manifest = generate(GenerateArgs(checkpoint=style_checkpoint, out=str(tmp_path / "out"), input=str(tmp_path / "in.parquet"),
                                     input_column="picture", workers=1), log=lambda _: None)
    table = read_rows(tmp_path / "out")
    assert table.column("source").to_pylist() == ["0", "1", "2", "3"]
    assert table.column("status").to_pylist()[3] == "error: no image (the input's cell is null)"  # it keeps its row
    drawn = table.column("style").to_pylist()  # --styles uniform: drawn from each row's seed
    assert set(drawn) <= {0, 1} and manifest.labels is None


@pytest.mark.slow  # starts Ray, a process or a training of its own: not in `make check`
def test_style_job_errors_are_one_line(style_checkpoint, tmp_path):
    photos = photo_folder(tmp_path / "photos", count=1)
    for args, says in [
        (["--input", str(photos), "--styles", "0,2"], "--styles 0,2: styles [2] out of range; this model has styles 0..1"),
        (["--input", str(photos), "--styles", "x"], "styles"),
        (["--input", str(photos), "--styles", "1", "--labels", "0"], "give --styles or --labels, not both"),
        (["--num-samples", "3"], "makes rows from input images: pass --input URI"),
        (["--input", str(tmp_path / "nowhere")], "does not exist"),
    ]:
        result = run_cli("generate", "--checkpoint", style_checkpoint, "--out", str(tmp_path / "out"), *args)
        assert result.returncode == 2, result.stderr
        assert says in result.stderr and "Traceback" not in result.stderr


def test_user_styles_and_content_come_from_files_folders_parquet_or_s3(s3_server, tmp_path):
    from gen_jobs.core import storage
    from gen_jobs.families.style.data import content_photos, style_images

    photos = photo_folder(tmp_path / "photos", count=2)
    (photos / "notes.txt").write_text("not a picture")  # not an image suffix: not listed
    (photos / "broken.png").write_bytes(b"broken")  # listed, unreadable: skipped
    assert [p.shape for p in content_photos(str(photos))] == [(40, 43, 3)] * 2
    storage.write_bytes_atomic("s3://raygen/style-content/a.png", (photos / "photo-0.png").read_bytes())
    assert content_photos("s3://raygen/style-content")[0].shape == (40, 43, 3)
    recipe = load_recipe("style_sample")
    recipe = recipe.model_copy(update={"styles": [recipe.styles[0], recipe.styles[1].model_copy(
        update={"image": "s3://raygen/style-content/a.png"})]})
    assert [s.shape[0] for s in style_images(recipe.styles, 64)] == [64, 64]  # the shorter side
    with pytest.raises(UserError, match="does not exist"):
        style_images([recipe.styles[0].model_copy(update={"image": str(tmp_path / "missing.jpg")})], 64)
    with pytest.raises(UserError, match="not a bundled image"):
        style_images([recipe.styles[0].model_copy(update={"image": "skimage:nothing"})], 64)
    with pytest.raises(UserError, match="holds no readable images"):
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "x.jpg").write_bytes(b"")
        content_photos(str(tmp_path / "bad"))


def test_an_s3_prefix_of_images_is_stylised_into_an_s3_dataset(ray_cluster, s3_server, style_checkpoint, tmp_path):
    from gen_jobs.core import storage
    from gen_jobs.generate import GenerateArgs, generate
    from gen_jobs.verify import problems

    for path in sorted(photo_folder(tmp_path / "photos", count=2).glob("*.png")):
        storage.write_bytes_atomic(f"s3://raygen/style-in/{path.name}", path.read_bytes())
    manifest = generate(GenerateArgs(checkpoint=style_checkpoint, out="s3://raygen/style-out", input="s3://raygen/style-in",
                                     options={"styles": "1"}, workers=1), log=lambda _: None)
    assert manifest.quality["stylised"] == 2 and problems("s3://raygen/style-out")[0] == []
    table = pq.read_table(io.BytesIO(storage.read_bytes("s3://raygen/style-out/part-00000.parquet")))
    assert table.column("source").to_pylist() == ["s3://raygen/style-in/photo-0.png", "s3://raygen/style-in/photo-1.png"]


def test_blotch_sees_smooth_patches_in_flat_regions_but_not_a_recolouring_or_texture():
    from gen_jobs.families.style.quality import BLOTCH_GOAL, blotch

    yy, xx = np.mgrid[0:128, 0:128] / 127.0
    sky = np.stack([0.55 + 0.3 * yy, 0.7 + 0.2 * yy, 0.95 - 0.05 * xx], axis=-1)  # a flat gradient, H x W x 3
    before = (sky * 255).round().astype(np.uint8)
    recoloured = (np.clip(sky * [0.6, 0.9, 0.4] + [0.3, 0.05, 0.1], 0, 1) * 255).round().astype(np.uint8)
    rng = np.random.default_rng(0)
    textured = np.clip(before + rng.normal(0, 20, before.shape), 0, 255).astype(np.uint8)  # fine grain
    patch = np.exp(-((yy - 0.4) ** 2 + (xx - 0.6) ** 2) / 0.05)[..., None] * [0.35, -0.1, -0.3]  # an orange blob
    blotched = (np.clip(sky + patch, 0, 1) * 255).round().astype(np.uint8)
    assert blotch(before, before) == 0.0
    assert blotch(before, recoloured) < 0.01 and blotch(before, textured) < 0.01
    assert blotch(before, blotched) > BLOTCH_GOAL
    busy = rng.integers(0, 256, before.shape, dtype=np.uint8)  # no flat region: nothing to judge
    assert np.isnan(blotch(busy, busy))


def test_texture_distances_place_the_output_between_its_input_and_its_style():
    recipe = load_recipe("style_sample", TINY_STYLE)
    network, _ = load_loss_network(recipe.loss_network)
    from gen_jobs.families.style.losses import Judge
    from gen_jobs.families.style.training import style_tensors

    styles = [s[:, :96, :96] for s in style_tensors(recipe)]
    judge = Judge.from_style_images(network, styles, recipe.loss.content_layer, centred=True)
    photo = torch.from_numpy(held_out_crops(1, 96, seed=2)).float() / 255.0  # 1 x 3 x 96 x 96
    k = torch.tensor([0])
    same = judge.texture_distances(judge.features(photo), judge.features(photo), k)
    assert same[0].item() == pytest.approx(same[1].item()) and same[2].item() == 0  # unchanged: 1 and 0
    style = styles[0][None]
    to_style, input_to_style, from_input = (d.item() for d in judge.texture_distances(
        judge.features(style), judge.features(photo), k))
    assert to_style < 1e-4 and from_input == pytest.approx(input_to_style, rel=1e-4)  # the style itself: 0 and 1


@pytest.mark.parametrize("rows", [100, 300])
def test_a_style_net_that_returns_its_input_warns(rows):
    """The crippled style model of the warnings' test: outputs equal to their inputs."""
    from gen_jobs.families.style.quality import colour_figures, score_dataset

    recipe = load_recipe("style_sample")
    crops = held_out_crops(rows, 48, seed=3).transpose(0, 2, 3, 1)  # rows x 48 x 48 x 3 uint8
    palettes = np.random.default_rng(0).uniform(0, 1, (len(recipe.styles), 6))
    figures = [{**image_figures(c, c), **colour_figures(c, c, i % 2, palettes), "texture_to_style": 1.0}
               for i, c in enumerate(crops)]
    table = pa.table({"status": ["ok"] * rows, "style": [i % 2 for i in range(rows)],
                      **{name: [f[name] for f in figures] for name in figures[0]}})
    warned = score_dataset(table, recipe, "unused")["warnings"]
    assert any(w.startswith("outputs barely differ from their inputs (mean change 0.000") for w in warned), warned
    assert any(w.startswith("outputs keep their inputs' texture (texture distance to the style x1.00") for w in warned)
    assert not any("blotch" in w for w in warned)  # an untouched input has no blotch


def test_blotched_rows_warn_only_when_there_are_enough_of_them():
    from gen_jobs.families.style.quality import score_dataset

    recipe = load_recipe("style_sample")

    def warnings(blotches):
        rows = len(blotches)
        table = pa.table({"status": ["ok"] * rows, "style": [0] * rows, "palette_style": [0] * rows,
                          "change": [0.2] * rows, "edge_correlation": [0.8] * rows, "colour_shift": [0.5] * rows,
                          "texture_to_style": [0.5] * rows, "blotch": blotches})
        return score_dataset(table, recipe, "unused")["warnings"]

    rng = np.random.default_rng(1)
    assert warnings(list(rng.normal(0.03, 0.01, 200))) == []  # healthy
    assert warnings([0.12, 0.09, None]) == []  # blotched, but 2 measurable rows say little
    warned = warnings(list(rng.normal(0.09, 0.02, 200)))
    assert len(warned) == 1 and warned[0].startswith("outputs have smooth patches of change in flat regions (blotch 0.0")
