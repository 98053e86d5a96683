"""The code meets its own bar: ruff's chosen rules and mypy strict, shell scripts strict."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers import ROOT, clean_env


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
    scripts = ROOT / "scripts"
    for script in sorted([*scripts.glob("*.sh"), *scripts.glob("ci/*.sh")]):
        text = script.read_text()
        assert "set -euo pipefail" in text, script
        root = "/.." if script.parent.name == "scripts" else "/../.."
        assert f'cd "$(dirname "$0"){root}"' in text, script
        r = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.startswith("usage:"), script


def test_make_help_lists_the_entry_points() -> None:
    """`make help` names the test target and the others."""
    r = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True,
                       check=True)
    for target in ("test", "lint", "certs", "broker"):
        assert f"make {target}" in r.stdout


def test_make_soak_as_documented_is_not_stopped_by_the_test_timeout() -> None:
    """`make soak` (600 s by default) and every `SOAK_SECONDS=N` the README and `make
    help` show give the soak test a time limit above N (pytest's default of 300 s in
    pyproject would stop it)."""
    dry_run = subprocess.run(["make", "-s", "-n", "soak"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    documented = re.findall(r"SOAK_SECONDS=(?:\$\{SOAK_SECONDS:-)?(\d+)", dry_run)
    for text in ((ROOT / "README.md").read_text(), (ROOT / "Makefile").read_text()):
        documented += re.findall(r"SOAK_SECONDS=(\d+)", text)
    assert documented
    probe = ("import tests.test_soak as t; print(next(m.args[0] for m in "
             "t.test_soak_with_broker_restarts.pytestmark if m.name == 'timeout'))")
    for seconds in sorted(set(documented)):
        r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                           text=True, env=clean_env({"SOAK_SECONDS": seconds}))
        assert r.returncode == 0, r.stderr
        assert float(r.stdout) > float(seconds) + 90, seconds  # the soak, then its drain
