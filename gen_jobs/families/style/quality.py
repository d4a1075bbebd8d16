"""What a stylised image is: how much it changed, whether it kept its edges, whose palette it took.

Per image (the sampler writes them as columns, so a dataset can be filtered on them):
    change            mean |output - input| over pixels and channels, in [0, 1]: 0 is an untouched input
    edge_correlation  Pearson correlation of the Sobel edge magnitudes of input and output (grey):
                      near 1 keeps the content's structure, near 0 has lost it
    colour_shift      1 - d(output, style) / d(input, style), d the distance of colour statistics
                      (mean and std of R, G, B): > 0 moved toward the style's palette, 1 reached it
    palette_style     the style whose colour statistics are nearest the output's (its own = the palette fits)
    style_loss_ratio  the style loss of the output over that of the input: < 1 is closer to the style
    content_loss      the content (feature) loss between output and input, over the input's scale
    texture_to_style  the output's texture distance to its style over the input's (the covariance of
                      the loss network's middle layers, Judge.texture_distances): 1 kept the input's
                      texture, 0 has the style's; needs the random loss network (rebuilt from its seed)
    texture_from_input  the output's texture distance from its input over the input's to the style:
                      0 kept the input's texture, 1 moved as far as the style is
    blotch            smooth patches of change in the input's flat regions that no recolouring explains
                      (RMS, colour units in [0, 1]; `blotch`); null when the input has no flat region

The dataset's figures (manifest `quality`) are their means, the share of rows whose
palette is nearest their own style, per style, and the count of unusable inputs.
A figure on the wrong side of its goal (GOALS below, BLOTCH_GOAL and TEXTURE_GOAL
above) is a warning only when it is significant for the rows it rests on (a
one-sided test at gen_jobs.quality.significance.SIGNIFICANCE): 3 images say little
about a model.
"""

from __future__ import annotations

import numpy as np

from gen_jobs.quality.significance import in_rows, mean_above, mean_below, share_below

FIGURES = {
    "num_samples": "rows the figures rest on",
    "stylised": "rows with a stylised image (status ok)",
    "bad_inputs": "inputs that could not be stylised (their rows have a null image and a status saying why)",
    "change": "mean |output - input| over pixels and channels, in [0, 1]: 0 is an untouched input",
    "edge_correlation": "correlation of the input's and output's edge maps (Sobel): near 1 keeps the content's "
                        "structure, near 0 has lost it",
    "colour_shift": "how far the colours moved from the input's toward the style's palette: > 0 toward, 1 reached it",
    "palette_match": "share of rows whose colours are nearest their own style's palette",
    "style_loss_ratio": "style (Gram) loss of the output over that of the input: < 1 is closer to the style",
    "content_loss": "content (feature) loss between output and input, over the input's scale",
    "texture_to_style": "texture distance to the style over the input's (covariance of the loss network's middle "
                        "layers): 1 kept the input's texture, 0 has the style's",
    "texture_from_input": "texture distance from the input over the input's to the style: 0 kept the input's "
                          "texture, 1 moved as far as the style is",
    "blotch": "smooth patches of change in the inputs' flat regions that no recolouring explains (RMS, 0-1 colour "
              "units): above 0.05 they show as blotches",
}  # the means over the rows of the per-row columns described above; `per_style.<name>` the same per style

GOALS = {"change": 0.04, "edge_correlation": 0.5, "palette_match": 0.8}  # below any of them: a warning
BLOTCH_GOAL = 0.05  # above it: a warning (the mean of the demo's old crops' blotches was 0.12, visibly blotched)
TEXTURE_GOAL = 0.8  # texture_to_style above it: a warning (the style's texture not imposed: at most a recolouring)


def colour_stats(image: np.ndarray) -> np.ndarray:
    """H x W x 3 (uint8, or float in [0, 1]) -> float32 (6,): mean and std of R, G, B in [0, 1]."""
    x = image.reshape(-1, 3).astype(np.float64)
    if image.dtype == np.uint8:
        x /= 255.0
    return np.concatenate([x.mean(axis=0), x.std(axis=0)]).astype(np.float32)


