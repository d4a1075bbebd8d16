"""Storage URIs -> pyarrow filesystems: local paths and `s3://`.

Every byte raygen reads or writes (training data, checkpoints, shards,
manifests) goes through this module, so S3 behaves exactly like a local disk.

S3 uses the standard AWS credential chain (environment, ~/.aws, instance role).
`AWS_ENDPOINT_URL` points it at an S3-compatible store (MinIO, moto, Ceph), and
transient errors are retried by the AWS standard retry strategy.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from gen_jobs.errors import UserError

SUPPORTED_SCHEMES = ("local path", "file://", "s3://")
_S3_RETRY_ATTEMPTS = 8


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kwargs: dict = {
        "region": region,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=_S3_RETRY_ATTEMPTS),
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


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
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def join(uri: str, *names: str) -> str:
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *names)
    return str(Path(uri).expanduser().joinpath(*names))


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


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


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write `data` so that `uri` is either absent, its old content, or all of `data`.

    Local: write a hidden temporary file in the same folder, then rename it over
    the target (atomic on POSIX). S3: one object upload is atomic by itself; the
    object becomes visible only when its upload completes.
    """
    fs, path = resolve(uri)
    if is_s3(uri):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def delete_file(uri: str) -> None:
    fs, path = resolve(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def list_files(uri: str, recursive: bool = False) -> list[str]:
    """URIs of the files under a folder/prefix, sorted; [] if it does not exist."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    files = [i.path for i in infos if i.type == pafs.FileType.File]
    prefix = "s3://" if is_s3(uri) else ""
    return sorted(prefix + p for p in files)


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy a folder/prefix and everything under it to a local folder."""
    fs, path = resolve(uri)
    local = Path(local_dir)
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local


def remove_tree(uri: str) -> None:
    fs, path = resolve(uri)
    if is_s3(uri):
        fs.delete_dir_contents(path, missing_dir_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
