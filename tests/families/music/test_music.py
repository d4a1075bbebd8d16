"""The music family: tokens, corpora, sampling, MIDI and WAV output, generation on Ray, bad input."""

from __future__ import annotations

import io
import os
import wave

import mido
import numpy as np
import pytest
import symusic
import torch

from conftest import read_rows, run_cli
from gen_jobs.core.errors import UserError
from gen_jobs.core.recipes import load_recipe
from gen_jobs.families.music.analysis import Notes, estimate_key, key_name
from gen_jobs.families.music.audio import find_soundfont
from gen_jobs.families.music.data import load_corpus, music21_to_midi
from gen_jobs.families.music.model import build_model, build_tokenizer, decode, encode, save, special_ids
from gen_jobs.families.music.recipe import MusicDataConfig
from gen_jobs.families.music.sampler import Sampler

TINY_MUSIC = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.n_positions=96", "model.dropout=0",
              "sampling.max_new_tokens=64", "train.epochs=1", "generate.batch_size=4", "data.max_files=24"]


def chorale_midi(name: str = "bach/bwv269") -> bytes:
    from music21 import corpus

    return music21_to_midi(corpus.parse(name))


def make_music_checkpoint(folder) -> str:
    """An untrained music checkpoint (random weights, the recipe's tokenizer), written without Ray."""
    recipe = load_recipe("music_chorales", TINY_MUSIC)
    tokenizer = build_tokenizer(recipe.tokenizer)
    torch.manual_seed(0)
    save(folder, recipe, build_model(recipe.model, len(tokenizer), *special_ids(tokenizer)), tokenizer, {"epoch": 0})
    return str(folder)


@pytest.fixture(scope="module")
def music_checkpoint(tmp_path_factory) -> str:
    return make_music_checkpoint(tmp_path_factory.mktemp("music") / "ckpt")


def test_a_chorale_survives_tokenising_at_the_tokenizers_resolution():
    recipe = load_recipe("music_chorales")
    tokenizer = build_tokenizer(recipe.tokenizer)
    midi = chorale_midi()
    original = Notes.of(symusic.Score.from_midi(midi))
    back = Notes.of(decode(tokenizer, encode(tokenizer, midi)))
    assert len(back) == len(original) > 100
    step = 1 / recipe.tokenizer.positions_per_beat / 2  # seconds per grid step at 120 beats a minute
    assert np.array_equal(back.pitch, original.pitch)
    assert np.abs(back.onset - original.onset).max() <= step / 2 + 1e-9
    assert np.abs(back.duration - original.duration).max() <= 2 * step  # long notes land on a coarser grid
    assert key_name(estimate_key(original.pitch_classes())) == key_name(estimate_key(back.pitch_classes()))


