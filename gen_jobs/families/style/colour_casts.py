"""The style family's goals on photos it never saw, with strong colour casts.

    .venv/bin/python bench/style_trials.py        (trains the trials and prints these figures)

A style imposed on photos pulls their colours together and gives them its texture,
while keeping what the photos show. CAST_PHOTO is never trained on (a held-out
photo, gen_jobs.families.style.data); its crops are tinted six ways (CASTS) and
stylised in each style. The figures, per style:

    palette_spread     the spread of the outputs' mean colours over the inputs' (RMS distance
                       from their mean): 1 keeps the casts, 0 gives every output one palette
    texture_to_style   the outputs' Gram distance to the style at the loss network's middle layers
                       over the inputs' (gen_jobs.families.style.losses.Judge.texture_distances)
    edge_correlation   the outputs' edges against the inputs' (quality.image_figures)
    blotch             smooth patches of change in flat regions (quality.blotch)

GOALS holds each to its goal; tests/families/style measures a trained model against them.
"""

from __future__ import annotations

import numpy as np

from gen_jobs.families.style.data import bundled_image, random_crops

CAST_PHOTO = "skimage:chelsea"  # held out of training by the default recipe
CASTS = {  # channel gains: each a strong cast, as a wrong white balance or a coloured light gives
    "none": (1.0, 1.0, 1.0), "red": (1.0, 0.55, 0.55), "green": (0.55, 1.0, 0.55), "blue": (0.55, 0.55, 1.0),
    "yellow": (1.0, 1.0, 0.5), "cyan": (0.5, 1.0, 1.0),
}
GOALS = {"palette_spread": ("at most", 0.7), "texture_to_style": ("at most", 0.6), "edge_correlation": ("at least", 0.5)}


def tinted_crops(per_cast: int = 2, size: int = 256, seed: int = 11) -> np.ndarray:
    """`per_cast` crops of CAST_PHOTO in every cast: uint8 (len(CASTS) * per_cast) x S x S x 3, cast-major."""
    crops = random_crops([bundled_image(CAST_PHOTO)], per_cast, size, seed).transpose(0, 2, 3, 1)  # n x S x S x 3
    gains = np.asarray(list(CASTS.values()), np.float32)[:, None, None, None, :]  # casts x 1 x 1 x 1 x 3
    return (crops[None].astype(np.float32) * gains).round().clip(0, 255).astype(np.uint8).reshape(-1, size, size, 3)


def palette_spread(images: np.ndarray) -> float:
    """RMS distance of the images' mean colours (in [0, 1]) from their average (images: N x H x W x 3 uint8)."""
    means = images.reshape(len(images), -1, 3).mean(axis=1) / 255.0  # N x 3
    return float(np.sqrt(np.square(means - means.mean(axis=0)).sum(axis=1).mean()))


def cast_figures(sampler, inputs: np.ndarray) -> dict[str, dict[str, float]]:
    """{style name: the figures above} for a style Sampler on `inputs` (uint8 N x H x W x 3)."""
    out = {}
    for k, style in enumerate(sampler.recipe.styles):
        batch = {"seed": np.zeros(len(inputs), np.int64), "input": list(inputs), "label": np.full(len(inputs), k)}
        rows = sampler(batch)
        images = np.stack(rows["image"])
        mean = {name: float(np.nanmean(np.asarray(rows[name], dtype=np.float64)))
                for name in ("texture_to_style", "edge_correlation", "blotch") if name in rows}
        out[style.name] = {"palette_spread": palette_spread(images) / palette_spread(inputs), **mean}
    return out


def misses(figures: dict[str, dict[str, float]]) -> list[str]:
    """What misses its goal, e.g. ['flower: palette_spread 0.83 > 0.7']; empty when every goal holds."""
    found = []
    for style, values in figures.items():
        for name, (way, goal) in GOALS.items():
            value = values[name]
            if (value > goal) if way == "at most" else (value < goal):
                found.append(f"{style}: {name} {value:.2f} {'>' if way == 'at most' else '<'} {goal}")
    return found
