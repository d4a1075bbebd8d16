"""MIDI -> WAV, deterministically: the same piece and settings give the same bytes every time.

Two renderers:
  General MIDI instruments, when a SoundFont is given (`audio.soundfont`,
  `raygen generate --soundfont PATH`) or Debian's fluid-soundfont-gm is installed:
  symusic's own SoundFont synthesiser (prestosynth; no external process);
  otherwise a small NumPy additive synthesiser: three harmonics per note with a
  short attack and an exponential decay, mixed and peak-normalised.
Either way the output is 16-bit mono PCM WAV at the recipe's sample rate.
"""

from __future__ import annotations

import functools
import io
import wave
from pathlib import Path

import numpy as np

from gen_jobs.core.errors import UserError
from gen_jobs.families.music.analysis import Notes

INSTALLED_SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/soundfonts/FluidR3_GM.sf2")
TAIL_S = 0.5  # silence after the last note ends, for the release


def find_soundfont(path: str | None) -> str | None:
    """The SoundFont to use: `path` (checked), else an installed General MIDI one, else None (NumPy synth)."""
    if path is not None:
        check_soundfont(path)
        return path
    return next((p for p in INSTALLED_SOUNDFONTS if Path(p).is_file()), None)


def check_soundfont(path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"SoundFont {path} does not exist: give a General MIDI .sf2 file (Debian: fluid-soundfont-gm)")
    with p.open("rb") as f:
        head = f.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise UserError(f"{path} is not a SoundFont (.sf2): its header is not RIFF/sfbk")


def synthesize(notes: Notes, sample_rate: int) -> np.ndarray:
    """float32 mono samples of `notes` (additive synthesis), peak-normalised to 0.8."""
    total = int(np.ceil((notes.end() + TAIL_S) * sample_rate)) if len(notes) else int(TAIL_S * sample_rate)
    out = np.zeros(total, dtype=np.float64)
    attack = int(0.01 * sample_rate)
    for onset, duration, pitch in zip(notes.onset, notes.duration, notes.pitch):
        start = int(round(onset * sample_rate))
        length = max(1, int(round((duration + 0.05) * sample_rate)))  # 50 ms release past the note's end
        t = np.arange(length) / sample_rate
        freq = 440.0 * 2.0 ** ((pitch - 69) / 12)
        tone = np.sin(2 * np.pi * freq * t) + 0.5 * np.sin(4 * np.pi * freq * t) + 0.25 * np.sin(6 * np.pi * freq * t)
        envelope = np.exp(-3.0 * t / max(duration, 0.05))
        envelope[:attack] *= np.linspace(0.0, 1.0, min(attack, length))
        end = min(start + length, total)
        out[start:end] += (tone * envelope)[: end - start]
    peak = np.abs(out).max()
    return (out * (0.8 / peak) if peak > 0 else out).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _synthesizer(soundfont: str, sample_rate: int):
    """One loaded SoundFont per (file, rate) and process: a General MIDI one is ~150 MB."""
    import symusic

    return symusic.Synthesizer(sf_path=soundfont, sample_rate=sample_rate)


def render_soundfont(midi: bytes, soundfont: str, sample_rate: int) -> np.ndarray:
    """float32 mono samples of a MIDI file through a SoundFont (symusic's synthesiser)."""
    import symusic

    score = symusic.Score.from_midi(midi)
    if score.note_num() == 0:  # a piece without notes is silence (the synthesiser refuses an empty score)
        return np.zeros(int(TAIL_S * sample_rate), dtype=np.float32)
    audio = np.asarray(_synthesizer(soundfont, sample_rate).render(score, stereo=False), dtype=np.float32)
    audio = audio.reshape(-1) if audio.ndim == 1 or audio.shape[0] == 1 else audio.mean(axis=0)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    return audio * (0.8 / peak) if peak > 0 else audio


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit mono PCM WAV."""
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def render_wav(midi: bytes, notes: Notes, sample_rate: int, soundfont: str | None) -> bytes:
    samples = render_soundfont(midi, soundfont, sample_rate) if soundfont else synthesize(notes, sample_rate)
    return wav_bytes(samples, sample_rate)
