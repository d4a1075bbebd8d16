"""Keep the part of OpenAI's API description that raygen's routes answer with, for the repository.

    python tests/scripts/trim_openai_spec.py ../shared/openai-openapi/openapi.json tests/resources/openai-openapi.json

The full description (openai/openai-openapi, MIT licence) is 3.4 MB; the tests
need only the paths raygen serves and the components their answers reach. The
kept parts are byte-for-byte the same JSON values, so validating against the
trimmed file is validating against the original (tests/serving/test_openai_conformance.py
checks this whenever the full file is beside the checkout).
"""

from __future__ import annotations

import json
import sys

PATHS = {"/models": ["get"], "/models/{model}": ["get"], "/completions": ["post"], "/chat/completions": ["post"],
         "/images/generations": ["post"], "/images/edits": ["post"], "/files": ["get", "post"],
         "/files/{file_id}": ["get", "delete"], "/batches": ["get", "post"], "/batches/{batch_id}": ["get"],
         "/batches/{batch_id}/cancel": ["post"]}
EXTRA_COMPONENTS = ["ErrorResponse"]


def refs(node) -> set[str]:
    """Names of the components `node` refers to directly."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            found |= refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= refs(value)
    return found


def trim(spec: dict) -> dict:
    paths = {path: {method: {"responses": {"200": spec["paths"][path][method]["responses"]["200"]}}
                    for method in methods} for path, methods in PATHS.items()}
    schemas = spec["components"]["schemas"]
    todo, kept = refs(paths) | set(EXTRA_COMPONENTS), set()
    while todo:
        name = todo.pop()
        if name not in kept:
            kept.add(name)
            todo |= refs(schemas[name]) - kept
    return {"openapi": spec["openapi"], "info": spec["info"], "paths": paths,
            "components": {"schemas": {name: schemas[name] for name in sorted(kept)}}}


if __name__ == "__main__":
    source, target = sys.argv[1:3]
    with open(source) as f:
        trimmed = trim(json.load(f))
    with open(target, "w") as f:
        json.dump(trimmed, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{target}: {len(trimmed['components']['schemas'])} components")
