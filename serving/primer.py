"""A request's music primer -> one-track MIDI, at a bounded cost (serving.config.Limits `max_primer_*`).

    await parse_primer(data, limits)      in a model replica (serving.apis.music)
    python -m serving.primer              the child process that parses one MusicXML score (stdin -> stdout)
    running_parsers()                     how many such children run now (tests, bench/serve_hostile.py)

A MIDI primer is parsed by symusic (C++, milliseconds) and its notes counted.
A MusicXML primer costs far more: music21 spends seconds on a small file of
many elements. So before music21 sees it, the XML is inflated (a `.mxl` zip)
only up to `max_primer_bytes` and its elements, notes, parts and measures are
counted by expat (linear, C, stops at the first limit passed); entity
declarations are refused (no "billion laughs"). Then music21 parses it in a
child process at low priority, with a memory cap, killed at
`primer_timeout_s`: a score that passes the counts and still costs too much
ends that process, never the replica. One such child per replica at a time.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import zipfile
from xml.parsers import expat

from gen_jobs.core.errors import UserError

CHILD_MEMORY_BYTES = 2 * 2**30  # music21 on a 2 MB score needs a few hundred MB
CHILD_NICENESS = 10  # the replica's sampler comes first
_parsing = asyncio.Semaphore(1)  # (bound to the replica's event loop at first use)


class PrimerTooCostly(UserError):
    """A primer above one of the server's limits; the message names the limit."""


async def parse_primer(data: bytes, limits) -> bytes:
    """The primer file's bytes (MIDI, MusicXML or .mxl) -> one-track MIDI; UserError says why not."""
    if data[:4] == b"MThd":
        return await asyncio.to_thread(parse_midi, data, limits.max_primer_notes)
    xml = await asyncio.to_thread(check_musicxml, data, limits)
    async with _parsing:
        return await parse_in_child(xml, limits.primer_timeout_s)


def parse_midi(data: bytes, max_notes: int) -> bytes:
    """A MIDI primer -> one-track MIDI, parsed once; PrimerTooCostly past `max_notes` notes."""
    from gen_jobs.families.music.data import one_track_midi, read_midi

    score = read_midi(data)
    notes = score.note_num()
    if notes > max_notes:
        raise PrimerTooCostly(f"the primer has {notes:,} notes; this server accepts at most {max_notes:,} "
                              "(limits.max_primer_notes): send its first bars")
    return one_track_midi(score)


def check_musicxml(data: bytes, limits) -> bytes:
    """The primer's MusicXML text (inflated from .mxl), after checking what parsing it would cost."""
    xml = inflate(data, limits.max_primer_bytes) if data[:2] == b"PK" else data
    if len(xml) > limits.max_primer_bytes:
        raise PrimerTooCostly(f"the primer has {len(xml):,} bytes of MusicXML; this server accepts at most "
                              f"{limits.max_primer_bytes:,} (limits.max_primer_bytes)")
    count_elements(xml, limits)
    return xml


def inflate(data: bytes, max_bytes: int) -> bytes:
    """The score inside a compressed MusicXML (.mxl) file, read no further than max_bytes + 1."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = [n for n in archive.namelist() if not n.startswith("META-INF/") and n.lower().endswith((".xml", ".musicxml"))]
        if not names:
            raise UserError("the .mxl archive holds no .xml or .musicxml score")
        with archive.open(names[0]) as score:  # inflated in pieces: a zip's declared sizes can lie
            xml = score.read(max_bytes + 1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError, ValueError) as e:
        raise UserError(f"not a readable .mxl archive ({type(e).__name__}: {e})") from None
    if len(xml) > max_bytes:
        raise PrimerTooCostly(f"the primer's score inflates to more than {max_bytes:,} bytes; this server accepts at "
                              "most that (limits.max_primer_bytes)")
    return xml


def count_elements(xml: bytes, limits) -> None:
    """PrimerTooCostly at the first limit passed (elements, notes, parts, measures); UserError if it is not XML."""
    counts = {"elements": 0, "note": 0, "part": 0, "measure": 0}
    caps = {"elements": ("XML elements", limits.max_primer_elements), "note": ("notes", limits.max_primer_notes),
            "part": ("parts", limits.max_primer_parts), "measure": ("measures", limits.max_primer_measures)}

    def over(kind: str) -> None:
        what, cap = caps[kind]
        name = {"elements": "max_primer_elements", "note": "max_primer_notes", "part": "max_primer_parts",
                "measure": "max_primer_measures"}[kind]
        fix = "send fewer parts" if kind == "part" else "send its first bars"
        raise PrimerTooCostly(f"the primer has more than {cap:,} {what}; this server accepts at most {cap:,} "
                              f"(limits.{name}): {fix}")

    def start(tag: str, _attributes) -> None:
        counts["elements"] += 1
        if counts["elements"] > limits.max_primer_elements:
            over("elements")
        if tag in ("note", "part", "measure"):
            counts[tag] += 1
            if counts[tag] > caps[tag][1]:
                over(tag)

    def entity(*_args) -> None:
        raise UserError("the primer declares XML entities, which MusicXML does not need; remove them")

    parser = expat.ParserCreate()
    parser.StartElementHandler = start
    parser.EntityDeclHandler = entity
    try:
        parser.Parse(xml, True)
    except expat.ExpatError as e:
        raise UserError(f"not a MusicXML score (not well-formed XML: {e})") from None


async def parse_in_child(xml: bytes, timeout_s: float) -> bytes:
    """MusicXML text -> one-track MIDI, parsed by `python -m serving.primer` (killed after timeout_s)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # this process's packages
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "serving.primer", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env)
    try:
        midi, problem = await asyncio.wait_for(child.communicate(xml), timeout_s)
    except (asyncio.TimeoutError, asyncio.CancelledError) as e:
        child.kill()
        await child.wait()
        if isinstance(e, asyncio.CancelledError):
            raise
        raise PrimerTooCostly(f"parsing the primer took longer than {timeout_s:g} s (limits.primer_timeout_s); "
                              "send a shorter score, or its first bars as MIDI") from None
    if child.returncode == 2:  # the child's UserError: its message is for the client
        raise UserError(problem.decode(errors="replace").strip()[:300])
    if child.returncode != 0:
        raise RuntimeError(f"the primer parser exited with {child.returncode}: {problem.decode(errors='replace')[-500:]}")
    return midi


def running_parsers() -> int:
    """How many `python -m serving.primer` children run on this machine now (none must outlive its request)."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                count += b"serving.primer" in f.read()
        except OSError:  # gone since the listing
            pass
    return count


def main() -> int:
    """The child: MusicXML on stdin -> one-track MIDI on stdout; a UserError's message on stderr, exit 2."""
    import resource

    os.nice(CHILD_NICENESS)
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
    from gen_jobs.families.music.data import parse_file

    xml = sys.stdin.buffer.read()
    try:
        midi = parse_file("primer.musicxml", xml)
    except UserError as e:
        sys.stderr.write(str(e))
        return 2
    except MemoryError:
        sys.stderr.write(f"parsing the primer needs more than {CHILD_MEMORY_BYTES // 2**30} GiB of memory")
        return 2
    sys.stdout.buffer.write(midi)
    return 0


if __name__ == "__main__":
    sys.exit(main())