def edge_map(image: np.ndarray) -> np.ndarray:
    """uint8 H x W x 3 -> Sobel gradient magnitude of its grey image (H x W float64)."""
    from scipy import ndimage

    grey = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1))


BLOTCH_SCALE = 32  # blotches are changes smooth over 1/32 of the image's shorter side and more
FLAT = 0.04  # a region is flat where the input's grey changes by less than 4% a pixel (its local mean slope)
FLAT_SHARE = 0.05  # an input with flat regions on less of its area than this gets no blotch figure


def blotch(before: np.ndarray, after: np.ndarray) -> float:
    """The energy of low-frequency change in the input's flat regions that no colour mapping explains.

    A stylisation may recolour (any affine map of the colours: a palette) and may paint texture (high
    frequencies); a blotch is neither: a smooth patch of change in a flat region (sky, wall, skin) that
    depends on where the pixel is, not on its colour. Both images (uint8 H x W x 3) are low-passed
    (Gaussian, sigma = shorter side / BLOTCH_SCALE); in the flat pixels, the change is fitted as an affine
    function of the input's colour; the figure is the RMS of what is left, in [0, 1] colour units.
    NaN when the input has too little flat area to say (FLAT_SHARE).
    """
    from scipy import ndimage

    x, y = before.astype(np.float32) / 255.0, after.astype(np.float32) / 255.0
    sigma = max(1.0, min(x.shape[:2]) / BLOTCH_SCALE)
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    slope = np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1)) / 8.0  # Sobel's gain is 8
    flat = ndimage.gaussian_filter(slope, sigma) < FLAT  # H x W
    if flat.mean() < FLAT_SHARE:
        return float("nan")
    colour = ndimage.gaussian_filter(x, (sigma, sigma, 0))[flat]  # N x 3
    change = ndimage.gaussian_filter(y - x, (sigma, sigma, 0))[flat]  # N x 3
    design = np.concatenate([colour, np.ones((len(colour), 1), np.float32)], axis=1)  # N x 4
    coef, *_ = np.linalg.lstsq(design, change, rcond=None)
    return float(np.sqrt(np.square(change - design @ coef).mean()))


