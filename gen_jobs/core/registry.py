"""The registry of model families: one line per family, loaded by name on first use.

Each entry names a package whose `FAMILY` (a gen_jobs.core.family.Family) says
what the family is made of; see gen_jobs/core/family.py for the contract. Adding
a family means adding its package under gen_jobs/families/ and one line here.
The core reaches a family only through `get`: no module of the core imports a
family's package.
"""

from __future__ import annotations

import importlib

from gen_jobs.core.family import Family

REGISTRY: dict[str, str] = {
    "dcgan": "gen_jobs.families.dcgan",
    "gpt": "gen_jobs.families.gpt",
    "music": "gen_jobs.families.music",
    "style": "gen_jobs.families.style",
    "diffusion": "gen_jobs.families.diffusion",
}


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> Family:
    """The descriptor of family `name` (a KeyError names the valid ones)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model family {name!r}; valid families: {', '.join(REGISTRY)}")
    return importlib.import_module(REGISTRY[name]).FAMILY
