"""Row sources: prompts and input images are read a shard's slice at a time, nulls keep their place."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from gen_jobs.core.errors import UserError
from gen_jobs.data.rows import plan_images, plan_prompts, read_inputs


def test_parquet_prompts_are_read_by_row_group_and_nulls_keep_their_place(tmp_path):
    path = tmp_path / "p.parquet"
    prompts = [f"prompt {i}" if i % 5 else None for i in range(100)]
    pq.write_table(pa.table({"prompt": prompts, "other": list(range(100))}), path, row_group_size=10)
    source = plan_prompts(str(path), "prompt", samples_per_input=2)
    assert source.inputs == 100 and len(source.sha256) == 64
    cache: dict = {}
    assert list(read_inputs(source, 23, 41, cache)) == prompts[23:41]
    assert len(cache["row_groups"]) == 11  # ten groups and the end: read from metadata, rows only from 3 groups
    assert read_inputs(source, 25, 26)[0] is None  # row 25 is null and stays row 25


def test_jsonl_prompts_nulls_and_bad_records(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in ["a", None, "c", "d"]) + "\n")
    source = plan_prompts(str(path), "prompt", 1)
    assert source.inputs == 4 and list(read_inputs(source, 1, 3)) == [None, "c"]
    path.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"prompt": 3}) + "\n")
    with pytest.raises(UserError, match="line 2's 'prompt' is int, not a string or null"):
        plan_prompts(str(path), "prompt", 1)
    path.write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(UserError, match="not UTF-8"):
        plan_prompts(str(path), "prompt", 1)


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (4, 4), value).save(buf, format="PNG")
    return buf.getvalue()


def test_an_image_folder_is_read_in_sorted_order_and_its_digest_follows_its_content(tmp_path):
    folder = tmp_path / "in"
    (folder / "b").mkdir(parents=True)
    for name, value in [("b/2.png", 2), ("a.png", 0), ("b/1.png", 1), ("notes.txt", 9)]:
        (folder / name).write_bytes(_png(value) if name.endswith(".png") else b"not an image")
    source = plan_images(str(folder), "image", 1)
    assert source.inputs == 3
    assert list(read_inputs(source, 1, 3)) == [_png(1), _png(2)]  # a.png, b/1.png, b/2.png
    (folder / "b" / "1.png").write_bytes(_png(7))
    assert plan_images(str(folder), "image", 1).sha256 != source.sha256


def test_parquet_images_and_bad_inputs(tmp_path):
    cells = [{"bytes": _png(i), "path": f"{i}.png"} for i in range(3)] + [None]
    pq.write_table(pa.table({"image": cells}), tmp_path / "images.parquet")
    source = plan_images(str(tmp_path / "images.parquet"), "image", 1)
    assert list(read_inputs(source, 2, 4)) == [_png(2), None]
    with pytest.raises(UserError, match="no column 'picture'"):
        plan_images(str(tmp_path / "images.parquet"), "picture", 1)
    with pytest.raises(UserError, match="does not exist"):
        plan_images(str(tmp_path / "nowhere"), "image", 1)


def test_a_family_refuses_a_row_source_it_cannot_use(random_checkpoint, tmp_path):
    from gen_jobs.generate import GenerateArgs, plan

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(_png(1))
    with pytest.raises(UserError, match="--input needs a model that transforms images.*dcgan"):
        plan(GenerateArgs(checkpoint=random_checkpoint, out=str(tmp_path / "o"), input=str(tmp_path / "in")))
    pq.write_table(pa.table({"prompt": ["a"]}), tmp_path / "p.parquet")
    with pytest.raises(UserError, match="--prompts needs a model that continues prompts .*dcgan"):
        plan(GenerateArgs(checkpoint=random_checkpoint, out=str(tmp_path / "o"), prompts=str(tmp_path / "p.parquet")))


def test_a_shard_refuses_an_input_that_changed_after_planning(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"p{i}"}) for i in range(6)) + "\n")
    source = plan_prompts(str(prompts), "prompt", 1)
    assert list(read_inputs(source, 0, 2, {"stamps": source.stamps})) == ["p0", "p1"]
    prompts.write_text("\n".join(json.dumps({"prompt": f"q{i}"}) for i in range(6)) + "\n")  # same size, new bytes
    with pytest.raises(UserError, match=r"p.jsonl changed or went away after this job was planned.*--overwrite"):
        read_inputs(source, 2, 4, {"stamps": source.stamps})

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.png").write_bytes(_png(i))
    source = plan_images(str(folder), "image", 1)
    cache = {"stamps": source.stamps}
    (folder / "00.png").write_bytes(_png(9))  # a new file sorts first: the planned list keeps the rows in place
    assert list(read_inputs(source, 0, 2, cache)) == [_png(0), _png(1)]
    (folder / "3.png").unlink()
    assert list(read_inputs(source, 1, 3, cache)) == [_png(1), _png(2)]  # only the files a shard reads are checked
    with pytest.raises(UserError, match=r"3.png changed or went away"):
        read_inputs(source, 2, 4, cache)


def test_a_jsonl_line_holding_a_raw_line_separator_is_one_record():
    from gen_jobs.data.rows import jsonl_column

    data = '{"prompt": "one\u2028two"}\r\n{"prompt": null}\n'.encode()  # U+2028 raw inside the string, CRLF endings
    assert jsonl_column("p.jsonl", data, "prompt", "--prompt-column") == ["one\u2028two", None]


def test_planning_a_large_prompts_file_holds_only_a_piece_of_it(tmp_path):
    """The review's probe: a 96 MB Parquet of 96 prompts (and a 1 MB column beside each) cost +159 MiB to plan."""
    import hashlib
    import os
    import subprocess
    import sys

    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"prompt": [f"prompt {i}" for i in range(96)],
                             "blob": [os.urandom(1 << 20) for _ in range(96)]}), path, row_group_size=8)
    jsonl = tmp_path / "big.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": "x" * 100_000, "n": i}) + "\n" for i in range(500)))  # 50 MB
    probe = ("import sys, resource, pyarrow as pa; from gen_jobs.data.rows import plan_prompts;"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
             "s = plan_prompts(sys.argv[1], 'prompt', 1);"
             "print(s.inputs, s.sha256, pa.default_memory_pool().max_memory(),"
             " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    for file, count in ((path, 96), (jsonl, 500)):
        out = subprocess.run([sys.executable, "-c", probe, str(file)], capture_output=True, text=True, check=True)
        inputs, digest, arrow_peak, rss_growth_kib = out.stdout.split()
        assert int(inputs) == count and digest == hashlib.sha256(file.read_bytes()).hexdigest()  # the digest it had
        assert int(arrow_peak) < 16 * 2**20, arrow_peak  # the blob column is never read; the file streams in pieces
        assert int(rss_growth_kib) < 32 * 1024, rss_growth_kib
