"""What a request's own inputs may cost a replica: primers (MIDI, MusicXML, .mxl) and uploaded images, under the limits.

The probes are the ones of the review that found them: a small .mxl that
inflates to many elements, entity declarations, a 16-bit image far larger
decoded than on the wire. Each is refused from what it declares, in
milliseconds, with the limit named; a score that passes the counts and still
parses too long is killed at its deadline in a child process.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gen_jobs.core.errors import UserError
from gen_jobs.data.images import decode_rgb, decoding_cost
from serving.config import Limits
from serving.primer import PrimerTooCostly, check_musicxml, parse_in_child, parse_midi, parse_primer, running_parsers

LIMITS = Limits()
HEAD = (b'<?xml version="1.0"?><score-partwise><part-list><score-part id="P1"><part-name>x</part-name></score-part>'
        b'</part-list><part id="P1"><measure number="1"><attributes><divisions>1</divisions></attributes>')
NOTE = b"<note><pitch><step>C</step><octave>4</octave></pitch><duration>1</duration></note>"
TAIL = b"</measure></part></score-partwise>"


def mxl(xml: bytes) -> bytes:
    """A compressed MusicXML file holding `xml`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("score.xml", xml)
    return buf.getvalue()


def chorale_mxl() -> bytes:
    from music21 import corpus

    return Path(str(corpus.getWork("bach/bwv269"))).read_bytes()


def test_a_chorale_primer_parses_in_a_child_to_the_same_midi_as_in_process():
    from gen_jobs.families.music.data import parse_primer as parse_in_process

    data = chorale_mxl()
    assert asyncio.run(parse_primer(data, LIMITS)) == parse_in_process(data)
    assert running_parsers() == 0


@pytest.mark.parametrize("primer,says", [
    (mxl(HEAD + b" " * 3_000_000 + TAIL), "inflates to more than 2,000,000 bytes"),  # ~3 KB on the wire
    (mxl(HEAD + NOTE + b"<print/>" * 16_000 + TAIL), "more than 10,000 XML elements"),  # the review's probe: ~500 bytes
    (HEAD + b"<note/>" * 4_001 + TAIL, "more than 4,000 notes"),
    (b'<score-partwise><part id="P1">' + b"".join(b'<measure number="%d">%s</measure>' % (i, NOTE) for i in range(1_001))
     + b"</part></score-partwise>", "more than 1,000 measures"),
    (b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
     b"<score-partwise>&b;</score-partwise>", "declares XML entities"),
    (b"<score-partwise><part>", "not well-formed"),
    (b"PK\x03\x04 not really a zip", "not a readable .mxl archive"),
])
def test_a_costly_or_broken_musicxml_primer_is_refused_before_music21_sees_it(primer, says):
    started = time.perf_counter()
    with pytest.raises(UserError, match=says):
        check_musicxml(primer, LIMITS)
    assert time.perf_counter() - started < 1.0  # counted by expat, not parsed by music21


def test_too_many_parts_are_refused():
    parts = b"".join(b'<part id="P%d"><measure number="1">%s</measure></part>' % (i, NOTE) for i in range(17))
    with pytest.raises(PrimerTooCostly, match=r"more than 16 parts; .* \(limits.max_primer_parts\): send fewer parts"):
        check_musicxml(b"<score-partwise>" + parts + b"</score-partwise>", LIMITS)


def test_a_midi_primer_with_too_many_notes_is_refused_and_a_small_one_parses():
    import symusic

    score = symusic.Score(480)
    track = symusic.Track(name="t", program=0)
    for i in range(5_000):
        track.notes.append(symusic.Note(i * 10, 10, 60 + i % 12, 80))
    score.tracks.append(track)
    with pytest.raises(PrimerTooCostly, match=r"5,000 notes.*4,000 \(limits.max_primer_notes\)"):
        parse_midi(score.dumps_midi(), LIMITS.max_primer_notes)
    assert symusic.Score.from_midi(parse_midi(score.dumps_midi(), 5_000)).note_num() == 5_000


def test_a_primer_that_parses_too_long_is_killed_at_its_deadline():
    slow = HEAD + NOTE + b"<print/>" * 9_000 + TAIL  # under every count; music21 takes seconds on it
    check_musicxml(slow, LIMITS)
    started = time.perf_counter()
    with pytest.raises(PrimerTooCostly, match=r"longer than 0.5 s \(limits.primer_timeout_s\)"):
        asyncio.run(parse_in_child(slow, 0.5))
    assert time.perf_counter() - started < 2.0
    assert running_parsers() == 0  # killed, not left running


