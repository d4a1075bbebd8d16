"""The music demo's files beside its dataset: the first pieces as .mid and .wav, and a piano roll.

    called by `raygen demo` (gen_jobs.demo) through the family's DemoDefaults.examples
"""

from __future__ import annotations

import io

import numpy as np

from gen_jobs import storage

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
