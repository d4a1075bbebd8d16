"""Storage URIs -> pyarrow filesystems: local paths and `s3://`.

Every byte raygen reads or writes (training data, checkpoints, shards,
manifests) goes through this module, so S3 behaves exactly like a local disk.

S3 uses the standard AWS credential chain (environment, ~/.aws, instance role).
`AWS_ENDPOINT_URL` points it at an S3-compatible store (MinIO, moto, Ceph), and
transient errors are retried by the AWS standard retry strategy.

Local paths are made absolute but never resolved through symbolic links:
raygen writes and deletes the directory entries it names, so a link is
replaced or removed as a link and the file it points to is never touched.
"""

from __future__ import annotations

import atexit
import functools
import gc
import hashlib
import io
import os
import posixpath
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated
from urllib.parse import urlparse

import pyarrow.fs as pafs
from pydantic import AfterValidator

from gen_jobs.core.errors import UserError

SUPPORTED_SCHEMES = ("local path", "file://", "s3://")
# Attempts per S3 request, with the AWS standard strategy's jittered exponential backoff
# (capped at 20 s a wait): about a minute in all, enough to ride out a short outage.
_S3_RETRY_ATTEMPTS = 12


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_variables(uri: str) -> str:
    """`uri` with each `${NAME}` replaced by the environment variable NAME; unset is an error.

    Lets one setting name the bucket for every job and the Serve config on a cluster
    (k8s/storage.yaml's RAYGEN_STORAGE): `--out '${RAYGEN_STORAGE}/datasets/digits'`.
    """
    def value(match: re.Match) -> str:
        name = match.group(1)
        if not os.environ.get(name):
            raise ValueError(f"{uri} names ${{{name}}}, which is not set here: export {name} (on Kubernetes, "
                             "k8s/storage.yaml sets RAYGEN_STORAGE for every pod), or write the URI out")
        return os.environ[name].rstrip("/")

    return _VARIABLE.sub(value, uri)


# A URI argument or config field: `${NAME}` in it is expanded from the environment.
Uri = Annotated[str, AfterValidator(expand_variables)]


def _s3_settings() -> tuple[str | None, str]:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return endpoint, region


def _s3_filesystem() -> pafs.S3FileSystem:
    return _cached_s3_filesystem(*_s3_settings())


@functools.lru_cache(maxsize=8)
def _cached_s3_filesystem(endpoint: str | None, region: str) -> pafs.S3FileSystem:
    """One filesystem (and connection pool) per endpoint and region, not one per call.

    The cached filesystems are dropped and Arrow's S3 layer finalised at exit
    (`_finalize_s3`): an S3FileSystem that outlives the interpreter can abort
    the process as it exits (apache/arrow#41087, #36346), which scripts and
    RayJobs would read as a failure.
    """
    if not _cached_s3_filesystem.cache_info().currsize:
        atexit.register(_finalize_s3)
    kwargs: dict = {
        "region": region,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=_S3_RETRY_ATTEMPTS),
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


def check_lasting(uri: str, what: str) -> None:
    """Refuse a relative local path inside a `ray job submit --working-dir` job.

    Such a job runs in a temporary copy of the working directory that Ray
    deletes afterwards (and that differs per node), so output written there is lost.
    """
    if is_s3(uri) or os.path.isabs(os.path.expanduser(uri)):
        return
    if "runtime_resources" in os.getcwd().split(os.sep) or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        raise UserError(f"{what} {uri!r} is relative, and this job runs in a temporary copy of its working "
                        "directory that Ray deletes: give an absolute path every node shares, or an s3:// URI")


def _finalize_s3() -> None:
    _cached_s3_filesystem.cache_clear()
    gc.collect()
    pafs.ensure_s3_finalized()


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Map a URI to (filesystem, path inside it). Raises UserError on an unknown scheme."""
    if not uri:
        raise UserError("empty storage URI: give a local path or an s3://bucket/prefix URI")
    if is_s3(uri):
        path = uri[len("s3://"):].rstrip("/")
        if not path:
            raise UserError(f"{uri!r} names no bucket: use s3://BUCKET/PREFIX")
        return _s3_filesystem(), path
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise UserError(
            f"unsupported URI scheme {scheme!r} in {uri!r}: use a local path or s3://BUCKET/PREFIX"
        )
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def absolute(uri: str) -> str:
    """The one normal form of a URI, for work that may run in another process or folder (Ray workers):
    local paths absolute with `~` expanded and no trailing slash; S3 without a trailing slash.
    Messages keep the form the user typed."""
    if is_s3(uri):
        return uri.rstrip("/")
    return resolve(uri)[1]


def join(uri: str, *names: str) -> str:
    """The URI of `names` inside the folder `uri`, in `uri`'s form (relative stays relative).

    Each name is a relative path that stays inside the folder: an absolute name or a `..`
    part (a name read from a file a user or an attacker wrote) is refused for every scheme.
    """
    for name in names:
        parts = PurePosixPath(name).parts
        if name.startswith("/") or ".." in parts or os.path.isabs(name):
            raise UserError(f"{name!r} is not a name inside {uri}: it must be a relative path without '..'")
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *names)
    return str(Path(uri).expanduser().joinpath(*names))


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def size(uri: str) -> int:
    """A file's size in bytes."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise UserError(f"{uri} is not a file")
    return int(info.size)


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as e:
        raise UserError(f"{uri} does not exist") from e


