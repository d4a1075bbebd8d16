"""What shows a music dataset: the demo's first pieces as .mid and .wav beside it, and piano rolls.

    write_examples: called by `raygen demo` (gen_jobs.demo) through the family's DemoDefaults.examples
    preview:        the dataset card's picture (gen_jobs.quality.card), through the family's `preview`
"""

from __future__ import annotations

import numpy as np

from gen_jobs.core import storage
from gen_jobs.core.family import Preview

PIXELS_PER_SECOND = 48
COUNT = 3


def piano_roll(midi: bytes) -> tuple[np.ndarray, int, float]:
    """(uint8 image: one row per pitch, high at the top, PIXELS_PER_SECOND columns a second; notes bright
    on dark, a line at every C), its lowest pitch, the seconds it spans."""
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
    return roll, low, width / PIXELS_PER_SECOND


def piano_rolls_png(midis: list[bytes], ids: list[int]) -> bytes:
    from gen_jobs.quality.figures import piano_rolls_png as draw

    return draw([piano_roll(m) for m in midis], [f"piece {i}" for i in ids])


def write_examples(dataset: str, out: str, name: str) -> list[str]:
    """OUT/<name>_<k>.mid and .wav for the first COUNT pieces, and OUT/<name>_piano_roll.png of the first."""
    import symusic

    from gen_jobs.data.manifest import read_manifest, read_shards
    from gen_jobs.families.music.analysis import Notes
    from gen_jobs.families.music.audio import find_soundfont, render_wav

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
    roll = storage.join(out, f"{name}_piano_roll.png")
    storage.write_bytes_atomic(roll, piano_rolls_png([table.column("midi")[0].as_py()], table.column("id").to_pylist()[:1]))
    return written + [roll]


def preview(dataset: str, manifest) -> Preview:
    """Piano rolls of the first COUNT pieces, one above the other (pitch up, time to the right)."""
    from gen_jobs.data.manifest import read_shards

    table = read_shards(dataset, manifest.shards, ["id", "midi"], max_rows=COUNT)
    shown = [(i, m) for i, m in zip(table.column("id").to_pylist(), table.column("midi").to_pylist())][:COUNT]
    shown = [(i, m) for i, m in shown if m]
    if not shown:
        return Preview()
    return Preview(piano_rolls_png([m for _, m in shown], [i for i, _ in shown]),
                   f"piano rolls of the first {len(shown)} pieces: time in seconds, pitch up (a line at every C)")
