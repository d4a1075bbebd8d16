"""The style family's images: bundled style and content photos, users' files, random training crops.

Image names the recipe may use (`styles[].image`, `data.content`):
    sklearn:china, sklearn:flower      the two photos that ship with scikit-learn
    skimage:NAME                       a sample image bundled with scikit-image (astronaut, coffee, ...)
    PATH or s3://URI                   an image file; for content also a folder / prefix of images
                                       or Parquet file(s) with an image column
    bundled:photos                     content: the bundled photos below, as random crops

Training content comes from TRAIN_PHOTOS; HELD_OUT_PHOTOS are never trained on,
so the demo and the quality figures stylise photos the network has not seen.
"""

from __future__ import annotations

import numpy as np

from gen_jobs.core import storage
from gen_jobs.core.errors import UserError
from gen_jobs.data.images import IMAGE_SUFFIXES, BadImage, decode_rgb

TRAIN_PHOTOS = ("skimage:astronaut", "skimage:coffee", "skimage:rocket", "skimage:camera", "skimage:hubble_deep_field")
HELD_OUT_PHOTOS = ("skimage:chelsea", "sklearn:china")
BUNDLED = "bundled:photos"
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cat", "chelsea", "coffee", "coins", "colorwheel", "grass",
                  "gravel", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina",
                  "rocket", "text")
NO_LIMIT = 1 << 62


def bundled_image(name: str) -> np.ndarray:
    """A bundled photo by its recipe name -> uint8 H x W x 3."""
    kind, _, which = name.partition(":")
    if kind == "sklearn" and which in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(f"{which}.jpg"), dtype=np.uint8)
    if kind == "skimage" and which in SKIMAGE_PHOTOS:
        import skimage.data

        image = np.asarray(getattr(skimage.data, which)())
        if image.dtype != np.uint8:  # a few are bool or float
            image = (image.astype(np.float64) / max(float(image.max()), 1.0) * 255).round().astype(np.uint8)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        return image[..., :3]
    raise UserError(f"{name!r} is not a bundled image: use sklearn:china, sklearn:flower or skimage:NAME "
                    f"({', '.join(SKIMAGE_PHOTOS)})")


def is_bundled(name: str) -> bool:
    return name.startswith(("sklearn:", "skimage:"))


def load_image(name: str, max_pixels: int = NO_LIMIT) -> np.ndarray:
    """A bundled photo or an image file (path or s3://) -> uint8 H x W x 3; UserError if it is not usable."""
    if is_bundled(name):
        return bundled_image(name)
    if not storage.exists(name):
        raise UserError(f"image {name} does not exist: give sklearn:china, sklearn:flower, skimage:NAME, "
                        "or an image file (path or s3://)")
    try:
        return decode_rgb(storage.read_bytes(name), max_pixels, 200_000_000)
    except BadImage as e:
        raise UserError(f"image {name}: {e}") from None


def resize_short_side(image: np.ndarray, side: int) -> np.ndarray:
    """uint8 H x W x 3 with its shorter side scaled to `side` (Lanczos)."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def style_images(styles, size: int) -> list[np.ndarray]:
    """Each recipe style's image, its shorter side resized to `size`."""
    return [resize_short_side(load_image(s.image), size) for s in styles]


def content_photos(source: str, image_column: str = "image") -> list[np.ndarray]:
    """The photos training crops come from: the bundled ones, or every usable image of a user's input."""
    if source == BUNDLED:
        return [bundled_image(name) for name in TRAIN_PHOTOS]
    if is_bundled(source):
        return [bundled_image(source)]
    from gen_jobs.data.rows import image_rows, input_files

    files = input_files(source)  # one listing; then each file is read once
    if not files[0].endswith(".parquet") and len(files) == 1 and files[0] == source:
        return [load_image(source)]
    blobs, _ = image_rows(files, image_column, 0, NO_LIMIT, {})
    photos, bad = [], 0
    for data in blobs:
        try:
            photos.append(decode_rgb(data, 1024 * 1024, 200_000_000))
        except BadImage:
            bad += 1
    if not photos:
        raise UserError(f"data.content {source} holds no readable images ({bad} unreadable); "
                        f"give a folder of images ({', '.join(IMAGE_SUFFIXES)}) or Parquet with an image column")
    return photos


def random_crops(photos: list[np.ndarray], count: int, size: int, seed: int) -> np.ndarray:
    """`count` random size x size crops (uint8 N x 3 x S x S) of the photos, resized first if smaller."""
    rng = np.random.default_rng(seed)
    usable = [p if min(p.shape[:2]) >= size else resize_short_side(p, size) for p in photos]
    crops = np.empty((count, 3, size, size), dtype=np.uint8)
    for n in range(count):
        photo = usable[rng.integers(len(usable))]
        # Crops of random scale (size to the whole short side) then resized: more texture scales seen.
        side = int(rng.integers(size, min(photo.shape[:2]) + 1))
        top = int(rng.integers(photo.shape[0] - side + 1))
        left = int(rng.integers(photo.shape[1] - side + 1))
        crop = photo[top: top + side, left: left + side]
        if side != size:
            crop = resize_short_side(crop, size)[:size, :size]
        crops[n] = crop.transpose(2, 0, 1)
    return crops


def held_out_crops(count: int, size: int, seed: int = 1) -> np.ndarray:
    """Crops (uint8 N x 3 x S x S) of photos the default recipe never trains on."""
    return random_crops([bundled_image(name) for name in HELD_OUT_PHOTOS], count, size, seed)


def write_demo_inputs(out: str, count: int = 32, size: int = 256) -> str:
    """OUT/style_inputs/crop-NN.png: `count` crops of the held-out photos, for the demo to stylise."""
    import io

    from PIL import Image

    folder = storage.join(out, "style_inputs")
    for n, crop in enumerate(held_out_crops(count, size, seed=7)):
        buf = io.BytesIO()
        Image.fromarray(crop.transpose(1, 2, 0)).save(buf, format="PNG")
        storage.write_bytes_atomic(storage.join(folder, f"crop-{n:02d}.png"), buf.getvalue())
    return folder