def read_chunks(uri: str, size: int = 1 << 20) -> Iterator[bytes]:
    """A file's bytes in pieces of `size`: a digest or a line scan of a large file in bounded memory."""
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            while chunk := f.read(size):
                yield chunk
    except FileNotFoundError as e:
        raise UserError(f"{uri} does not exist") from e


def read_small_file(uri: str, limit: int, what: str) -> bytes | None:
    """A state file's bytes (a manifest, a record), None if there is none. Never follows a local symbolic
    link nor reads past `limit` bytes: a link, a folder, a device or a file over the limit under a state
    file's name is a UserError saying which, not a read of whatever it points at."""
    fs, path = resolve(uri)
    if not is_s3(uri):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            return None
        except OSError as e:  # ELOOP: a symbolic link; EISDIR and the like
            raise UserError(f"{uri} is not a {what} raygen wrote: {'a symbolic link' if os.path.islink(path) else e.strerror}; "
                            "move it away") from e
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder, a device, a pipe
            os.close(fd)
            raise UserError(f"{uri} is not a {what} raygen wrote: not a regular file; move it away")
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return None
        if info.type != pafs.FileType.File or info.size > limit:
            raise UserError(f"{uri} is not a {what} raygen wrote: {'a folder' if info.type != pafs.FileType.File else 'too large'}")
        data = read_bytes(uri)
    if len(data) > limit:
        raise UserError(f"{uri} is not a {what} raygen wrote: over {limit:,} bytes; move it away")
    return data


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write `data` so that `uri` is either absent, its old content, or all of `data` (see AtomicWriter:
    local, a temporary file renamed over the target; S3, one PUT up to S3_PART_BYTES)."""
    with AtomicWriter(uri) as f:
        f.write(data)


def create_temporary(target: Path) -> tuple[Path, io.BufferedWriter]:
    """A new hidden file beside `target`, named at random and created with O_EXCL | O_NOFOLLOW: never an
    existing file, nor a symbolic link someone planted under a name they could guess."""
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    return tmp, os.fdopen(fd, "wb")


# S3 parts of a streamed write: a shard up to this size is one PUT; a larger one is a multipart
# upload in parts of this size (S3's limit of 10,000 parts: objects up to 640 GB).
S3_PART_BYTES = 64 * 2**20


class AtomicWriter(io.RawIOBase):
    """A writable file whose bytes appear at `uri` only when it is closed without an error.

    For files too large to hold in memory (streamed Parquet shards): the bytes go to a
    hidden temporary file beside a local target, renamed over it at the end; to S3 they
    go as one PUT when they fit in S3_PART_BYTES, else as a multipart upload completed
    at the end (an S3 object appears only once whole) and aborted on an error. A
    process killed mid-upload leaves an incomplete upload, which
    `abort_stale_uploads` removes. `sha256` and `size` describe what was written.

        with AtomicWriter(uri) as f:
            f.write(b"...")
    """

    def __init__(self, uri: str):
        super().__init__()
        self.uri = uri
        self.size = 0
        self._hash = hashlib.sha256()
        self._s3 = is_s3(uri)
        self._upload: dict | None = None  # S3 multipart: {"UploadId", "Parts"}
        self._buffer = bytearray()
        if self._s3:
            self._bucket, _, self._key = resolve(uri)[1].partition("/")
        else:
            target = Path(resolve(uri)[1])
            target.parent.mkdir(parents=True, exist_ok=True)
            self._target = target
            self._tmp, self._file = create_temporary(target)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        self._hash.update(data)
        self.size += len(data)
        if not self._s3:
            self._file.write(data)
            return len(data)
        self._buffer += data
        while len(self._buffer) >= S3_PART_BYTES:
            self._send_part(bytes(self._buffer[:S3_PART_BYTES]))
            del self._buffer[:S3_PART_BYTES]
        return len(data)

    def _send_part(self, data: bytes) -> None:
        client = s3_client()
        if self._upload is None:
            started = client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            self._upload = {"UploadId": started["UploadId"], "Parts": []}
        number = len(self._upload["Parts"]) + 1
        answer = client.upload_part(Bucket=self._bucket, Key=self._key, UploadId=self._upload["UploadId"],
                                    PartNumber=number, Body=data)
        self._upload["Parts"].append({"PartNumber": number, "ETag": answer["ETag"]})

    def commit(self) -> None:
        """Make the bytes visible at the URI."""
        if self._s3:
            if self._upload is None:
                s3_client().put_object(Bucket=self._bucket, Key=self._key, Body=bytes(self._buffer))
            else:
                if self._buffer:
                    self._send_part(bytes(self._buffer))
                s3_client().complete_multipart_upload(Bucket=self._bucket, Key=self._key,
                                                      UploadId=self._upload["UploadId"],
                                                      MultipartUpload={"Parts": self._upload["Parts"]})
            self._buffer = bytearray()
        else:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self._target)

    def abort(self) -> None:
        """Leave the URI as it was: drop the temporary file or the incomplete upload."""
        if self._s3:
            self._buffer = bytearray()
            if self._upload is not None:
                try:
                    s3_client().abort_multipart_upload(Bucket=self._bucket, Key=self._key,
                                                       UploadId=self._upload["UploadId"])
                except Exception:  # noqa: BLE001  (S3 unreachable: abort_stale_uploads removes it later)
                    pass
        else:
            self._file.close()
            self._tmp.unlink(missing_ok=True)

    def __exit__(self, kind, error, trace) -> None:
        try:
            if kind is None:
                self.commit()
            else:
                self.abort()
        except BaseException:
            self.abort()
            raise
        finally:
            super().close()


def abort_stale_uploads(uri: str, names: re.Pattern) -> int:
    """Abort the incomplete S3 multipart uploads under a prefix whose paths in it match `names`.

    For a run that holds the folder's lease: any such upload was begun by a run that died
    (AtomicWriter aborts its own on an error), and S3 bills its parts until it is aborted.
    Returns how many were aborted; 0 for a local folder.
    """
    if not is_s3(uri):
        return 0
    bucket, _, prefix = resolve(uri)[1].partition("/")
    prefix = prefix.rstrip("/") + "/"
    client, aborted = s3_client(), 0
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", []):
            name = upload["Key"][len(prefix):]  # the path inside the folder
            if names.match(name):
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted += 1
    return aborted


def delete_file(uri: str) -> None:
    """Delete one file (a symbolic link is removed as a link; its target is left alone)."""
    fs, path = resolve(uri)
    try:
        if is_s3(uri):
            fs.delete_file(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def describe_failure(error: BaseException) -> str | None:
    """One line for an S3 error that the retries did not carry through; None for any other error.

    The S3 error may be `error` itself, one of its causes, or only the text of a Ray worker's
    traceback: Ray Data wraps a UDF's exception in a UserCodeException that keeps the
    original's traceback as text but not the exception (botocore's errors do not travel).
    """
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # boto3 is a dependency; without it no S3 call was made with it
        BotoCoreError = ClientError = ()  # noqa: N806
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error).strip()
        if isinstance(error, (BotoCoreError, ClientError)) or (isinstance(error, OSError) and "AWS Error" in text):
            return _s3_failure_line(text.splitlines()[0])
        # The last matching line of a worker's traceback is the innermost raise.
        worker_lines = [line for line in text.splitlines()
                        if line.lstrip().startswith("botocore.exceptions.") or "AWS Error" in line]
        if worker_lines:
            return _s3_failure_line(worker_lines[-1].strip().removeprefix("botocore.exceptions."))
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


def _s3_failure_line(detail: str) -> str:
    return f"S3 failed after {_S3_RETRY_ATTEMPTS} attempts: {detail[:300]}"


def is_link(uri: str) -> bool:
    """Whether a local path is a symbolic link (S3 has none)."""
    return not is_s3(uri) and os.path.islink(resolve(uri)[1])


@functools.lru_cache(maxsize=1)
def _s3_client(endpoint: str | None, region: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name=region,
                        config=Config(retries={"mode": "standard", "max_attempts": _S3_RETRY_ATTEMPTS}))


def s3_client():
    """A boto3 S3 client with the same endpoint, region and retries as the pyarrow filesystem."""
    return _s3_client(*_s3_settings())


def _inside(folder: str, path: str) -> str:
    """`path`'s name relative to `folder`, both as a filesystem lists them (no slicing by another string's length)."""
    relative = PurePosixPath(path).relative_to(PurePosixPath(folder))
    if not relative.parts or ".." in relative.parts:
        raise UserError(f"{path!r} is not inside {folder!r}")
    return relative.as_posix()


def _listed(uri: str, recursive: bool) -> list[tuple[str, pafs.FileInfo]]:
    """(name relative to the folder, info) of each file (not folder) under a folder/prefix, by name;
    [] if absent. One listing (S3: paginated by pyarrow)."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    return sorted(((_inside(path, i.path), i) for i in infos if i.type == pafs.FileType.File), key=lambda p: p[0])


