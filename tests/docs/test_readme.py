"""The commands of README.md and of the site's pages (docs/*.md), run as written (Sybil) from the root of a
fresh copy of the repository.

Every ```sh and ```console block of README.md and of docs/*.md is an example, in
each page's order. A block runs in bash from a copy of the repository's files (its .venv
linked in and first on PATH, as `. .venv/bin/activate` leaves it), with
RAYGEN_SMOKE_TEST=1 (gen_jobs/core/smoke.py: training one epoch, at most 64 rows:
the commands stay as a user types them, their sizes shrink) and the session's
Ray cluster in RAY_ADDRESS, unless the block sets up a cluster of its own. A
console block's `$` lines are run, and the lines it shows after them must be
what they print. A block that cannot run here (a cluster, AWS, a server that
runs until stopped, a synopsis of placeholders) is marked before it with
`<!-- skip: next "why" -->`, and the reason shows in the test report.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser

from conftest import BIN, REPO

BLOCK_TIMEOUT_S = 900
RUN = {}  # where the blocks run: set by the `copy` fixture before the first block


def shell_env(script: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAYGEN_SMOKE_TEST": "1",
           "USER": os.environ.get("USER") or getpass.getuser()}
    if "local.sh up" in script:  # a cluster of its own: its env file says where it is and its token
        env = {k: v for k, v in env.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_API_SERVER"))}
    return env


def run_sh(example) -> None:
    script = example.parsed
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=RUN["root"], env=shell_env(script),
                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    assert done.returncode == 0, (f"{page(example)} line {example.line}: exit {done.returncode}\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def commands_and_output(block: str) -> list[tuple[str, list[str]]]:
    """A console block as (command, the lines shown after it) pairs; a command may continue over lines ending in \\."""
    pairs: list[tuple[str, list[str]]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("$ "):
            command = lines[i][2:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + "\n" + lines[i]
            pairs.append((command, []))
        elif pairs:
            pairs[-1][1].append(lines[i])
        i += 1
    return pairs


def run_console(example) -> None:
    for command, shown in commands_and_output(example.parsed):
        done = subprocess.run(["bash", "-c", command], cwd=RUN["root"], env=shell_env(command), capture_output=True,
                              text=True, timeout=BLOCK_TIMEOUT_S)
        printed = (done.stdout + done.stderr).splitlines()
        expected = [line for line in shown if line != "..."]
        missing = [line for line in expected if line not in printed]
        assert not missing, f"{page(example)} line {example.line}: `{command}` no longer prints {missing}; it printed:\n" + \
            "\n".join(printed[-40:])


SYBIL = Sybil(parsers=[CodeBlockParser("sh", run_sh), CodeBlockParser("console", run_console), SkipParser()])
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
EXAMPLES = [example for path in PAGES for example in SYBIL.parse(path)]


def page(example) -> str:
    """The page an example is on, as the repository names it (README.md, docs/index.md)."""
    return str(Path(example.path).relative_to(REPO))


def is_skip(example) -> bool:
    return isinstance(example.parsed, tuple)  # ("next", '"why"') of a <!-- skip: next "why" --> directive


# Each block with the skip directive before it, if any (evaluated first: it installs the skip).
BLOCKS = [(before if before is not None and is_skip(before) else None, example)
          for before, example in zip([None, *EXAMPLES], EXAMPLES) if not is_skip(example)]


@pytest.fixture(scope="module")
def copy(ray_cluster, tmp_path_factory):
    """A fresh copy of the repository (its tracked and new files, as a clone has them, and the .venv linked)."""
    root = tmp_path_factory.mktemp("readme") / "raygen"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    (root / ".venv").symlink_to(REPO / ".venv")
    RUN["root"] = root
    yield root
    # A block that failed half-way may have left its cluster up: the README's own way down (a no-op if none is).
    subprocess.run(["bash", "cluster/local.sh", "down"], cwd=root, env=shell_env("local.sh up"), capture_output=True,
                   timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("skip, example", BLOCKS, ids=[f"{page(e)}:line{e.line}" for _, e in BLOCKS])
def test_the_readme_command_runs_as_written(copy, skip, example):
    if skip is not None:
        skip.evaluate()
    example.evaluate()  # a skipped block raises SkipTest with its reason


def test_every_command_block_of_the_readme_is_run_or_says_why_not():
    """A command in a block Sybil does not run would go untested unseen: shell commands live in sh or console blocks,
    and every skip gives a reason."""
    hidden = [m.group(0) for path in PAGES
              for m in re.finditer(r"^```(?!sh$|console$)[^\n]*\n(?:\$ |raygen |ray |make |\.venv/|python )[^\n]*",
                                   path.read_text(), re.M)]
    assert hidden == [], "commands in blocks that are neither sh nor console"
    skips = [skip for skip, _ in BLOCKS if skip is not None]
    assert len(skips) == len([e for e in EXAMPLES if is_skip(e)]), "a skip directive that is not right before a block"
    assert all(action == "next" and reason and len(reason.strip('"')) > 20 for action, reason in (s.parsed for s in skips))
    assert len(BLOCKS) - len(skips) >= 5  # the three family blocks, the error example and the local cluster, at least


def test_a_console_block_is_split_into_commands_and_what_they_print():
    block = "$ raygen verify d\nOK d: 1 shard\n$ ray job submit -- \\\n    python -m x\n...\nsucceeded\n"
    assert commands_and_output(block) == [("raygen verify d", ["OK d: 1 shard"]),
                                          ("ray job submit -- \n    python -m x", ["...", "succeeded"])]
