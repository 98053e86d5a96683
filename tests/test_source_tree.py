"""The test suite runs from a source tree without .git (a release tarball): what the tests
ask git (which files the tree has, what is ignored, a repository to clone) is answered
from the tree and its .gitignore alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import clean_env, copy_source_tree

ASK = """
import json, subprocess, tempfile
from pathlib import Path
from tests.helpers import IN_GIT, source_files, source_repository
repo = source_repository(Path(tempfile.mkdtemp()) / "homewatch")
committed = subprocess.run(["git", "-C", str(repo), "ls-files"], capture_output=True,
                           text=True, check=True).stdout.split()
print(json.dumps({"in_git": IN_GIT, "files": source_files(), "committed": committed}))
"""


def test_the_suite_works_in_a_source_tree_without_git(tmp_path: Path) -> None:
    """In a copy of the source tree without .git, the helpers list exactly its files and
    make a clonable repository of them, and the tests that ask git about ignored and
    tracked files pass."""
    export = tmp_path / "homewatch"
    copy_source_tree(export)
    assert not (export / ".git").exists()
    files = sorted(str(p.relative_to(export)) for p in export.rglob("*") if p.is_file())
    env = clean_env({"PYTHONPATH": str(export), "PYTHONDONTWRITEBYTECODE": "1"})
    r = subprocess.run([sys.executable, "-c", ASK], cwd=export, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["in_git"] is False
    assert answer["files"] == files
    assert sorted(answer["committed"]) == files
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_provision.py::test_generated_files_are_gitignored",
         "tests/test_secret_hygiene.py::test_no_secret_material_is_tracked_by_git"],
        cwd=export, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "2 passed" in r.stdout
