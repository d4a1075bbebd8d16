"""What shows a music dataset: the demo's first pieces as .mid and .wav beside it, and piano rolls.

    write_examples: called by `raygen demo` (gen_jobs.demo) through the family's DemoDefaults.examples
    preview:        the dataset card's picture (gen_jobs.card), through the family's `preview`
"""

from __future__ import annotations

import io

import numpy as np

from gen_jobs import storage
from gen_jobs.family import Preview

PIXELS_PER_SECOND = 48
COUNT = 3


def piano_roll(midi: bytes) -> np.ndarray:
    """uint8 image (pitch rows, high at the top; time columns): notes bright on dark, a line every octave."""
    import symusic

    from gen_jobs.families.music.analysis import Notes

    notes = Notes.of(symusic.Score.from_midi(midi))
    low, high = (int(notes.pitch.min()) - 2, int(notes.pitch.max()) + 2) if len(notes) else (48, 72)
    width = max(1, int(np.ceil(notes.end() * PIXELS_PER_SECOND)) + 1)
    roll = np.full((high - low + 1, width), 24, dtype=np.uint8)
    for c in range(low, high + 1):
        if c % 12 == 0:  # every C
            roll[high - c, :] = 48
    for onset, duration, pitch in zip(notes.onset, notes.duration, notes.pitch):
        start = int(onset * PIXELS_PER_SECOND)
        end = max(start + 1, int((onset + duration) * PIXELS_PER_SECOND) - 1)  # a gap shows repeated notes
        roll[high - pitch, start:end] = 230
    return np.repeat(roll, 4, axis=0)  # 4 pixels a semitone: readable at 1:1


def write_examples(dataset: str, out: str, name: str) -> list[str]:
    """OUT/<name>_<k>.mid and .wav for the first COUNT pieces, and OUT/<name>_piano_roll.png of the first."""
    from PIL import Image

    from gen_jobs.families.music.analysis import Notes
    from gen_jobs.families.music.audio import find_soundfont, render_wav
    from gen_jobs.manifest import read_manifest, read_shards

    import symusic

    manifest = read_manifest(dataset)
    audio = manifest.recipe.get("audio", {})
    table = read_shards(dataset, manifest.shards, ["id", "midi"], max_rows=COUNT)
    written = []
    for row_id, midi in list(zip(table.column("id").to_pylist(), table.column("midi").to_pylist()))[:COUNT]:
        base = storage.join(out, f"{name}_{row_id}")
        storage.write_bytes_atomic(base + ".mid", midi)
        wav = render_wav(midi, Notes.of(symusic.Score.from_midi(midi)), audio.get("sample_rate", 22_050),
                         find_soundfont(audio.get("soundfont")))  # an installed General MIDI SoundFont if any
        storage.write_bytes_atomic(base + ".wav", wav)
        written += [base + ".mid", base + ".wav"]
    buf = io.BytesIO()
    Image.fromarray(piano_roll(table.column("midi")[0].as_py())).save(buf, format="PNG")
    roll = storage.join(out, f"{name}_piano_roll.png")
    storage.write_bytes_atomic(roll, buf.getvalue())
    return written + [roll]


def preview(dataset: str, manifest) -> Preview:
    """Piano rolls of the first COUNT pieces, one above the other (pitch up, time to the right)."""
    from gen_jobs.images import png_bytes
    from gen_jobs.manifest import read_shards

    table = read_shards(dataset, manifest.shards, ["midi"], max_rows=COUNT)
    rolls = [piano_roll(m) for m in table.column("midi").to_pylist()[:COUNT] if m]
    if not rolls:
        return Preview()
    width = max(r.shape[1] for r in rolls)
    gap = np.full((6, width), 120, dtype=np.uint8)
    stacked = []
    for roll in rolls:
        stacked += [np.pad(roll, ((0, 0), (0, width - roll.shape[1])), constant_values=24), gap]
    return Preview(png_bytes(np.concatenate(stacked[:-1])),
                   f"piano rolls of the first {len(rolls)} pieces: pitch up, time to the right, a line at every C")
