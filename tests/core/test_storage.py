"""Storage URIs: local and S3 (a real moto S3 server) behave alike; bad schemes fail clearly."""

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gen_jobs.core import storage
from gen_jobs.core.errors import UserError


def test_local_atomic_write_read_list_delete(tmp_path):
    target = storage.join(str(tmp_path), "a", "x.bin")
    storage.write_bytes_atomic(target, b"hello")
    storage.write_bytes_atomic(target, b"world")
    assert storage.read_bytes(target) == b"world"
    assert storage.list_files(str(tmp_path / "a")) == [str(tmp_path / "a" / "x.bin")]
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.bin"]  # no temporary left behind
    storage.delete_file(target)
    assert not storage.exists(target)


@pytest.mark.parametrize("uri", ["ftp://host/data", "gs://bucket/data", "hdfs://nn/x"])
def test_unknown_scheme_is_a_clear_error(uri):
    with pytest.raises(UserError, match="unsupported URI scheme.*s3://"):
        storage.resolve(uri)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        storage.read_bytes(str(tmp_path / "nope"))


def test_s3_round_trip(s3_server, tmp_path):
    base = "s3://raygen/storage-test"
    storage.write_bytes_atomic(storage.join(base, "dir", "a.txt"), b"abc")
    assert storage.exists(storage.join(base, "dir", "a.txt"))
    assert storage.read_bytes(storage.join(base, "dir", "a.txt")) == b"abc"
    assert storage.list_files(storage.join(base, "dir")) == [f"{base}/dir/a.txt"]

    storage.write_bytes_atomic(storage.join(base, "tree", "sub", "b.txt"), b"b")
    local = storage.download_dir(storage.join(base, "tree"), tmp_path / "down")
    assert (local / "sub" / "b.txt").read_bytes() == b"b"

    fs, path = storage.resolve(storage.join(base, "t.parquet"))
    pq.write_table(pa.table({"x": [1, 2]}), path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).column("x").to_pylist() == [1, 2]
    storage.remove_tree(base)
    assert storage.list_files(base) == []


def test_an_s3_outage_inside_a_ray_data_worker_is_one_clear_line(ray_cluster, capsys):
    """Ray Data keeps a UDF's botocore error only as traceback text; the command still says what failed, once."""
    from conftest import free_port
    from gen_jobs.cli_args import run_main

    ray, _ = ray_cluster
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there, as in an S3 outage

    def put_a_shard(batch):  # defined here so that Ray ships it by value (workers cannot import test modules)
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=closed, region_name="us-east-1", aws_access_key_id="x",
                              aws_secret_access_key="x", config=Config(retries={"max_attempts": 1}, connect_timeout=1))
        client.put_object(Bucket="raygen", Key="part-00001.parquet", Body=b"rows")
        return batch

    code = run_main(lambda: ray.data.range(1).map_batches(put_a_shard).materialize())
    err = capsys.readouterr().err
    assert code == 1
    assert "error: S3 failed after" in err and "Could not connect to the endpoint URL" in err, err[-2000:]
    assert "--resume" in err and "Traceback" not in err


def test_errors_that_are_not_s3_are_not_described_as_s3():
    assert storage.describe_failure(ValueError("bad value")) is None
    assert storage.describe_failure(OSError("disk full")) is None


def test_uris_may_name_environment_variables(monkeypatch):
    """One setting names the bucket for every job and the Serve config (k8s/storage.yaml)."""
    from gen_jobs.core.storage import expand_variables
    from gen_jobs.generate import GenerateArgs

    monkeypatch.setenv("RAYGEN_STORAGE", "s3://acme-data/raygen/")
    assert expand_variables("${RAYGEN_STORAGE}/runs/gpt") == "s3://acme-data/raygen/runs/gpt"
    assert expand_variables("out/$HOME/x") == "out/$HOME/x"  # only the ${NAME} form: plain paths stay as typed
    args = GenerateArgs(checkpoint="${RAYGEN_STORAGE}/runs/dcgan", out="${RAYGEN_STORAGE}/datasets/d", num_samples=1)
    assert (args.checkpoint, args.out) == ("s3://acme-data/raygen/runs/dcgan", "s3://acme-data/raygen/datasets/d")
    monkeypatch.delenv("RAYGEN_STORAGE")
    with pytest.raises(ValueError, match=r"names \$\{RAYGEN_STORAGE\}, which is not set here: export RAYGEN_STORAGE"):
        expand_variables("${RAYGEN_STORAGE}/runs")


def test_a_streamed_local_write_appears_whole_or_not_at_all(tmp_path):
    target = storage.join(str(tmp_path), "part-00000.parquet")
    storage.write_bytes_atomic(target, b"old")
    with storage.AtomicWriter(target) as f:
        f.write(b"new ")
        assert storage.read_bytes(target) == b"old"  # nothing shows until the end
        f.write(b"bytes")
    assert storage.read_bytes(target) == b"new bytes" and f.size == 9
    assert f.sha256 == hashlib.sha256(b"new bytes").hexdigest()
    with pytest.raises(RuntimeError):
        with storage.AtomicWriter(target) as f:
            f.write(b"half of it")
            raise RuntimeError("the sampler failed")
    assert storage.read_bytes(target) == b"new bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["part-00000.parquet"]  # no temporary left behind


def _uploads(prefix: str) -> list[str]:
    answer = storage.s3_client().list_multipart_uploads(Bucket="raygen", Prefix=prefix)
    return [u["Key"] for u in answer.get("Uploads", [])]


def test_a_large_s3_shard_streams_as_a_multipart_upload_that_appears_whole(s3_server, monkeypatch):
    import os

    monkeypatch.setattr(storage, "S3_PART_BYTES", 5 * 2**20)  # S3's smallest part: a 12 MiB shard is 3 parts
    data = os.urandom(12 * 2**20)
    uri = "s3://raygen/streamed/part-00000.parquet"
    with storage.AtomicWriter(uri) as f:
        for i in range(0, len(data), 2**20):
            f.write(data[i: i + 2**20])
            assert not storage.exists(uri)  # a multipart upload is invisible until completed
        assert _uploads("streamed/") == ["streamed/part-00000.parquet"]
    assert storage.read_bytes(uri) == data and f.sha256 == hashlib.sha256(data).hexdigest() and f.size == len(data)
    assert _uploads("streamed/") == []

    with pytest.raises(RuntimeError):  # a failure part-way aborts the upload: no object, no parts left billed
        with storage.AtomicWriter("s3://raygen/streamed/part-00001.parquet") as f:
            f.write(data)
            raise RuntimeError("the sampler failed")
    assert not storage.exists("s3://raygen/streamed/part-00001.parquet") and _uploads("streamed/") == []


def test_uploads_left_by_a_killed_run_are_aborted_and_only_raygens(s3_server, monkeypatch):
    import os

    from gen_jobs.data.manifest import SHARD_PATTERN

    monkeypatch.setattr(storage, "S3_PART_BYTES", 5 * 2**20)
    killed = storage.AtomicWriter("s3://raygen/killed/part-00003.parquet")
    killed.write(os.urandom(6 * 2**20))  # one part sent; then the process "dies": never closed, never aborted
    client = storage.s3_client()
    theirs = client.create_multipart_upload(Bucket="raygen", Key="killed/their-upload.bin")
    assert storage.abort_stale_uploads("s3://raygen/killed", SHARD_PATTERN) == 1
    assert _uploads("killed/") == ["killed/their-upload.bin"]  # another tool's upload is not raygen's to abort
    client.abort_multipart_upload(Bucket="raygen", Key="killed/their-upload.bin", UploadId=theirs["UploadId"])
