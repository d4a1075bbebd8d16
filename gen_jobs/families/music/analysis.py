"""What a piece is, in numbers: its notes, estimated key, in-key share, density and intervals.

Key: Krumhansl-Kessler key profiles correlated with the piece's duration-weighted
pitch-class histogram, best of the 24 major and minor keys (the classic
Krumhansl-Schmuckler method). In-key share: the duration-weighted share of
notes whose pitch class is in that key's scale (major, or harmonic minor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NAMES = ["C", "C#", "D", "E-", "E", "F", "F#", "G", "A-", "A", "B-", "B"]
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
HARMONIC_MINOR_SCALE = (0, 2, 3, 5, 7, 8, 11)


@dataclass
class Notes:
    """A piece's notes in seconds (N each), in onset order."""

    onset: np.ndarray
    duration: np.ndarray
    pitch: np.ndarray

    @classmethod
    def of(cls, score) -> "Notes":
        """The notes of a symusic Score, every track."""
        seconds = score.to("second")
        rows = sorted((n.time, n.duration, n.pitch) for t in seconds.tracks for n in t.notes)
        if not rows:
            return cls(np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64))
        onset, duration, pitch = (np.array(c) for c in zip(*rows))
        return cls(onset.astype(np.float64), duration.astype(np.float64), pitch.astype(np.int64))

    def __len__(self) -> int:
        return len(self.pitch)

    def pitch_classes(self) -> np.ndarray:
        """Duration-weighted pitch-class histogram (12), summing to 1 (zeros for no notes)."""
        hist = np.bincount(self.pitch % 12, weights=np.maximum(self.duration, 1e-3), minlength=12)
        return hist / hist.sum() if hist.sum() > 0 else hist

    def end(self) -> float:
        return float((self.onset + self.duration).max()) if len(self) else 0.0


def estimate_key(hist: np.ndarray) -> tuple[int, str]:
    """(tonic pitch class, "major" or "minor") of the best-correlated key profile."""
    if not hist.any():
        return 0, "major"
    best, key = -2.0, (0, "major")
    for tonic in range(12):
        for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
            r = float(np.corrcoef(hist, np.roll(profile, tonic))[0, 1])
            if r > best:
                best, key = r, (tonic, mode)
    return key


def key_name(key: tuple[int, str]) -> str:
    return f"{NAMES[key[0]]} {key[1]}"


def in_key_share(notes: Notes, key: tuple[int, str]) -> float:
    """Duration-weighted share of the notes whose pitch class is in the key's scale."""
    if not len(notes):
        return 0.0
    scale = MAJOR_SCALE if key[1] == "major" else HARMONIC_MINOR_SCALE
    inside = np.isin((notes.pitch - key[0]) % 12, scale)
    weights = np.maximum(notes.duration, 1e-3)
    return float(weights[inside].sum() / weights.sum())


def describe(notes: Notes) -> dict[str, float]:
    """Per-piece figures: notes per second, pitch range, mean inter-onset interval (s), in-key share."""
    key = estimate_key(notes.pitch_classes())
    onsets = np.unique(notes.onset)
    return {
        "notes_per_second": len(notes) / notes.end() if notes.end() > 0 else 0.0,
        "pitch_range": float(notes.pitch.max() - notes.pitch.min()) if len(notes) else 0.0,
        "inter_onset_s": float(np.diff(onsets).mean()) if len(onsets) > 1 else 0.0,
        "in_key_share": in_key_share(notes, key),
    }