def test_a_child_that_finds_no_notes_says_so():
    with pytest.raises(UserError, match="no notes"):
        asyncio.run(parse_in_child(HEAD + TAIL, 30))


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_decoding_cost_is_read_from_the_header_in_decoded_pixels_and_bytes():
    sixteen_bit = png_bytes(Image.new("I;16", (3000, 2000)))  # small on the wire, 12 MB decoded
    assert len(sixteen_bit) < 100_000
    assert decoding_cost(sixteen_bit, 10**9) == (6_000_000, 12_000_000)
    assert decoding_cost(png_bytes(Image.new("RGBA", (30, 20))), 10**9) == (600, 2_400)
    photo = io.BytesIO()
    Image.new("RGB", (4000, 3000), (90, 120, 30)).save(photo, format="JPEG")
    # Decoded at half scale (the smallest JPEG scale still holding the 1,000,000-pixel fit), then shrunk.
    assert decoding_cost(photo.getvalue(), 1_000_000) == (2000 * 1500, 3 * 2000 * 1500)
    assert decoding_cost(photo.getvalue(), 10**9) == (4000 * 3000, 3 * 4000 * 3000)
    assert decode_rgb(photo.getvalue(), 1_000_000, 50_000_000).shape == (866, 1154, 3)


def test_the_style_sampler_takes_decoded_pixels_as_it_takes_the_file(style_checkpoint):
    """The edits route decodes an image once and hands the sampler its pixels for all n rows: same rows as from bytes."""
    from gen_jobs.families.style.sampler import Sampler

    rng = np.random.default_rng(0)
    data = png_bytes(Image.fromarray(rng.integers(0, 255, (30, 41, 3), dtype=np.uint8)))
    sampler = Sampler(style_checkpoint)
    limits = sampler.recipe.stylize
    pixels = decode_rgb(data, limits.max_pixels, limits.max_input_pixels)
    inputs = np.empty(3, dtype=object)
    inputs[:] = [data, pixels, pixels]
    out = sampler({"seed": np.arange(3), "input": inputs, "label": np.array([1, 1, 1])})
    assert list(out["status"]) == ["ok"] * 3
    assert all(np.array_equal(out["image"][0], image) for image in out["image"][1:])


def test_a_requests_prompts_are_tokenised_once_and_give_the_rows_of_untokenised_prompts(gpt_checkpoint):
    """The route checks a prompt's length by tokenising it; the sampler then takes those ids, not the text again."""
    from gen_jobs.families.gpt.sampler import Sampler
    from serving.apis.text import CompletionRequest, rows

    sampler = Sampler(gpt_checkpoint)
    request = CompletionRequest(model="m", prompt=["The with statement", "A list"], n=2, max_tokens=6, seed=3)
    batch = asyncio.run(rows(sampler, request, LIMITS))
    calls = []
    tokenize = sampler.tokenizer.__class__.__call__

    def counted(self, *args, **kwargs):
        calls.append(args[0] if args else kwargs)
        return tokenize(self, *args, **kwargs)

    sampler.tokenizer.__class__.__call__ = counted
    try:
        served = sampler(batch)
    finally:
        sampler.tokenizer.__class__.__call__ = tokenize
    assert calls == []  # the rows carry their prompt ids: nothing is tokenised a second time
    plain = sampler({key: batch[key] for key in batch if key != "prompt_ids"})  # the text alone, tokenised here
    assert list(served["text"]) == list(plain["text"]) and "prompt_ids" not in served


def test_a_shards_first_rows_are_read_without_the_rest_of_it(tmp_path):
    """A card's preview reads the rows it shows: a shard whose later row groups are damaged still previews."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gen_jobs.data.manifest import ShardEntry, read_shards

    path = tmp_path / "part-00000.parquet"
    pq.write_table(pa.table({"id": np.arange(4000), "blob": [os.urandom(256) for _ in range(4000)]}), path,
                   row_group_size=1000, compression="none")
    data = bytearray(path.read_bytes())
    second = pq.ParquetFile(path).metadata.row_group(1).column(1).data_page_offset
    data[second + 64: second + 20_000] = os.urandom(20_000 - 64)  # row groups 2 and on: garbage
    path.write_bytes(bytes(data))
    entry = ShardEntry(file="part-00000.parquet", first_id=0, rows=4000, sha256="0" * 64)
    first = read_shards(str(tmp_path), [entry], ["id", "blob"], max_rows=10)
    assert first.column("id").to_pylist() == list(range(10))
    with pytest.raises(Exception):  # reading the whole shard meets the damage
        read_shards(str(tmp_path), [entry], ["id", "blob"]).column("blob").to_pylist()