def test_files_that_do_not_parse_are_skipped_and_counted(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "good.mid").write_bytes(chorale_midi())
    (folder / "corrupt.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    (folder / "empty.midi").write_bytes(b"")
    (folder / "broken.musicxml").write_text("<score-partwise><part>")
    (folder / "notes.txt").write_text("not music, not counted")
    corpus = load_corpus(MusicDataConfig(source=str(folder)))
    assert corpus.names == ["sub/good.mid"]
    assert sorted(s.split(":")[0] for s in corpus.skipped) == ["broken.musicxml", "corrupt.mid", "empty.midi"]
    (folder / "sub" / "good.mid").unlink()
    with pytest.raises(UserError, match="holds no pieces .*3 files did not parse"):
        load_corpus(MusicDataConfig(source=str(folder)))
    with pytest.raises(UserError, match="does not exist"):
        load_corpus(MusicDataConfig(source=str(tmp_path / "nowhere")))


def test_pieces_are_playable_midi_and_a_row_does_not_depend_on_its_batch(music_checkpoint):
    sampler = Sampler(music_checkpoint)
    seeds = np.array([5, 6, 7, 8], dtype=np.int64)
    batch = sampler({"id": np.arange(4), "seed": seeds})
    alone = sampler({"id": np.arange(1), "seed": seeds[2:3]})
    assert alone["midi"][0] == batch["midi"][2] and list(alone["tokens"][0]) == list(batch["tokens"][2])
    for midi, count in zip(batch["midi"], batch["num_notes"]):
        f = mido.MidiFile(file=io.BytesIO(midi))
        assert sum(m.type == "note_on" and m.velocity > 0 for t in f.tracks for m in t) == count
    assert (batch["duration_s"] >= 0).all() and set(batch["finish_reason"]) <= {"stop", "length"}


def test_audio_is_valid_wav_and_the_same_bytes_every_time(music_checkpoint):
    recipe = load_recipe("music_chorales", [*TINY_MUSIC, "audio.enabled=true", "audio.sample_rate=8000"])
    first = Sampler(music_checkpoint, recipe=recipe)({"id": np.arange(2), "seed": np.array([1, 2], dtype=np.int64)})
    again = Sampler(music_checkpoint, recipe=recipe)({"id": np.arange(2), "seed": np.array([1, 2], dtype=np.int64)})
    assert list(first["audio"]) == list(again["audio"])
    with wave.open(io.BytesIO(first["audio"][0])) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        assert w.getnframes() >= int(first["duration_s"][0] * 8000)


def test_a_music_dataset_with_audio_is_the_same_with_one_or_two_workers_and_datasets_reads_it(
        ray_cluster, music_checkpoint, tmp_path):
    import datasets

    from gen_jobs.generate import GenerateArgs, generate

    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        generate(GenerateArgs(checkpoint=music_checkpoint, out=str(out), num_samples=6, rows_per_shard=2,
                              workers=workers, options={"audio": True, "sample_rate": 8000}), log=lambda _: None)
        outs.append(out)
    for k in range(3):
        name = f"part-{k:05d}.parquet"
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    table = read_rows(outs[0])
    assert table.column_names == ["id", "seed", "midi", "num_notes", "duration_s", "key", "in_key", "tokens",
                                  "num_primer_tokens", "copied_tokens", "copy", "finish_reason", "audio"]
    ds = datasets.load_dataset("parquet", data_files=str(outs[0] / "*.parquet"), split="train")
    assert isinstance(ds.features["audio"], datasets.Audio) and ds.features["midi"].dtype == "binary"
    row = ds.cast_column("audio", datasets.Audio(decode=False))[0]  # decoding needs torchcodec and FFmpeg
    with wave.open(io.BytesIO(row["audio"]["bytes"])) as w:
        assert w.getframerate() == 8000
    assert row["tokens"] == table.column("tokens")[0].as_py()


@pytest.mark.skipif(find_soundfont(None) is None, reason="no General MIDI SoundFont installed (Debian: fluid-soundfont-gm)")
def test_a_soundfont_renders_the_same_wav_every_time(music_checkpoint):
    recipe = load_recipe("music_chorales", [*TINY_MUSIC, "audio.enabled=true", "audio.sample_rate=16000"]).for_dataset()
    assert recipe.audio.soundfont == find_soundfont(None)  # named in the identity, so a resume renders the same
    seeds = {"id": np.arange(1), "seed": np.array([1], dtype=np.int64), "prompt": np.array(["corpus:bach/bwv269"])}
    first = Sampler(music_checkpoint, recipe=recipe)(seeds)["audio"][0]
    assert first == Sampler(music_checkpoint, recipe=recipe)(seeds)["audio"][0]
    with wave.open(io.BytesIO(first)) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        assert w.getframerate() == 16000 and np.abs(samples).max() > 10_000  # sound, peak-normalised


@pytest.mark.parametrize("args, message", [
    (["--audio", "--sample-rate", "4000"], "sample_rate"),
    (["--audio", "--soundfont", "/nonexistent.sf2"], "SoundFont /nonexistent.sf2 does not exist"),
    (["--sample-rate", "16000"], "add --audio"),
])
def test_bad_audio_settings_are_one_line_errors(music_checkpoint, tmp_path, args, message):
    result = run_cli("generate", "--checkpoint", music_checkpoint, "--out", str(tmp_path / "o"), "--num-samples", "2",
                     *args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_file_that_is_not_a_soundfont_and_audio_for_another_family(music_checkpoint, random_checkpoint, tmp_path):
    fake = tmp_path / "fake.sf2"
    fake.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    result = run_cli("generate", "--checkpoint", music_checkpoint, "--out", str(tmp_path / "o"), "--num-samples", "2",
                     "--audio", "--soundfont", str(fake))
    assert result.returncode == 2 and "is not a SoundFont" in result.stderr
    result = run_cli("generate", "--checkpoint", random_checkpoint, "--out", str(tmp_path / "o"), "--num-samples", "2",
                     "--audio")
    assert result.returncode == 2 and "--audio is an option of music models; " + random_checkpoint + " is a dcgan model" in result.stderr


def test_a_long_primer_is_cut_or_refused_as_the_recipe_says(music_checkpoint):
    primer = chorale_midi()  # ~560 tokens, far more than this model's context of 96
    whole = [*TINY_MUSIC, "sampling.primer_bars=null"]
    sampler = Sampler(music_checkpoint, recipe=load_recipe("music_chorales", whole))
    out = sampler({"id": np.arange(1), "seed": np.array([3]), "prompt": np.array([primer], dtype=object)})
    assert len(out["tokens"][0]) <= sampler.context
    strict = Sampler(music_checkpoint, recipe=load_recipe("music_chorales", [*whole, "sampling.long_prompts=error"]))
    with pytest.raises(UserError, match="the primer has .* tokens"):
        strict({"id": np.arange(1), "seed": np.array([3]), "prompt": np.array([primer], dtype=object)})


def test_primers_named_in_a_prompts_file_start_their_pieces_and_are_in_the_identity(music_checkpoint, tmp_path):
    import json

    from gen_jobs.generate import GenerateArgs, plan
    from test_verify import write_dataset

    (tmp_path / "primers").mkdir()
    (tmp_path / "primers" / "a.mid").write_bytes(chorale_midi("bach/bwv269"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["primers/a.mid", "corpus:bach/bwv347", None]))
    args = GenerateArgs(checkpoint=music_checkpoint, out=str(tmp_path / "data"), prompts=str(prompts),
                        samples_per_prompt=2, rows_per_shard=4, set=["sampling.primer_bars=1"])
    planned = plan(args)
    identity = planned.identity
    write_dataset(planned, args.out)
    rows = read_rows(tmp_path / "data").to_pylist()
    sampler = Sampler(music_checkpoint, recipe=load_recipe("music_chorales", [*TINY_MUSIC, "sampling.primer_bars=1"]))
    for row, primer in zip(rows, [chorale_midi("bach/bwv269")] * 2 + ["corpus:bach/bwv347"] * 2 + [None] * 2):
        expected = sampler.prompt_ids([primer], [64])[0][1:]  # (its first bar, fitted to the context)
        assert len(expected) > 8 or primer is None
        assert row["tokens"][: len(expected)] == expected  # the piece begins with its primer
    assert rows[0]["tokens"] != rows[1]["tokens"]  # two samples of one primer differ after it
    (tmp_path / "primers" / "a.mid").write_bytes(chorale_midi("bach/bwv153.1"))  # the named file changes
    assert plan(args).identity.digest() != identity.digest()
    prompts.write_text(json.dumps({"prompt": "primers/missing.mid"}))
    with pytest.raises(UserError, match="names .*missing.mid, which does not exist"):
        plan(args)


@pytest.mark.slow
def test_training_on_chorales_lowers_the_held_out_loss(ray_cluster, tmp_path):
    import json

    from gen_jobs.train import train

    recipe = load_recipe("music_chorales", ["model.n_layer=2", "model.n_embd=64", "model.n_positions=128",
                                            "sampling.max_new_tokens=64", "train.epochs=3", "data.max_files=40",
                                            "data.transpose=[-1, 1]", "train.checkpoint_every=1"])
    ckpt = train(recipe, str(tmp_path / "runs"), "music", workers=2, gpu=False)
    losses = []
    for folder in sorted((tmp_path / "runs" / "music").glob("checkpoint_*-*")):
        losses.append(json.loads((folder / "raygen.json").read_text())["metrics"]["held_out_loss"])
    assert len(losses) >= 2 and losses[-1] < losses[0] < np.log(len(build_tokenizer(recipe.tokenizer)))
    out = Sampler(ckpt)({"id": np.arange(2), "seed": np.array([1, 2], dtype=np.int64)})
    assert all(n > 0 for n in out["num_notes"])


def test_a_piece_that_copies_the_corpus_is_flagged_and_its_primer_is_not_counted():
    from gen_jobs.families.music.data import load_corpus
    from gen_jobs.families.music.model import build_tokenizer, encode
    from gen_jobs.families.music.sampler import copied_columns

    recipe = load_recipe("music_chorales")
    tokenizer = build_tokenizer(recipe.tokenizer)
    corpus = load_corpus(recipe.data)
    chorale = encode(tokenizer, corpus.midi[10])
    rng = np.random.default_rng(0)
    noise = rng.integers(5, len(tokenizer), 120).tolist()
    pieces = [
        np.array(noise, dtype=np.int32),  # nothing copied
        np.array(chorale[:150], dtype=np.int32),  # 150 tokens of a chorale, verbatim
        np.array(chorale[:150] + noise, dtype=np.int32),  # the same 150 tokens as a primer, then new tokens
    ]
    columns = copied_columns(pieces, np.array([0, 0, 150]), recipe)
    copied = columns["copied_tokens"].to_pylist()
    assert copied[0] == 0 and copied[1] >= 150 > recipe.quality.copy_tokens and copied[2] < 8 + 8
    assert columns["copy"].to_pylist() == [False, True, False]


def test_pieces_stuck_on_one_pitch_warn_while_chorales_do_not_at_any_number_of_rows():
    from gen_jobs.families.music.quality import score_pieces

    recipe = load_recipe("music_chorales")
    tokenizer = build_tokenizer(recipe.tokenizer)
    corpus = load_corpus(recipe.data).midi
    reference, held_out = corpus[:60], corpus[200:]

    def one_pitch(seconds: int = 16) -> bytes:
        score = symusic.Score(480)
        track = symusic.Track()
        for beat in range(seconds * 2):
            track.notes.append(symusic.Note(beat * 240, 200, 60, 80))
        score.tracks.append(track)
        return score.dumps_midi()

    for rows in (10, 60):  # held-out chorales stand in for a healthy model: no warning at either size
        pieces = (held_out * 2)[:rows]
        said = score_pieces(pieces, [encode(tokenizer, m) for m in pieces], reference, tokenizer, 256)
        assert not any("pitch classes" in w for w in said["warnings"]), said["summary"]
    stuck = [one_pitch()] * 30
    said = score_pieces(stuck, [encode(tokenizer, m) for m in stuck], reference, tokenizer, 256)
    assert any(w.startswith("the pieces' pitch classes are further from the corpus's than random tokens'")
               and w.endswith("few pitches; train longer or raise the temperature") for w in said["warnings"])


def test_music21s_pickle_cache_is_never_loaded_nor_written(tmp_path):
    """A pickle planted under the name music21 would compute for a corpus piece must not run (with forceSource
    music21 neither loads nor writes one)."""
    import gzip
    import pickle

    from music21 import corpus as m21corpus
    from music21.converter import PickleFilter

    from gen_jobs.families.music.data import corpus_piece, parse_primer

    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    source = m21corpus.getWork("bach/bwv269")
    _, _, planted = PickleFilter(source).status()
    if planted is None:
        pytest.skip("music21 has no writable scratch folder here: it caches nothing")
    planted.parent.mkdir(parents=True, exist_ok=True)
    try:
        planted.write_bytes(gzip.compress(pickle.dumps(Payload())))
        assert corpus_piece("bach/bwv269")[:4] == b"MThd"
        assert parse_primer(source.read_bytes() if source.suffix != ".mxl" else source.read_bytes())[:4] == b"MThd"
        assert not marker.exists()
    finally:
        planted.unlink(missing_ok=True)
