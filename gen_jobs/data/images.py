"""Image pixels <-> files: PNG encoding of samples, decoding of users' images.

Datasets store PNG bytes in the {bytes, path} struct of gen_jobs.data.columns.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from gen_jobs.core.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def encode_png(images: np.ndarray) -> list[bytes]:
    """uint8 B x H x W x C (C = 1 or 3) -> PNG bytes per image (deterministic encoder settings)."""
    out = []
    for img in images:
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img, mode="L" if img.shape[-1] == 1 else "RGB")
        buf = io.BytesIO()
        pil.save(buf, format="PNG", compress_level=6)
        out.append(buf.getvalue())
    return out


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 H x W x C."""
    arr = np.asarray(Image.open(io.BytesIO(data)))
    return arr if arr.ndim == 3 else arr[..., None]


def decode_image(data: bytes, size: int, channels: int, where: str) -> np.ndarray:
    """A user's image file -> uint8 size x size x channels (bicubic); UserError naming `where` if unreadable."""
    try:
        img = Image.open(io.BytesIO(data)).convert("L" if channels == 1 else "RGB")
    except Image.DecompressionBombError as e:  # not an OSError: a huge (or hostile) image
        raise UserError(f"{where} is too large to decode safely ({e}); shrink it or remove it") from e
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{where} is not a readable image ({e}); remove it or convert it to PNG") from e
    arr = np.asarray(img.resize((size, size), Image.Resampling.BICUBIC))
    return arr if arr.ndim == 3 else arr[..., None]


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) or (N, h, w, C) uint8 -> (N, size, size, C) uint8, bicubic like PIL."""
    if images.ndim == 3:
        images = images[..., None]
    out = []
    for img in images:
        mode = "L" if img.shape[-1] == 1 else "RGB"
        pil = Image.fromarray(img[..., 0] if mode == "L" else img, mode=mode)
        arr = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC))
        out.append(arr if arr.ndim == 3 else arr[..., None])
    return np.stack(out)


class BadImage(ValueError):
    """An input image that cannot be used (not an image, empty, too large to decode safely)."""


def decode_rgb(data: bytes | None, max_pixels: int, max_input_pixels: int) -> np.ndarray:
    """Any image file -> uint8 H x W x 3, at most `max_pixels` (larger ones are shrunk, keeping their shape).

    Every mode is converted: grayscale, palette, CMYK, 16-bit and float images
    (scaled to their range, not clipped), alpha composited on white; the EXIF
    orientation is applied. BadImage says why an input cannot be used: not an
    image, zero pixels, or more than `max_input_pixels` (a decompression bomb:
    refused from the header, before any pixel is decoded).
    """
    from PIL import ImageOps

    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height == 0:
            raise BadImage(f"the image has no pixels ({width}x{height})")
        if width * height > max_input_pixels:
            raise BadImage(f"{width}x{height} is {width * height:,} pixels, above the limit of {max_input_pixels:,} "
                           "(stylize.max_input_pixels); shrink it first")
        if width * height > max_pixels:
            img.draft("RGB", _fit(width, height, max_pixels))  # JPEG: decode at a reduced scale, cheaply
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
    except BadImage:
        raise
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large to decode safely ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = str(e).split(" <_io.")[0][:120]  # PIL names the in-memory file object: noise to a user
        raise BadImage(f"not a readable image ({type(e).__name__}: {reason})") from None
    if rgb.width * rgb.height > max_pixels:
        rgb = rgb.resize(_fit(rgb.width, rgb.height, max_pixels), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)


# Bytes per pixel PIL holds for an image of each mode once decoded (before the conversion to 8-bit RGB).
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
              "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4}


def decoding_cost(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(pixels, bytes) that decoding an image file for decode_rgb(data, max_pixels) holds, from its header alone.

    A large JPEG is decoded at 1/2, 1/4 or 1/8 scale (its draft mode), so it
    costs what its reduced size does. BadImage if the header is unreadable.
    """
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            img.draft("RGB", _fit(width, height, max_pixels))  # (a no-op for formats other than JPEG)
        width, height = img.size
        mode = img.mode
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large to decode safely ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = str(e).split(" <_io.")[0][:120]
        raise BadImage(f"not a readable image ({type(e).__name__}: {reason})") from None
    per_pixel = 2 if mode.startswith("I;16") else MODE_BYTES.get(mode, 4)
    return width * height, width * height * per_pixel


def _fit(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest (w, h) of the same shape with w * h <= max_pixels (each at least 1)."""
    scale = (max_pixels / (width * height)) ** 0.5
    return max(1, int(width * scale)), max(1, int(height * scale))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # 16-bit, 32-bit, float: scale to 8 bits
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or (img.mode == "I" and arr.max() > 255) else 255.0
        if img.mode == "F":
            top = max(float(np.nanmax(arr)), 1.0) if np.isfinite(arr).any() else 1.0
        gray = np.clip(np.nan_to_num(arr) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """uint8 N x H x W x C -> one uint8 picture (rows of `columns` images; a short last row padded black)."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    padded = np.zeros((rows * columns, h, w, c), dtype=np.uint8)
    padded[:n] = images
    grid = padded.reshape(rows, columns, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, c)
    return grid[..., 0] if c == 1 else grid


def labelled_grid(images: np.ndarray, labels: np.ndarray, per_label: int = 10, cell: int = 64,
                  gap: int = 4) -> np.ndarray | None:
    """A picture for people: row k shows the first `per_label` images labelled k (labels 0..max), each
    enlarged pixel for pixel to at least `cell` pixels, `gap` pixels apart, with its label written at
    the left. None when a label has fewer than `per_label` images.

    uint8 N x H x W x C -> uint8 picture (grey for C = 1, RGB for C = 3).
    """
    from PIL import ImageDraw, ImageFont

    rows = []
    for k in range(int(labels.max()) + 1 if len(labels) else 0):
        of_k = images[labels == k][:per_label]
        if len(of_k) < per_label:
            return None
        rows.append(of_k)
    if not rows:
        return None
    scale = max(1, cell // images.shape[1])
    h, w, c = images.shape[1] * scale, images.shape[2] * scale, images.shape[3]
    margin = max(40, h // 2 + 16)  # room for the label, left of each row
    canvas = np.full((len(rows) * (h + gap) + gap, margin + per_label * (w + gap), c), 40, dtype=np.uint8)
    for r, picked in enumerate(rows):
        for i, image in enumerate(picked):
            y, x = gap + r * (h + gap), margin + i * (w + gap)
            canvas[y: y + h, x: x + w] = image.repeat(scale, axis=0).repeat(scale, axis=1)
    picture = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(12, h // 2))
    for r in range(len(rows)):
        draw.text((margin // 2, gap + r * (h + gap) + h // 2), str(r), fill=255 if c == 1 else (255, 255, 255),
                  font=font, anchor="mm")
    return np.asarray(picture)


def png_bytes(picture: np.ndarray) -> bytes:
    """uint8 H x W (grey) or H x W x 3 -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    return buf.getvalue()
