"""The package layout's import direction: the core knows no face and no family, and families know no face.

Read from the source (every `import`, those inside functions too), so a lazy
import that runs up the layers fails here before it builds a cycle at run time.
The layers, bottom up (docs/architecture.md):

    gen_jobs/core/                           uses nothing above it; a family only by name, through core.registry
    gen_jobs/training/, data/, quality/      the faces' library: never a command or serving; data/ never quality/
    gen_jobs/families/                       never a command or serving; a family never another (only lm/)
    gen_jobs/<command>.py, serving/          use everything below
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

COMMANDS = {"cli", "cli_args", "train", "generate", "verify", "quality_report", "demo"}
LIBRARY = ("core", "training", "data", "quality")


def layer(module: str) -> str | None:
    """The layer of a dotted module name inside raygen; None outside it (and for gen_jobs itself: its version)."""
    parts = module.split(".")
    if parts[0] == "serving":
        return "serving"
    if parts[0] != "gen_jobs" or len(parts) < 2 or parts[1] == "__version__":
        return None
    return "commands" if parts[1] in COMMANDS else parts[1]


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (`from a import b` counts as a and a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def modules(folder: str) -> list[Path]:
    return sorted((REPO / "gen_jobs" / folder).rglob("*.py"))


def upward(folder: str, forbidden: set[str]) -> list[str]:
    return [f"{path.relative_to(REPO)} imports {name}" for path in modules(folder)
            for name in sorted(imports(path)) if layer(name) in forbidden]


def test_the_layers_are_folders_that_exist():
    for folder in (*LIBRARY, "families"):
        assert modules(folder), f"gen_jobs/{folder}/ holds no module"
    assert {p.stem for p in (REPO / "gen_jobs").glob("*.py")} == COMMANDS | {"__init__"}


def test_the_tests_mirror_the_package():
    """A test lives beside what it tests: a folder per library layer and per family, no test file loose at the
    top but the checks over the whole package (this one and the family contract)."""
    from gen_jobs.core import registry

    tests = REPO / "tests"
    for folder in (*LIBRARY, "serving", "deploy", "e2e", "docs", *(f"families/{name}" for name in registry.names())):
        assert sorted((tests / folder).glob("test_*.py")), f"tests/{folder}/ holds no test"
    assert sorted(p.name for p in tests.glob("test_*.py")) == ["test_family_contract.py", "test_layout.py"]


def test_the_core_imports_no_face_and_no_family():
    assert upward("core", {"commands", "serving", "training", "data", "quality", "families"}) == []


@pytest.mark.parametrize("folder", ["training", "data", "quality", "families"])
def test_the_library_and_the_families_import_no_command_and_no_serving(folder):
    assert upward(folder, {"commands", "serving"}) == []


def test_the_data_face_imports_no_quality():
    """quality/ reads datasets (data/); data/ never reaches back up: the figures are scored by the commands."""
    assert upward("data", {"quality"}) == []


def test_a_family_imports_no_other_family_only_the_shared_lm():
    crossing = []
    for folder in sorted(p for p in (REPO / "gen_jobs" / "families").iterdir() if (p / "__init__.py").is_file()):
        for path in sorted(folder.rglob("*.py")):
            for name in sorted(imports(path)):
                parts = name.split(".")
                if parts[:2] == ["gen_jobs", "families"] and len(parts) > 2 and parts[2] not in (folder.name, "lm"):
                    crossing.append(f"{path.relative_to(REPO)} imports {name}")
    assert crossing == []


def test_the_check_sees_a_lazy_import_that_runs_up(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from gen_jobs.generate import generate\n    import serving.app\n")
    assert {layer(name) for name in imports(bad)} >= {"commands", "serving"}
