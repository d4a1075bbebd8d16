"""OpenAI's Files API on the Serve app: the batch input files a client uploads, kept in storage.

    POST   /v1/files                  multipart: file, purpose=batch        -> OpenAIFile
    GET    /v1/files[?purpose&limit&order&after]                            -> ListFilesResponse
    GET    /v1/files/{file_id}                                              -> OpenAIFile
    GET    /v1/files/{file_id}/content                                      -> the file's bytes, streamed
    DELETE /v1/files/{file_id}                                              -> DeleteFileResponse

Every file lives in the app's storage (`AppConfig.batch_storage`: a local folder or an `s3://`
prefix), never only in a replica's memory, so a restarted app or another replica answers the
same: `<storage>/files/<id>` holds the bytes and `<storage>/files/<id>.json` the record, written
after the bytes (a file is listed only once whole). An upload streams from the request to storage
in pieces while its lines are counted; past `limits.max_file_bytes` or `limits.max_file_lines`
(OpenAI's own limits by default: 200 MB, 50,000 lines) it is refused and nothing is kept. A
batch's output and error files are written a part a shard while the batch runs (`<id>.parts/`,
serving.batch_job) and read back as one file, a part at a time.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gen_jobs.core import storage
from serving.errors import ApiError
from serving.records import RecordStore

if TYPE_CHECKING:
    from serving.config import Limits

FILE_ID = re.compile(r"^file-[0-9a-f]{32}$")  # what this server names files: nothing else reaches a path
PURPOSES = ("batch",)  # what this server keeps files for (the batch output it writes: batch_output)
UPLOAD_CHUNK = 1 << 20


class FileRecord(BaseModel):
    """OpenAI's `OpenAIFile`."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["uploaded", "processed", "error"] = "processed"  # (deprecated by OpenAI, still required)
    lines: int = 0  # raygen: the file's lines (its requests, for purpose batch)
    in_parts: bool = False  # its bytes are the parts at `<id>.parts/*.jsonl`, in name order (a batch's output)

    def answer(self) -> dict:
        return self.model_dump(exclude={"in_parts"})


class FileStore(RecordStore[FileRecord]):
    """The files under `<root>/files/`: bytes at `<id>` (or in parts, in `<id>.parts/`), the record at `<id>.json`."""

    def __init__(self, root: str):
        super().__init__(storage.join(root, "files"), FileRecord, FILE_ID, "file")

    def parts_uri(self, file_id: str) -> str:
        """The folder of a file written in parts (`<name>.jsonl` each, read in name order), before and after
        its record exists: a batch job writes a part a shard, then the record (`add_parts_file`)."""
        return self.uri(file_id) + ".parts"

    def add_parts_file(self, file_id: str, filename: str, purpose: str, lines: int) -> FileRecord:
        """The record of a file whose parts are written: listed from now on."""
        size = sum(storage.size(uri) for uri in self._parts(file_id))
        return self.put(FileRecord(id=file_id, bytes=size, created_at=int(time.time()), filename=filename,
                                   purpose=purpose, lines=lines, in_parts=True))

    def _parts(self, file_id: str) -> list[str]:
        folder = self.parts_uri(file_id)
        names = sorted(n for n in storage.list_names(folder) if n.endswith(".jsonl")) if storage.exists(folder) else []
        return [storage.join(folder, name) for name in names]

    def save(self, chunks: Iterator[bytes], filename: str, purpose: str, limits: Limits) -> FileRecord:
        """A new file from its pieces, its bytes and lines counted as they pass; its record is written once the
        bytes are whole. Past `limits` it is refused, keeping nothing."""
        file_id = f"file-{uuid.uuid4().hex}"
        size, newlines, last = 0, 0, b"\n"
        with storage.AtomicWriter(self.uri(file_id)) as out:  # the bytes appear only if every piece was kept
            for chunk in chunks:
                size, newlines, last = size + len(chunk), newlines + chunk.count(b"\n"), chunk[-1:] or last
                if size > limits.max_file_bytes:
                    raise ApiError(413, f"the file is larger than this server's limit of {limits.max_file_bytes:,} "
                                        "bytes (limits.max_file_bytes)", param="file")
                if newlines > limits.max_file_lines:
                    raise ApiError(400, f"the file has more than {limits.max_file_lines:,} lines, this server's "
                                        "limit (limits.max_file_lines): split it into several batches", param="file")
                out.write(chunk)
        lines = newlines + (last != b"\n")  # (a last line without its newline counts too)
        if lines > limits.max_file_lines:
            storage.delete_file(self.uri(file_id))
            raise ApiError(400, f"the file has {lines:,} lines; this server's limit is {limits.max_file_lines:,} "
                                "(limits.max_file_lines)", param="file")
        return self.put(FileRecord(id=file_id, bytes=size, created_at=int(time.time()), filename=filename,
                                   purpose=purpose, lines=lines))

    def chunks(self, file_id: str) -> Iterator[bytes]:
        """The file's bytes, a piece at a time (never the whole file in memory)."""
        record = self.get(file_id)  # 404 for a file that is not (or no longer) there
        if not record.in_parts:
            return storage.read_chunks(self.uri(file_id))
        return (chunk for part in self._parts(file_id) for chunk in storage.read_chunks(part))

    def delete(self, file_id: str) -> None:
        record = self.get(file_id)
        storage.delete_file(self.uri(file_id) + ".json")  # the record first: a half-deleted file is never listed
        if record.in_parts:
            storage.remove_tree(self.parts_uri(file_id))
        else:
            storage.delete_file(self.uri(file_id))


