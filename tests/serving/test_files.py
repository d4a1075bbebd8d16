"""OpenAI's Files API on the Serve app (serving/files.py), through the official client and plain HTTP.

The session's app keeps its files in a folder of its own (conftest.server: batch_storage), with a
limit of 100 lines and 1 MB a file.
"""

from __future__ import annotations

import io
import json

import openai
import pytest

from serving.config import Limits
from serving.errors import ApiError
from serving.files import FileStore

LINES = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/completions",
          "body": {"model": "pydoc", "prompt": "def ", "seed": i, "max_tokens": 4}} for i in range(3)]


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def test_a_file_is_uploaded_listed_read_and_deleted_with_the_official_client(client):
    data = jsonl(LINES)
    created = client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
    assert created.id.startswith("file-") and created.bytes == len(data) and created.purpose == "batch"
    assert created.filename == "requests.jsonl" and created.status == "processed"
    assert client.files.retrieve(created.id).model_dump() == created.model_dump()
    assert client.files.content(created.id).read() == data
    listed = [f.id for f in client.files.list(purpose="batch")]
    assert created.id in listed
    second = client.files.create(file=("more.jsonl", io.BytesIO(data)), purpose="batch")
    newest_first = [f.id for f in client.files.list(purpose="batch")]
    assert newest_first.index(second.id) < newest_first.index(created.id) or \
        client.files.retrieve(second.id).created_at == created.created_at  # (the same second: ordered by id)
    deleted = client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id).read()
    assert created.id not in [f.id for f in client.files.list()]
    client.files.delete(second.id)


def test_files_list_pages_with_after_and_limit(http):
    ids = [http.post("/v1/files", files={"file": ("p.jsonl", jsonl(LINES[:1]))}, data={"purpose": "batch"}).json()["id"]
           for _ in range(3)]
    everything = [f["id"] for f in http.get("/v1/files", params={"order": "asc"}).json()["data"]]
    mine = [i for i in everything if i in ids]
    assert len(mine) == 3
    first = http.get("/v1/files", params={"order": "asc", "limit": 1, "after": mine[0]}).json()
    assert first["data"][0]["id"] == everything[everything.index(mine[0]) + 1] and first["first_id"] == first["last_id"]
    assert first["has_more"] == (everything.index(mine[0]) + 2 < len(everything))
    for file_id in ids:
        assert http.delete(f"/v1/files/{file_id}").json()["deleted"] is True


@pytest.mark.parametrize("form, files, status, says", [
    ({"purpose": "fine-tune"}, {"file": ("a.jsonl", b"{}\n")}, 400, "purpose"),
    ({}, {"file": ("a.jsonl", b"{}\n")}, 400, "purpose is required"),
    ({"purpose": "batch"}, {"other": ("a.jsonl", b"{}\n")}, 400, "file is required"),
    ({"purpose": "batch"}, {"file": ("a.jsonl", b"{}\n" * 101)}, 400, "more than 100 lines"),
    ({"purpose": "batch"}, {"file": ("a.jsonl", b"{}\n" * 100 + b"{}")}, 400, "101 lines"),
    ({"purpose": "batch"}, {"file": ("a.jsonl", b"x" * 1_000_001)}, 413, "1,000,000"),
])
def test_bad_uploads_get_a_4xx_and_leave_nothing(http, form, files, status, says):
    before = {f["id"] for f in http.get("/v1/files").json()["data"]}
    answer = http.post("/v1/files", data=form, files=files)
    assert answer.status_code == status and says in answer.json()["error"]["message"], answer.text
    assert {f["id"] for f in http.get("/v1/files").json()["data"]} == before


def test_unknown_or_malformed_file_ids_are_404s(http):
    for file_id in ("file-" + "0" * 32, "../../etc/passwd", "file-..%2F..%2Fx"):
        for answer in (http.get(f"/v1/files/{file_id}"), http.get(f"/v1/files/{file_id}/content"),
                       http.delete(f"/v1/files/{file_id}")):
            assert answer.status_code == 404, (file_id, answer.text)


def test_a_json_body_is_not_an_upload(http):
    answer = http.post("/v1/files", json={"purpose": "batch", "file": "x"})
    assert answer.status_code == 400 and "multipart/form-data" in answer.json()["error"]["message"]


def test_another_store_on_the_same_storage_sees_the_same_files(tmp_path):
    """What a restarted app or another replica does: a FileStore is its storage, nothing in memory."""
    limits = Limits(max_file_lines=10)
    first = FileStore(str(tmp_path))
    record = first.save(iter([jsonl(LINES[:2])]), "a.jsonl", "batch", limits)
    assert record.lines == 2
    second = FileStore(str(tmp_path))
    assert second.get(record.id) == record and [r.id for r in second.all()] == [record.id]
    assert b"".join(second.chunks(record.id)) == jsonl(LINES[:2])
    with pytest.raises(ApiError):
        first.save(iter([b"{}\n"] * 11), "b.jsonl", "batch", limits)
    assert [r.id for r in second.all()] == [record.id] and len(list(tmp_path.glob("files/*"))) == 2
