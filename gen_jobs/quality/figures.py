"""Pictures a person reads without a legend: piano rolls with time and pitch axes, image grids with column titles.

Drawn with matplotlib's Agg backend (no display on a cluster), PNG bytes out, no timestamps in
the file (the same rows give the same bytes).
"""

from __future__ import annotations

import io

import numpy as np

DPI = 100
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def note_name(pitch: int) -> str:
    """MIDI pitch -> scientific pitch name (60 -> C4)."""
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


def piano_rolls_png(rolls: list[tuple[np.ndarray, int, float]], titles: list[str]) -> bytes:
    """One panel per roll: (image (pitches, time columns), its lowest pitch, seconds it spans).

    Time in seconds along the bottom, pitch names (every C) up the side.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(rolls), 1, figsize=(9, 2.2 * len(rolls)), squeeze=False)
    for ax, (roll, low, seconds), title in zip(axes[:, 0], rolls, titles):
        high = low + roll.shape[0] - 1
        ax.imshow(roll, cmap="gray", vmin=0, vmax=255, aspect="auto", interpolation="nearest",
                  extent=(0, seconds, low - 0.5, high + 0.5))
        cs = [p for p in range(low, high + 1) if p % 12 == 0] or [low]
        ax.set_yticks(cs, [note_name(p) for p in cs])
        ax.set_ylabel("pitch", fontsize=8)
        ax.set_title(title, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("seconds", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def titled_grid_png(rows: list[list[np.ndarray]], column_titles: list[str]) -> bytes:
    """A grid of RGB pictures (uint8 (H, W, 3), all one size), one row per list, each column headed by its
    title; every picture is drawn pixel for pixel (a 256-pixel picture stays 256 pixels, not resampled)."""
    plt = _pyplot()
    h, w = rows[0][0].shape[:2]
    gap, title = 6, 24  # pixels between pictures, and above them for the titles
    width = len(column_titles) * (w + gap) + gap
    height = title + len(rows) * (h + gap)
    fig = plt.figure(figsize=(width / DPI, height / DPI))
    for r, pictures in enumerate(rows):
        for c, picture in enumerate(pictures):
            left, bottom = gap + c * (w + gap), height - title - r * (h + gap) - h
            ax = fig.add_axes((left / width, bottom / height, w / width, h / height))
            ax.imshow(picture, interpolation="nearest")
            ax.axis("off")
            if r == 0:
                ax.set_title(column_titles[c], fontsize=10, pad=4)
    return _png(fig)
