"""Which card files in a dataset's folder are raygen's: the card's file names and its record, `_card.json`.

    used by gen_jobs.data.output_folder (whose files are in --out) and gen_jobs.quality.card (which writes them)

The card (gen_jobs.quality.card) is written into the dataset's folder; `_card.json` records the
sha256 of each file raygen wrote, so a card file edited since is the user's: raygen neither
overwrites nor deletes it. This is part of the dataset contract, so it lives with the data face.
"""

from __future__ import annotations

import json

from gen_jobs.core import storage
from gen_jobs.core.errors import UserError
from gen_jobs.data.manifest import sha256

README = "README.md"
QUALITY = "quality.json"
SAMPLES_PICTURE = "card-samples.png"
TRAINING_PICTURE = "card-training.png"
CARD_RECORD = "_card.json"
CARD_FILES = (README, QUALITY, SAMPLES_PICTURE, TRAINING_PICTURE)


def is_record(data: object) -> bool:
    """Whether parsed JSON has the shape of the card record raygen writes (`{"files": {name: sha256}}`)."""
    return isinstance(data, dict) and isinstance(data.get("files"), dict)


def recorded(out: str) -> dict[str, str]:
    """{card file name: sha256} of what raygen last wrote into `out` ({} when it wrote no card)."""
    try:
        raw = storage.read_small_file(storage.join(out, CARD_RECORD), 1 << 20, "card record")
        data = json.loads(raw) if raw is not None else None
    except (ValueError, UserError):  # damaged or not raygen's: it records no card of raygen's
        return {}
    if not is_record(data):
        return {}
    return {name: digest for name, digest in data["files"].items() if name in CARD_FILES}


def is_raygens(out: str, name: str, record: dict[str, str]) -> bool:
    """Whether the card file `name` in `out` is as raygen wrote it (a file edited since is the user's)."""
    return name in record and sha256(storage.read_bytes(storage.join(out, name))) == record[name]
