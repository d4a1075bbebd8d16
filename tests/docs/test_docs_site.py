"""The documentation site (mkdocs.yml, docs/): `mkdocs build --strict` passes, and its reference pages come from the code.

Strict: a broken link, a missing anchor or a page left out of the navigation fails the build.
The commands page is each command's `--help` and the recipes page every key of every built-in
recipe, written by docs/_gen/reference.py at build time.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess

import pytest

from conftest import BIN, REPO
from gen_jobs.cli import COMMANDS
from gen_jobs.core.recipes import builtin_recipes


def build(project, site) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISABLE_MKDOCS_2_WARNING": "true", "PYTHONPATH": str(REPO)}
    return subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)


def page_text(site, page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", (site / page / "index.html").read_text()))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    done = build(REPO, site)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return site


def test_the_site_builds_strictly_with_every_page_in_its_navigation(site):
    for page in ("architecture", "reference/commands", "reference/recipes"):
        assert (site / page / "index.html").is_file(), page
    assert "raygen trains generative models" in (site / "index.html").read_text()


def test_the_commands_page_is_every_commands_help(site):
    text = page_text(site, "reference/commands")
    for name, (module, _) in COMMANDS.items():
        assert f"usage: raygen {name}" in text, name
        assert f"python -m {module}" in text, module
    assert "--checkpoint CHECKPOINT" in text and "--num-samples NUM_SAMPLES" in text


def test_the_recipes_page_lists_every_builtin_recipes_keys(site):
    page = (site / "reference" / "recipes" / "index.html").read_text()
    for name in builtin_recipes():  # the section under the recipe's heading, up to the next one
        section = page.split(f'<h2 id="{name}">', 1)[1].split("<h2 ", 1)[0]
        assert "<code>train.epochs</code>" in section and "<code>train.seed</code>" in section, name
    assert "two time-scale update rule" in page  # a field's description (dcgan's train.lr_d)


def test_a_page_left_out_of_the_navigation_fails_the_build(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "mkdocs.yml", project)
    shutil.copytree(REPO / "docs", project / "docs")
    (project / "docs" / "orphan.md").write_text("# Not in the navigation\n")
    done = build(project, tmp_path / "site")
    assert done.returncode != 0 and "orphan.md" in done.stdout + done.stderr


def test_the_readme_is_a_page_that_starts_with_what_raygen_is():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 160, "the README is a page: the manual belongs on the site (docs/)"
    first_paragraph = readme.split("\n\n")[1]
    assert first_paragraph.startswith("raygen trains generative models"), first_paragraph


def test_getting_started_shows_the_readmes_demo_output_without_a_copy(site):
    assert "=== demo 1/4: dcgan" in page_text(site, "getting-started")
    assert "=== demo 1/4" not in (REPO / "docs" / "getting-started.md").read_text()
