"""Pi deployment artefacts: the systemd unit verifies and is hardened; the image has no
amd64-only step (it builds for arm64 too)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.helpers import ROOT

UNIT = ROOT / "deploy" / "homewatch-publisher.service"


def installed_unit(tmp_path: Path) -> Path:
    """The unit as installed, pointing at this machine's homewatch-publisher."""
    exe = shutil.which("homewatch-publisher")
    assert exe, "homewatch-publisher is not installed (pip install -e .)"
    unit = tmp_path / "homewatch-publisher.service"
    unit.write_text(UNIT.read_text().replace("/opt/homewatch/bin/homewatch-publisher", exe))
    return unit


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a complaint."""
    r = subprocess.run(["systemd-analyze", "verify", str(installed_unit(tmp_path))],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "homewatch-publisher.service" not in r.stderr, r.stderr


def test_systemd_unit_is_hardened(tmp_path: Path) -> None:
    """`systemd-analyze security` rates the unit's exposure 2.0 or better ("OK"), and the
    secrets come in as credentials, never as environment values."""
    r = subprocess.run(["systemd-analyze", "security", "--offline=true",
                        str(installed_unit(tmp_path))], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout
    text = UNIT.read_text()
    for needed in ("ProtectSystem=strict", "NoNewPrivileges=yes", "Restart=on-failure",
                   "LoadCredential=password:", "LoadCredential=fernet.key:",
                   # the RAM journal: on /run (tmpfs), kept across restarts
                   "RuntimeDirectory=homewatch", "RuntimeDirectoryPreserve=yes"):
        assert needed in text
    assert "HOMEWATCH_PASSWORD=" not in text and "HOMEWATCH_KEY=" not in text


def test_dockerfile_has_no_architecture_specific_step() -> None:
    """Nothing in the Dockerfile names amd64/x86_64, and the default base is multi-arch."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    assert not re.search(r"amd64|x86_64|x86-64|--platform", text)
    assert "ARG PYTHON_IMAGE=python:3.13-slim" in text