def list_files(uri: str, recursive: bool = False) -> list[str]:
    """URIs of the files under a folder/prefix, sorted, each `join(uri, name)`: in the form the
    folder was given (a relative folder lists relative paths); [] if it does not exist."""
    return [join(uri, name) for name, _ in _listed(uri, recursive)]


def list_names(uri: str, recursive: bool = False) -> list[str]:
    """Names (paths relative to the folder, `/`-separated) of the files under a folder/prefix, sorted."""
    return [name for name, _ in _listed(uri, recursive)]


def list_stamped(uri: str, recursive: bool = False) -> dict[str, str]:
    """{name inside the folder: stamp} for the files under a folder/prefix, from one listing (see `stamps`)."""
    return {name: _stamp(info) for name, info in _listed(uri, recursive)}


def stamps(uris: list[str]) -> list[str | None]:
    """A cheap fingerprint of each file, "size:modification time (ns)", None where it is gone.

    It sees a file rewritten or replaced without reading it (a local stat, an S3 HEAD);
    the content digest in a dataset's identity is what proves the bytes.
    """
    if not uris:
        return []
    fs, _ = resolve(uris[0])
    infos = fs.get_file_info([resolve(u)[1] for u in uris])
    return [_stamp(i) if i.type == pafs.FileType.File else None for i in infos]