def image_figures(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """change, edge_correlation and blotch of one stylised image (uint8 H x W x 3 each)."""
    change = float(np.abs(after.astype(np.int16) - before.astype(np.int16)).mean() / 255.0)
    a, b = edge_map(before).ravel(), edge_map(after).ravel()
    if a.std() < 1e-9 or b.std() < 1e-9:  # a flat image has no edges to keep
        corr = 1.0 if a.std() < 1e-9 and b.std() < 1e-9 else 0.0
    else:
        corr = float(np.corrcoef(a, b)[0, 1])
    return {"change": round(change, 5), "edge_correlation": round(corr, 5), "blotch": round(blotch(before, after), 5)}


def colour_figures(before: np.ndarray, after: np.ndarray, style: int, palettes: np.ndarray) -> dict:
    """colour_shift toward style `style` and the nearest palette; palettes: N x 6 colour statistics."""
    b, a = colour_stats(before), colour_stats(after)
    to_style_before = float(np.linalg.norm(b - palettes[style]))
    to_style_after = float(np.linalg.norm(a - palettes[style]))
    shift = 1.0 - to_style_after / to_style_before if to_style_before > 1e-6 else 0.0
    return {"colour_shift": round(shift, 5), "palette_style": int(np.argmin(np.linalg.norm(palettes - a, axis=1)))}


def score_dataset(table, recipe, checkpoint_uri: str) -> dict:
    """The dataset's figures from its per-row columns (see the module docstring)."""
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    ok = status == "ok"
    bad = int((~ok).sum())
    result: dict = {"num_samples": len(status), "stylised": int(ok.sum()), "bad_inputs": bad}
    warnings = []
    if bad:
        first = next(s for s in status if s != "ok")
        warnings.append(f"{bad} of {len(status)} inputs could not be stylised (their rows have a null image and a "
                        f"status saying why, e.g. {first!r})")
    if not recipe.stylize.figures or not ok.any():
        result.update(summary=f"{ok.sum()} of {len(status)} images stylised", warnings=warnings)
        return result
    columns = {name: np.asarray(table.column(name).to_pylist(), dtype=np.float64)[ok]
               for name in ("change", "edge_correlation", "colour_shift", "style_loss_ratio", "content_loss",
                            "texture_to_style", "texture_from_input", "blotch")
               if name in table.column_names}
    styles = np.asarray(table.column("style").to_pylist())[ok]
    nearest = np.asarray(table.column("palette_style").to_pylist())[ok]
    for name, values in columns.items():
        finite = values[np.isfinite(values)]
        if len(finite):
            result[name] = round(float(finite.mean()), 4)
    result["palette_match"] = round(float((nearest == styles).mean()), 4)
    result["per_style"] = {
        recipe.styles[k].name: {"rows": int((styles == k).sum()),
                                "palette_match": round(float((nearest[styles == k] == k).mean()), 4),
                                "colour_shift": round(float(columns["colour_shift"][styles == k].mean()), 4),
                                **{name: round(float(np.nanmean(columns[name][styles == k])), 4)
                                   for name in ("texture_to_style", "blotch")
                                   if name in columns and np.isfinite(columns[name][styles == k]).any()}}
        for k in range(len(recipe.styles)) if (styles == k).any()
    }
    rows = int(ok.sum())
    missed = {  # a figure's warning needs its rows to be significantly past the goal, not a small sample's luck
        "change": mean_below(columns.get("change", []), GOALS["change"]),
        "edge_correlation": mean_below(columns.get("edge_correlation", []), GOALS["edge_correlation"]),
        "palette_match": share_below(int((nearest == styles).sum()), rows, GOALS["palette_match"]),
        "texture_to_style": mean_above(columns.get("texture_to_style", []), TEXTURE_GOAL),
        "blotch": mean_above(columns.get("blotch", []), BLOTCH_GOAL),
    }
    for name, goal in {**GOALS, "texture_to_style": TEXTURE_GOAL, "blotch": BLOTCH_GOAL}.items():
        if missed[name]:
            warnings.append({
                "change": f"outputs barely differ from their inputs (mean change {result[name]:.3f} < {goal}"
                          f"{in_rows(rows)}): train longer or raise loss.style_weight",
                "edge_correlation": f"outputs lose their inputs' edges (correlation {result[name]:.2f} < {goal}"
                                    f"{in_rows(rows)}): raise loss.content_weight",
                "palette_match": f"only {result[name]:.0%} of outputs take their own style's palette (< {goal:.0%}"
                                 f"{in_rows(rows)}): the styles are not told apart; train longer",
                "texture_to_style": f"outputs keep their inputs' texture (texture distance to the style "
                                    f"x{result[name]:.2f} of the input's > {goal}{in_rows(rows)}): at most a "
                                    "recolouring; set loss.centred true or raise loss.style_weight",
                "blotch": f"outputs have smooth patches of change in flat regions (blotch {result[name]:.3f} > "
                          f"{goal}{in_rows(rows)}): raise loss.blotch_weight, or give VGG-19 weights",
            }[name])
    summary = (f"{int(ok.sum())} of {len(status)} stylised; change {result['change']:.3f}, edges kept "
               f"{result['edge_correlation']:.2f}, colour shift toward the style {result['colour_shift']:+.2f}, "
               f"own palette {result['palette_match']:.0%}")
    if "style_loss_ratio" in result:
        summary += f", style loss x{result['style_loss_ratio']:.2f} of the input's"
    if "texture_to_style" in result:
        summary += f", texture x{result['texture_to_style']:.2f} of the input's distance to the style"
    if "blotch" in result:
        summary += f", blotch {result['blotch']:.3f}"
    result.update(summary=summary, warnings=warnings)
    return result
