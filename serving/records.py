"""Records the Serve app keeps in storage, one JSON document each: the Files and Batches APIs' stores.

A record lives at `<folder>/<id>.json`. An id names a path only when it matches the pattern of the
ids this server gives out, so an id a client sends never reaches outside the folder; any other id,
like one that names nothing, is a 404.
"""

from __future__ import annotations

import re
from typing import Generic, TypeVar

from pydantic import BaseModel

from gen_jobs.core import storage
from serving.errors import ApiError

R = TypeVar("R", bound=BaseModel)


class RecordStore(Generic[R]):
    """The records of one kind (`noun`: "file", "batch") under `folder`."""

    def __init__(self, folder: str, record_type: type[R], pattern: re.Pattern, noun: str):
        self.folder, self.record_type, self.pattern, self.noun = folder, record_type, pattern, noun

    def uri(self, record_id: str) -> str:
        """Where the record's own things live (`<uri>.json` is the record)."""
        if not self.pattern.match(record_id):
            raise self.missing(record_id)
        return storage.join(self.folder, record_id)

    def missing(self, record_id: str) -> ApiError:
        return ApiError(404, f"no {self.noun} {record_id!r}", param=f"{self.noun}_id")

    def get(self, record_id: str) -> R:
        record = self.uri(record_id) + ".json"
        if not storage.exists(record):
            raise self.missing(record_id)
        return self.record_type.model_validate_json(storage.read_bytes(record))

    def put(self, record: R) -> R:
        storage.write_bytes_atomic(self.uri(record.id) + ".json", record.model_dump_json().encode())
        return record

    def all(self) -> list[R]:
        names = storage.list_names(self.folder) if storage.exists(self.folder) else []
        records = []
        for name in names:
            if name.endswith(".json") and self.pattern.match(name[:-5]):
                try:
                    records.append(self.get(name[:-5]))
                except ApiError:  # deleted since the listing
                    continue
        return records
