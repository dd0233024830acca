"""Every Python program in the repository is linted, extension or not."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import REPO


def _python_programs_without_extension() -> set[str]:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    found = set()
    for name in files:
        path = REPO / name
        if "." in path.name or not path.is_file():
            continue
        with path.open("rb") as fh:
            first = fh.readline()
        if first.startswith(b"#!") and b"python" in first:
            found.add(name)
    return found


def test_ruff_includes_every_python_program_without_extension():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    included = set(config["tool"]["ruff"].get("extend-include", []))
    programs = _python_programs_without_extension()
    assert programs, "expected the lab's Python programs (lab/labctl and the stand-ins)"
    assert programs <= included, f"add to [tool.ruff] extend-include: {sorted(programs - included)}"


def test_ruff_checks_them():
    ruff = str(Path(sys.executable).parent / "ruff")
    proc = subprocess.run([ruff, "check", "--show-files", "."], cwd=REPO, capture_output=True, text=True, check=True)
    for name in _python_programs_without_extension():
        assert str(REPO / name) in proc.stdout, f"ruff does not check {name}"
