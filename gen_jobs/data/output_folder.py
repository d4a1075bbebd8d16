"""Whose files are in a dataset folder, and what a run may do with them.

    used by gen_jobs.generate, under the folder's lease (gen_jobs.core.lease)

raygen deletes or replaces only files it can prove are its own:
  - shards: exactly named `part-NNNNN.parquet` (directly in the folder, or in a two-hex-digit
    folder of the --spread-keys layout), a regular file (never a link),
    whose name this folder's manifest or pending record lists, or whose Parquet
    footer carries raygen's tag (a listed shard that is damaged is still
    raygen's, and is rewritten);
  - its temporaries (`.part-NNNNN.parquet.<32 hex>.tmp`, the same for state files) and lease leftovers;
  - on S3, unfinished multipart uploads of shards (a run killed while streaming a large shard);
  - its state files (`_manifest.json`, `_shards.parquet`, `_progress-NNNNNN.parquet`, `_pending.json`,
    `_lease.json`, `_card.json`), when
    their content is raygen's (raygens_state_file) or they lie among raygen's shards;
  - its dataset card (README.md, quality.json, card-*.png: gen_jobs.quality.card), only while each
    file's bytes are the ones `_card.json` records: a card file edited since is the user's.
Anything else is the user's: a folder holding such files is refused, even
with --overwrite, and nothing in it is touched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from gen_jobs.core import storage
from gen_jobs.core.errors import UserError
from gen_jobs.data import card_record as card
from gen_jobs.data.card_record import CARD_RECORD
from gen_jobs.data.manifest import (
    LEASE,
    MANIFEST,
    PENDING,
    PROGRESS,
    SHARD_LIST,
    SHARD_LIST_LIMIT,
    SHARD_PATH,
    SPREAD_FOLDER,
    STATE_FILE_LIMIT,
    DamagedStateFile,
    DatasetIdentity,
    Manifest,
    dataset_files,
    read_manifest,
    read_pending,
    read_shard_list,
    shard_tag,
)

# storage.write_bytes_atomic's temporaries of shards and state files, and the lease's leftovers
TEMPORARY = re.compile(r"^\.(part-\d{5,}\.parquet|_manifest\.json|_shards\.parquet|_progress-\d{6,}\.parquet|_pending\.json"
                       r"|_lease\.json|_card\.json|README\.md"
                       r"|quality\.json|card-samples\.png|card-training\.png)\.[0-9a-f]{32}\.(tmp|stale)$")
STATE_FILES = (MANIFEST, SHARD_LIST, PENDING, LEASE, CARD_RECORD)


def _is_temporary(path: str) -> bool:
    """A temporary of raygen's: directly in the folder, or a shard's in a spread layout's folder."""
    folder, _, name = path.rpartition("/")
    return bool(TEMPORARY.match(name)) and (not folder or name.startswith(".part-"))


@dataclass
class Survey:
    """A dataset folder's files, sorted by whose they are."""

    shards: dict[str, str] = field(default_factory=dict)  # raygen's shards: name -> URI
    sizes: dict[str, int] = field(default_factory=dict)  # raygen's shards: name -> bytes, from the listing
    temporaries: list[str] = field(default_factory=list)  # raygen's leftovers of earlier runs (URIs)
    card: list[str] = field(default_factory=list)  # raygen's dataset card, as it wrote it (URIs)
    progress: list[str] = field(default_factory=list)  # pieces of an unfinished run's record (names: PROGRESS)
    foreign: list[str] = field(default_factory=list)  # names of everything else


def raygens_state_file(uri: str, name: str) -> bool:
    """Whether a state file's content is one raygen writes (of any version), read bounded and never through a link.

    What a file says of itself is the proof raygen has: its JSON identity fields
    (family and seed), its shard list's tag, its card record's shape.
    """
    try:
        raw = storage.read_small_file(uri, STATE_FILE_LIMIT if name.endswith(".json") else SHARD_LIST_LIMIT, name)
    except UserError:  # a link, a folder, past the bound
        return False
    if raw is None:
        return True  # gone since the listing: nothing of anyone's to delete
    if name == SHARD_LIST or PROGRESS.match(name):
        try:
            read_shard_list(raw)
        except ValueError:
            return False
        return True
    try:
        data = json.loads(raw)
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    if name == CARD_RECORD:
        return card.is_record(data)
    if name == LEASE:
        return "run_id" in data
    return "family" in data and "seed" in data  # a manifest or pending record, however damaged its values