def _stamp(info: pafs.FileInfo) -> str:
    return f"{info.size}:{info.mtime_ns}"


def list_relative(uri: str, recursive: bool = False) -> dict[str, int | None]:
    """{name relative to the folder: size in bytes} of the files in a folder/prefix (`recursive`: and
    below it), by name, from one listing. Local: a symbolic link is listed, not followed, with size
    None, and a linked folder is never entered; so the names are the folder's own, however the
    folder was written (`out/d`, `./out/d/`, `~/d`, an absolute path)."""
    if is_s3(uri):
        return {name: info.size for name, info in _listed(uri, recursive)}
    return dict(sorted(_local_entries(resolve(uri)[1], "", recursive)))


def _local_entries(path: str, prefix: str, recursive: bool):
    """(name, size) of the entries under a local folder, names starting with `prefix`; links not followed."""
    try:
        entries = list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_symlink():
            yield prefix + entry.name, None
        elif entry.is_file(follow_symlinks=False):
            yield prefix + entry.name, entry.stat(follow_symlinks=False).st_size
        elif recursive and entry.is_dir(follow_symlinks=False):
            yield from _local_entries(entry.path, f"{prefix}{entry.name}/", True)


def list_entries(uri: str, recursive: bool = False) -> dict[str, int | None]:
    """{URI: size} of `list_relative`'s files, each URI `join(uri, name)`."""
    return {join(uri, name): size for name, size in list_relative(uri, recursive).items()}


def list_folders(uri: str) -> list[str]:
    """Names of the folders directly in a local folder (not links to folders), sorted; [] for S3,
    whose folders are only key prefixes (list_entries(recursive=True) sees what lies in them)."""
    if is_s3(uri):
        return []
    try:
        return sorted(e.name for e in os.scandir(resolve(uri)[1]) if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy a folder/prefix and everything under it to a local folder.

    Object keys are checked first: a key that would land outside `local_dir`
    (a `..` part, an absolute name) is refused, never written.
    """
    fs, path = resolve(uri)
    local = Path(local_dir)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        try:
            relative = _inside(path, info.path)
        except UserError:
            raise UserError(f"{uri} holds an object named {info.path!r}, which would land outside the download "
                            "folder; refusing to copy it") from None
        target = local.joinpath(*PurePosixPath(relative).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return local


def remove_empty_folders(uri: str, names: re.Pattern) -> None:
    """Remove the empty local folders directly in `uri` whose names match (S3 has no folders to remove)."""
    for name in list_folders(uri):
        if names.match(name):
            try:
                os.rmdir(os.path.join(resolve(uri)[1], name))
            except OSError:  # not empty: something of the user's, or a file raygen keeps
                pass


def remove_tree(uri: str) -> None:
    fs, path = resolve(uri)
    if is_s3(uri):
        fs.delete_dir_contents(path, missing_dir_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
