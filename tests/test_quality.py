"""The code meets its own bar: ruff's chosen rules and mypy strict, shell scripts strict."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT


def test_ruff_passes() -> None:
    """ruff (with the rule set in pyproject.toml) finds nothing."""
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_passes() -> None:
    """mypy --strict on homewatch, publisher and subscriber finds nothing."""
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shell_scripts_are_strict_and_have_usage() -> None:
    """Every script sets -euo pipefail, runs from the repo root and answers --help."""
    for script in sorted((ROOT / "scripts").glob("*.sh")):
        text = script.read_text()
        assert "set -euo pipefail" in text, script
        assert 'cd "$(dirname "$0")/.."' in text, script
        r = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.startswith("usage:"), script


def test_make_help_lists_the_entry_points() -> None:
    """`make help` names the test target and the others."""
    r = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True,
                       check=True)
    for target in ("test", "lint", "certs", "broker"):
        assert f"make {target}" in r.stdout
