"""One live run per dataset folder: an exclusive lease with a run id, a heartbeat and an expiry.

    used by gen_jobs.generate: `with Lease(out, take_over=args.resume or args.overwrite): ...`

The lease is `OUT/_lease.json` ({run_id, host, pid, started, heartbeat}).
It is created atomically (local: O_CREAT | O_EXCL; S3: a conditional PUT with
If-None-Match: *), so of two runs started together exactly one gets it; the
other is refused with a message naming the holder. While the run lives, a
background thread renews the heartbeat every HEARTBEAT_S seconds (S3: a PUT
with If-Match on the lease's ETag, so a run that lost its lease finds out).

A lease is stale once its heartbeat is older than EXPIRES_S, or at once when
its holder was a process on this machine that no longer exists (a killed
driver). Only `--resume` or `--overwrite` take a stale lease over (atomically:
a rename aside locally, an If-Match PUT on S3); a plain run refuses, since the
folder holds someone's unfinished work.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from pydantic import BaseModel, ValidationError

from gen_jobs.core import storage
from gen_jobs.core.errors import UserError

LEASE = "_lease.json"
HEARTBEAT_S = 10.0
LEASE_LIMIT = 64 * 1024  # bytes: a lease record is ~200
EXPIRES_S = 60.0


class LeaseRecord(BaseModel):
    run_id: str
    host: str
    pid: int
    started: float
    heartbeat: float
    machine: str = ""  # this_machine() of the holder: hostname, boot and PID namespace ("" from older runs)

    def stale(self, now: float) -> bool:
        if now - self.heartbeat > EXPIRES_S:
            return True
        # A pid means the same process only on the same boot of the same machine, in the same PID
        # namespace: containers can share a hostname, and each has its own pid 1, 2, ...
        return bool(self.machine) and self.machine == this_machine() and not _process_alive(self.pid)

    def describe(self, now: float) -> str:
        return f"run {self.run_id[:8]} (pid {self.pid} on {self.host}, last heartbeat {now - self.heartbeat:.0f} s ago)"


def this_machine() -> str:
    """Where a pid is meaningful: hostname, boot id and PID namespace (Linux); hostname alone elsewhere."""
    parts = [socket.gethostname()]
    for probe in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                  lambda: os.readlink("/proc/self/ns/pid")):
        try:
            parts.append(probe())
        except OSError:
            parts.append("?")
    return "/".join(parts)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class LeaseLost(UserError):
    """Another run took this run's lease (after this one stopped renewing it)."""


class Lease:
    """The exclusive right to write one dataset folder. A context manager."""

    def __init__(self, out: str, take_over: bool = False):
        self.out = out
        self.uri = storage.join(out, LEASE)
        self.take_over = take_over
        now = time.time()
        self.record = LeaseRecord(run_id=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                                  started=now, heartbeat=now, machine=this_machine())
        self._store = _S3Lease(self.uri) if storage.is_s3(out) else _LocalLease(self.uri)
        self._stop = threading.Event()
        self._renewing = threading.Lock()  # a renewal moves the file aside for a moment: assert_held waits it out
        self._thread: threading.Thread | None = None
        self.lost: str | None = None  # why the lease was lost, once it is

    @property
    def run_id(self) -> str:
        return self.record.run_id

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if self._store.create(self._bytes()):
            self._start_heartbeat()
            return
        current, token = self._store.read()
        now = time.time()
        if current is not None and not current.stale(now):
            raise UserError(f"{self.out} is being written by another raygen run: {current.describe(now)}. "
                            f"Wait for it to finish or stop it; the lease of a run that died expires after "
                            f"{EXPIRES_S:.0f} s, then --resume takes over")
        held_by = "a damaged lease file" if current is None else f"{current.describe(now)}, which stopped"
        if not self.take_over:
            raise UserError(f"{self.out} holds the unfinished work of {held_by}; "
                            "pass --resume to complete it, --overwrite to replace it, or choose another --out")
        if not self._store.replace(token, self._bytes()):
            raise UserError(f"another run took over {self.out} at the same moment; it is writing there now")
        self._start_heartbeat()

    def assert_held(self) -> None:
        """Raise LeaseLost if this run no longer holds the lease (checked before the manifest is written)."""
        with self._renewing:
            current, _ = self._store.read()
        if self.lost is None and (current is None or current.run_id != self.run_id):
            self.lost = "the lease file was replaced"
        if self.lost is not None:
            raise LeaseLost(f"this run lost its lease on {self.out} ({self.lost}); another run may be writing "
                            "there: the manifest was not written")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.lost is None:
            self._store.delete(self.run_id)  # only this run's own lease

    def _bytes(self) -> bytes:
        return self.record.model_dump_json().encode()

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="raygen-lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.record.heartbeat = time.time()
            try:
                with self._renewing:
                    ok = self._store.renew(self.run_id, self._bytes())
            except Exception:  # storage unreachable for a moment (OSError, botocore errors): try again at the next beat
                continue
            if not ok:
                self.lost = "another run took it over"
                return