def survey(out: str, recorded: set[str], parsed: frozenset[str] = frozenset()) -> Survey:
    """Sort the files directly in `out`; `recorded`: the shard names its state files list; `parsed`: the state
    files already read as raygen's (read_state), which are not read again."""
    result = Survey()
    card_record = card.recorded(out)
    if card_record:
        parsed |= {CARD_RECORD}
    state_files = []
    for name, size in dataset_files(out).items():  # name: the path inside `out` (a spread shard's has a folder)
        uri = storage.join(out, name)
        if size is None:
            result.foreign.append(f"{name} (a symbolic link)")
        elif name in STATE_FILES or PROGRESS.match(name):
            state_files.append(name)
        elif _is_temporary(name):
            result.temporaries.append(uri)
        elif SHARD_PATH.match(name) and (name in recorded or shard_tag(uri) is not None):
            result.shards[name] = uri
            result.sizes[name] = size
        elif name in card.CARD_FILES and card.is_raygens(out, name, card_record):
            result.card.append(uri)
        elif name in card.CARD_FILES and name in card_record:
            result.foreign.append(f"{name} (edited since raygen wrote it)")
        else:
            result.foreign.append(name)
    # A state file is raygen's when it says so, or when it lies among raygen's own shards (damaged in place:
    # raygen's writes are atomic, but a disk or an editor is not).
    for name in state_files:
        if not result.shards and name not in parsed and not raygens_state_file(storage.join(out, name), name):
            result.foreign.append(f"{name} (not written by raygen)")
        elif PROGRESS.match(name):
            result.progress.append(name)
    return result


@dataclass
class State:
    manifest: Manifest | None
    previous: DatasetIdentity | None  # what the folder's manifest or pending record says was being made
    damaged: list[DamagedStateFile]
    recorded: set[str]  # shard names that the folder's state files list
    parsed: frozenset[str]  # the state files read as raygen's (MANIFEST, PENDING)


def read_state(out: str) -> State:
    damaged, recorded = [], set()
    try:
        manifest = read_manifest(out)
    except DamagedStateFile as e:
        manifest, recorded = None, set(e.recorded)
        damaged.append(e)
    if manifest is not None:
        recorded = {e.file for e in manifest.shards}
    try:
        pending = read_pending(out)
    except DamagedStateFile as e:
        pending = None
        damaged.append(e)
    if pending is not None:
        recorded |= {pending.shard_name(k) for k in range(pending.num_shards)}
    previous = manifest.identity() if manifest is not None else pending
    parsed = frozenset(name for name, read in ((MANIFEST, manifest), (PENDING, pending)) if read is not None)
    return State(manifest, previous, damaged, recorded, parsed)


def prepare(out: str, identity: DatasetIdentity, resume: bool, overwrite: bool, log=print) -> tuple[Manifest | None, Survey]:
    """Check what is at `out` against the request and clear what may be cleared.

    Returns the manifest to resume from (None when starting afresh) and the folder's survey.
    Raises UserError, touching nothing, when the request does not fit the folder.
    """
    state = read_state(out)
    found = survey(out, state.recorded, state.parsed)
    if found.foreign:  # (first: no other message may suggest --overwrite for such a folder)
        shown = ", ".join(found.foreign[:5]) + (f" and {len(found.foreign) - 5} more" if len(found.foreign) > 5 else "")
        raise UserError(f"{out} holds files that are not raygen's ({shown}); raygen writes a dataset only into a "
                        f"folder of its own and never deletes what is not its own: choose an empty --out "
                        f"(for example {storage.join(out, 'dataset')})")
    if state.damaged and not (resume or overwrite):
        raise UserError(f"{state.damaged[0]}; pass --resume to rebuild it from the shards (each one is checked) "
                        "or --overwrite to start again")
    if overwrite:
        for uri in [*found.temporaries, *found.shards.values(), *found.card, storage.join(out, card.CARD_RECORD),
                    *(storage.join(out, name) for name in found.progress),
                    storage.join(out, MANIFEST), storage.join(out, SHARD_LIST), storage.join(out, PENDING)]:
            storage.delete_file(uri)
        storage.remove_empty_folders(out, SPREAD_FOLDER)  # a spread layout's folders, once raygen's files are gone
        abort_stale_uploads(out, log)
        return None, Survey()
    for problem in state.damaged:
        log(f"warning: {problem}; rebuilding it from the shards, each checked against this run")
    if state.previous is None and found.shards and not resume:
        raise UserError(f"{out} holds raygen shards but no manifest (an unfinished run); pass --resume to "
                        "complete it, --overwrite to replace it, or choose another --out")
    if state.previous is not None and not resume:
        what = "a complete dataset" if state.manifest else "an unfinished dataset"
        raise UserError(f"{out} already holds {what}; pass --resume to complete it, --overwrite to replace it, "
                        "or choose another --out")
    if state.previous is not None:
        diff = identity.differences(state.previous)
        if diff:
            raise UserError(f"refusing to resume {out}: it was made with a different {', '.join(diff)}; "
                            "pass --overwrite to replace it or choose another --out (the existing data was left as it was)")
    for uri in found.temporaries:  # leftovers of a run that died (the lease says none is live); only once accepted
        storage.delete_file(uri)
    abort_stale_uploads(out, log)
    return state.manifest, found


def abort_stale_uploads(out: str, log=print) -> None:
    """S3: abort the unfinished multipart uploads of shards a dead run left (S3 keeps, and bills, their parts)."""
    aborted = storage.abort_stale_uploads(out, SHARD_PATH)
    if aborted:
        log(f"aborted {aborted} unfinished upload(s) of shards that an earlier run left in {out}")