class FilesHost(Protocol):
    """What the routes need of the gateway (serving.app.Gateway)."""

    files: FileStore
    limits: Limits


def add_routes(app: FastAPI, gateway: FilesHost) -> None:
    @app.post("/v1/files")
    async def create_file(request: Request):
        upload, purpose = await _read_upload(request)
        if purpose not in PURPOSES:
            raise ApiError(400, f"purpose {purpose!r}: this server keeps files for batches only (purpose=batch)",
                           param="purpose")
        try:
            record = await asyncio.to_thread(gateway.files.save, _pieces(upload.file), upload.filename or "upload.jsonl",
                                             purpose, gateway.limits)
            return record.answer()
        finally:
            await upload.close()

    @app.get("/v1/files")
    async def list_files(purpose: str | None = None, limit: int = Query(10000, ge=1, le=10000),
                         order: Literal["asc", "desc"] = "desc", after: str | None = None):
        records = await asyncio.to_thread(gateway.files.all)
        records = sorted((r for r in records if purpose is None or r.purpose == purpose),
                         key=lambda r: (r.created_at, r.id), reverse=order == "desc")
        if after is not None:
            ids = [r.id for r in records]
            records = records[ids.index(after) + 1:] if after in ids else []
        page = records[:limit]
        return {"object": "list", "data": [r.answer() for r in page], "first_id": page[0].id if page else "",
                "last_id": page[-1].id if page else "", "has_more": len(records) > limit}

    @app.get("/v1/files/{file_id}")
    async def retrieve_file(file_id: str):
        return (await asyncio.to_thread(gateway.files.get, file_id)).answer()

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str):
        chunks = await asyncio.to_thread(gateway.files.chunks, file_id)
        return StreamingResponse(chunks, media_type="application/octet-stream")  # (starlette iterates it in a thread)

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str):
        await asyncio.to_thread(gateway.files.delete, file_id)
        return {"id": file_id, "object": "file", "deleted": True}


async def _read_upload(request: Request):
    """(the uploaded file part, the purpose) of a multipart form; ApiError for anything else."""
    from starlette.datastructures import UploadFile

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "send the file as multipart/form-data with fields `file` and `purpose`, as OpenAI's "
                            "files.create does")
    try:  # file parts spool to a temporary file past 1 MB: the upload is never held in memory
        form = await request.form(max_files=1, max_fields=4)
    except Exception as e:  # starlette's MultiPartException and parser errors
        raise ApiError(400, f"the multipart form could not be read ({e})") from None
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "file is required: the JSONL file, as a file part", param="file")
    if not isinstance(purpose, str):
        raise ApiError(400, "purpose is required (batch)", param="purpose")
    return upload, purpose


def _pieces(file) -> Iterator[bytes]:
    while chunk := file.read(UPLOAD_CHUNK):
        yield chunk