class _LocalLease:
    """A lease file on a local (or shared POSIX) file system, changed only by atomic renames and links.

    A new lease is written whole to a temporary file of a random name (O_EXCL | O_NOFOLLOW), then
    hard-linked into place: the link fails if a lease exists (create-if-absent), and no reader ever
    sees a half-written lease. Renewing, taking over and releasing first rename the current lease
    aside (one racer wins a rename), check that it is the one expected, and put it back otherwise:
    a compare-and-swap, never a read-then-replace.
    """

    def __init__(self, uri: str):
        self.path = Path(storage.resolve(uri)[1])

    def create(self, data: bytes) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp, f = storage.create_temporary(self.path)
        try:
            with f:
                f.write(data)
            os.link(tmp, self.path, follow_symlinks=False)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def read(self) -> tuple[LeaseRecord | None, object]:
        raw = storage.read_small_file(str(self.path), LEASE_LIMIT, "lease")
        return (None, None) if raw is None else (_parse(raw), raw)

    def _take_aside(self, expected) -> bool:
        """Move the lease away if `expected(bytes)` holds for it; else leave it (or put it back) as it was."""
        aside = self.path.with_name(f".{LEASE}.{uuid.uuid4().hex}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            raw = storage.read_small_file(str(aside), LEASE_LIMIT, "lease")
            if raw is not None and expected(raw):
                return True
            try:  # not the one expected: put it back, unless a new lease appeared meanwhile
                os.link(aside, self.path, follow_symlinks=False)
            except FileExistsError:
                pass
            return False
        finally:
            aside.unlink(missing_ok=True)

    def replace(self, token: object, data: bytes) -> bool:
        """Take over a stale lease (`token`: its bytes as judged), then create ours."""
        if not self.path.exists() and not self.path.is_symlink():
            return self.create(data)
        return self._take_aside(lambda raw: raw == token) and self.create(data)

    def renew(self, run_id: str, data: bytes) -> bool:
        return self._take_aside(lambda raw: _owned_by(raw, run_id)) and self.create(data)

    def delete(self, run_id: str) -> None:
        self._take_aside(lambda raw: _owned_by(raw, run_id))


def _owned_by(raw: bytes, run_id: str) -> bool:
    record = _parse(raw)
    return record is not None and record.run_id == run_id


class _S3Lease:
    """A lease object on S3, changed only by conditional requests (If-None-Match / If-Match)."""

    def __init__(self, uri: str):
        bucket, _, key = uri[len("s3://"):].partition("/")
        self.bucket, self.key = bucket, key
        self.etag: str | None = None
        self.client = storage.s3_client()

    def _put(self, data: bytes, **condition) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, **condition)["ETag"]
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                return False
            raise

    def create(self, data: bytes) -> bool:
        return self._put(data, IfNoneMatch="*")

    def read(self) -> tuple[LeaseRecord | None, object]:
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None, None
            raise
        return _parse(obj["Body"].read()), obj["ETag"]

    def replace(self, token: object, data: bytes) -> bool:
        return self._put(data, IfMatch=token) if token else self.create(data)

    def renew(self, run_id: str, data: bytes) -> bool:
        return self._put(data, IfMatch=self.etag)

    def delete(self, run_id: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except ClientError:
            pass  # someone else's by now, or gone: not ours to delete


def _parse(raw: bytes) -> LeaseRecord | None:
    """The lease record, or None when the file is damaged (treated as stale, never as a crash)."""
    try:
        return LeaseRecord.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        return None
