"""Music corpora -> symusic Scores with all voices in one track.

    music21:bach-chorales   the 371 Bach chorales bundled in the music21 wheel (nothing downloaded)
    FOLDER or s3://PREFIX   every .mid/.midi/.xml/.mxl/.musicxml under it, in sorted order

A file that fails to parse is skipped and counted (`Corpus.skipped`), never a
crash; a corpus with no piece left is a UserError. Parsing MusicXML with music21
is slow (~0.15 s a chorale), so the bundled chorales are converted once and kept as MIDI bytes in a cache file keyed by music21's version
($RAYGEN_CACHE, default ~/.cache/raygen); the cache is only a copy, rebuilt
when missing or unreadable.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from gen_jobs.core import storage
from gen_jobs.core.errors import UserError
from gen_jobs.families.music.recipe import MusicDataConfig

BACH = "music21:bach-chorales"
MIDI_SUFFIXES = (".mid", ".midi")
SCORE_SUFFIXES = (".xml", ".mxl", ".musicxml")
TICKS_PER_BEAT = 480
DEFAULT_VELOCITY = 80  # scores without dynamics (the chorales) play at mezzo-forte


@dataclass
class Corpus:
    names: list[str]
    midi: list[bytes]  # one-track standard MIDI files, in `names` order
    skipped: list[str] = field(default_factory=list)  # "name: why" of each file that did not parse

    def scores(self) -> list:
        import symusic

        return [symusic.Score.from_midi(m) for m in self.midi]


def load_corpus(cfg: MusicDataConfig) -> Corpus:
    corpus = _bach_chorales(cfg.max_files) if cfg.source == BACH else _user_corpus(cfg.source)
    if cfg.max_files:
        corpus = Corpus(corpus.names[: cfg.max_files], corpus.midi[: cfg.max_files], corpus.skipped)
    if not corpus.midi:
        why = f" ({len(corpus.skipped)} files did not parse, e.g. {corpus.skipped[0]})" if corpus.skipped else ""
        raise UserError(f"the music corpus {cfg.source} holds no pieces{why}: give a folder or s3:// prefix of "
                        f"{', '.join(MIDI_SUFFIXES + SCORE_SUFFIXES)} files")
    return corpus


def split_pieces(items: list, held_out: float) -> tuple[list, list]:
    """(training, held-out): every round(1/held_out)-th piece is held out, the rest train."""
    every = max(2, round(1 / held_out))
    held = items[every - 1:: every]
    train = [x for i, x in enumerate(items) if (i + 1) % every]
    if not held:
        raise UserError(f"the corpus has {len(items)} pieces: too few to hold out one in {every}; add pieces")
    return train, held


# ---------------------------------------------------------------- conversion


def one_track(score):
    """All pitched notes of a symusic Score in one track (drums dropped), sorted by onset then pitch."""
    import symusic

    out = symusic.Score(score.ticks_per_quarter)
    out.tempos = score.tempos
    out.time_signatures = score.time_signatures
    track = symusic.Track(name="voices", program=0)
    notes = [n for t in score.tracks if not t.is_drum for n in t.notes]
    notes.sort(key=lambda n: (n.time, n.pitch, n.duration))
    for n in notes:
        track.notes.append(n)
    out.tracks.append(track)
    return out


def music21_to_midi(stream) -> bytes:
    """A music21 score -> a one-track MIDI file (ties merged; offsets in beats -> ticks)."""
    import symusic

    score = symusic.Score(TICKS_PER_BEAT)
    track = symusic.Track(name="voices", program=0)
    notes = []
    for part in stream.parts or [stream]:
        for n in part.stripTies().flatten().notes:
            start = int(round(float(n.offset) * TICKS_PER_BEAT))
            length = max(1, int(round(float(n.quarterLength) * TICKS_PER_BEAT)))
            for p in n.pitches:
                notes.append(symusic.Note(start, length, int(p.midi), DEFAULT_VELOCITY))
    notes.sort(key=lambda n: (n.time, n.pitch, n.duration))
    for n in notes:
        track.notes.append(n)
    score.tracks.append(track)
    return score.dumps_midi()


def _chorale_midi(name: str) -> bytes | str:
    """One bundled chorale as MIDI bytes, or why it failed."""
    try:
        from music21 import corpus

        return music21_to_midi(corpus.parse(name, forceSource=True))  # never music21's pickle cache (see parse_file)
    except Exception as e:  # noqa: BLE001 - any parse failure is a skipped piece, reported by name
        return f"{type(e).__name__}: {e}"


def _convert_all(names: list[str], processes: int) -> list[bytes | str]:
    """_chorale_midi of every name, in order, on up to `processes` processes (parsing is CPU-bound)."""
    if processes < 2 or len(names) < 32:
        return [_chorale_midi(name) for name in names]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the caller may be a process with threads (Ray's), which fork does not copy safely.
    with ProcessPoolExecutor(min(processes, 8), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_chorale_midi, names, chunksize=8))


def _cache_folder() -> Path:
    return Path(os.environ.get("RAYGEN_CACHE") or Path.home() / ".cache" / "raygen")


def _bach_chorales(limit: int | None = None) -> Corpus:
    """The bundled chorales, from the cache; without one, the first `limit` are converted (all: then cached)."""
    import music21
    import pyarrow as pa
    import pyarrow.parquet as pq

    cache = _cache_folder() / f"bach-chorales-music21-{music21.__version__}.parquet"
    try:
        table = pq.read_table(cache)
        skipped = json.loads((table.schema.metadata or {})[b"skipped"])
        return Corpus(table.column("name").to_pylist(), table.column("midi").to_pylist(), skipped)
    except (OSError, KeyError, ValueError, pa.ArrowInvalid):  # (ValueError: also bad JSON)
        pass  # no cache yet, or a damaged one: convert again
    from music21.corpus.chorales import Iterator

    names = list(Iterator(returnType="filename"))
    partial = limit is not None and limit < len(names)
    if partial:  # a few pieces (tests, trials): converted, not cached
        names = names[:limit]
    else:
        print(f"converting the {len(names)} bundled Bach chorales from MusicXML once (~30 s on 2 cores; cached in {cache})",
              flush=True)
    results = _convert_all(names, processes=1 if partial else (os.cpu_count() or 1))
    corpus = Corpus([], [])
    for name, result in zip(names, results):
        if isinstance(result, bytes):
            corpus.names.append(name)
            corpus.midi.append(result)
        else:
            corpus.skipped.append(f"{name}: {result}")
    if partial:
        return corpus
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache.parent, prefix=".bach-", suffix=".tmp", delete=False) as tmp:
        table = pa.table({"name": corpus.names, "midi": pa.array(corpus.midi, pa.binary())})
        pq.write_table(table.replace_schema_metadata({"skipped": json.dumps(corpus.skipped)}), tmp)
    os.replace(tmp.name, cache)
    return corpus


def _user_corpus(uri: str) -> Corpus:
    if not storage.exists(uri):
        raise UserError(f"music corpus {uri} does not exist: give a folder or s3:// prefix of MIDI or MusicXML files, "
                        f"or {BACH}")
    folder = storage.is_dir(uri)
    names = storage.list_names(uri, recursive=True) if folder else [uri.rstrip("/").rsplit("/", 1)[-1]]
    corpus = Corpus([], [])
    for name in sorted(n for n in names if n.lower().endswith(MIDI_SUFFIXES + SCORE_SUFFIXES)):
        f = storage.join(uri, name) if folder else uri
        try:
            corpus.midi.append(parse_file(f, storage.read_bytes(f)))
            corpus.names.append(name)
        except UserError as e:
            corpus.skipped.append(f"{name}: {e}")
    return corpus


CORPUS_PREFIX = "corpus:"  # a prompt naming a piece of the bundled corpus: corpus:bach/bwv269


def corpus_piece(name: str) -> bytes:
    """A bundled music21 corpus piece (e.g. bach/bwv269) as a one-track MIDI file."""
    from music21 import corpus

    try:
        return music21_to_midi(corpus.parse(name, forceSource=True))  # never music21's pickle cache (see parse_file)
    except Exception as e:  # noqa: BLE001 - music21 raises its own types for unknown names
        raise UserError(f"{CORPUS_PREFIX}{name} is not a piece of music21's bundled corpus ({type(e).__name__}); "
                        f"use e.g. {CORPUS_PREFIX}bach/bwv269") from e


def parse_primer(data: bytes) -> bytes:
    """A primer file's bytes (MIDI, MusicXML or compressed .mxl, told apart by their first bytes) -> one-track MIDI."""
    if data[:4] == b"MThd":
        return parse_file("primer.mid", data)
    return parse_file("primer.mxl" if data[:2] == b"PK" else "primer.musicxml", data)


