"""Run a file of requests through raygen's Batches API with OpenAI's own client, and print the answers.

    raygen serve &                                   # after `make demo`: its models on http://127.0.0.1:8000
    python examples/batch.py examples/batch.jsonl    # needs `pip install openai`

OPENAI_BASE_URL (default http://127.0.0.1:8000/v1) and OPENAI_API_KEY (the server's RAYGEN_API_KEY;
anything for a server without a key) say where the server is. `--model NAME` sends every line to the
served model NAME instead of the one the file names. The file's lines share one endpoint (a batch
has one, as OpenAI's do). Prints one line per request, `custom_id: status: text`, and exits 1 if the
batch did not complete.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

from openai import OpenAI


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requests", help="a JSONL file in OpenAI's batch input format")
    parser.add_argument("--model", help="send every line to this served model")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the batch (default 600)")
    args = parser.parse_args()
    lines = [json.loads(line) for line in open(args.requests, encoding="utf-8") if line.strip()]
    if args.model:
        for line in lines:
            line["body"]["model"] = args.model
    client = OpenAI(base_url=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"),
                    api_key=os.environ.get("OPENAI_API_KEY", "unused"))
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=lines[0]["url"], completion_window="24h")
    print(f"batch {batch.id}: {batch.status}")
    deadline = time.monotonic() + args.timeout
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        if time.monotonic() > deadline:
            print(f"batch {batch.id} is still {batch.status} after {args.timeout:g} s", file=sys.stderr)
            return 1
        time.sleep(2)
        batch = client.batches.retrieve(batch.id)
    counts = batch.request_counts
    print(f"batch {batch.id}: {batch.status}: {counts.completed} answered, {counts.failed} errors of {counts.total}")
    for error in (batch.errors.data if batch.errors else []):
        print(f"  line {error.line}: {error.code}: {error.message}")
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id is None:
            continue
        for text in client.files.content(file_id).read().decode().splitlines():
            answer = json.loads(text)
            body = answer["response"]["body"]
            said = (" | ".join(c.get("text") or c["message"]["content"] for c in body["choices"]) if "choices" in body
                    else body.get("error", {}).get("message", json.dumps(body)[:80]))
            print(f"{answer['custom_id']}: {answer['response']['status_code']}: {said!r}")
    return 0 if batch.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