def read_midi(data: bytes):
    """A MIDI file's bytes -> a symusic Score; UserError if it is not a MIDI file."""
    import symusic

    try:
        return symusic.Score.from_midi(data)
    except Exception as e:  # noqa: BLE001 - symusic raises plain RuntimeErrors for any malformed file
        raise UserError(f"not a MIDI file ({e})") from e


def one_track_midi(score) -> bytes:
    """A parsed MIDI score -> a one-track MIDI file (one_track); UserError if it has no notes."""
    merged = one_track(score)
    if merged.note_num() == 0:
        raise UserError("no notes")
    return merged.dumps_midi()


def parse_file(name: str, data: bytes) -> bytes:
    """A MIDI or MusicXML file's bytes -> a one-track MIDI file with notes; UserError if it is not one."""
    if name.lower().endswith(MIDI_SUFFIXES):
        return one_track_midi(read_midi(data))
    import symusic
    from music21 import converter  # (seconds to import: only for MusicXML)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("score" + Path(name).suffix.lower())
        path.write_bytes(data)
        try:
            # forceSource: music21 would otherwise load a pickle from its shared scratch folder (code anyone
            # who can write there chose) and leave one behind for every primer.
            midi = music21_to_midi(converter.parse(str(path), forceSource=True))
        except Exception as e:  # noqa: BLE001 - music21 raises many types for malformed scores
            raise UserError(f"not a MusicXML score ({type(e).__name__}: {e})") from e
    if symusic.Score.from_midi(midi).note_num() == 0:
        raise UserError("no notes")
    return midi
