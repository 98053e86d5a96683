"""Secrets stay where they belong: not in git, not on command lines, not in logs (errors
included), and key/password files are private."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from homewatch.doctor import secret_files
from tests.helpers import ROOT, Broker, clean_env, python_m, running, source_files
from tests.test_end_to_end import publisher_cmd, subscriber_cmd, wait_subscribed


def all_secrets(certs: Path) -> list[str]:
    values = []
    for f in secret_files(certs):
        text = f.read_text()
        values += [line.strip() for line in text.splitlines()
                   if line.strip() and not line.startswith(("#", "-----", "-h", "-p", "--",
                                                              "-u"))]
        if f.name in ("password", "fernet.key") or f.suffix == ".key":
            values.append(text.strip())
    return sorted({v for v in values if len(v) >= 16 and ":" not in v and " " not in v})


def test_no_secret_material_is_tracked_by_git() -> None:
    """No tracked file (in a tree without .git: no file git would not ignore) holds a
    private key, a Fernet key or a password hash."""
    files = source_files(untracked=False)
    fernet = re.compile(r"\b[A-Za-z0-9_-]{43}=")
    pbkdf2 = re.compile(r"\$7\$\d+\$[A-Za-z0-9+/]{16}\$")
    for name in filter(None, files):
        path = ROOT / name
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        assert "PRIVATE KEY-----" not in text or name.startswith("tests/"), name
        assert not fernet.search(text), name
        assert not pbkdf2.search(text), name


@pytest.mark.broker
def test_key_and_password_files_are_private(certs: Path) -> None:
    """Every key and password file the project made is 0600 (no group or world access)."""
    files = secret_files(certs)
    assert len(files) >= 10
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def cmdlines() -> dict[int, str]:
    out = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace")
            except OSError:
                continue
    return out


@pytest.mark.broker
def test_no_secret_on_any_process_command_line(broker: Broker, workdir: Path,
                                               certs: Path) -> None:
    """While broker, subscriber and publisher run, no process's command line holds a secret."""
    secrets = all_secrets(certs)
    assert len(secrets) >= 6
    with running(subscriber_cmd(broker, workdir), cwd=workdir) as sub:
        wait_subscribed(sub)
        with running(publisher_cmd(broker, workdir, "--interval", "0.5"), cwd=workdir):
            time.sleep(2)
            lines = cmdlines()
    assert any("subscriber" in c for c in lines.values())
    assert any("mosquitto" in c for c in lines.values())
    for pid, line in lines.items():
        for secret in secrets:
            assert secret not in line, pid


@pytest.mark.broker
def test_no_secret_in_logs_even_on_errors(broker: Broker, workdir: Path, certs: Path,
                                          tmp_path: Path) -> None:
    """Debug logs of a normal run, a refused password, a bad key, rejections and the
    broker's own log contain no secret."""
    secrets = all_secrets(certs)
    outputs = []
    env = {"HOMEWATCH_LOG_LEVEL": "debug"}
    with running(subscriber_cmd(broker, workdir), cwd=workdir, env=env) as sub:
        wait_subscribed(sub)
        ok = subprocess.run(publisher_cmd(broker, workdir, "--count", "1"), cwd=workdir,
                            env=clean_env(env), capture_output=True, text=True, timeout=60)
        outputs += [ok.stdout, ok.stderr]
        bad = tmp_path / "bad-password"
        bad.write_text("not-the-password-but-long-enough\n")
        bad.chmod(0o600)
        refused = subprocess.run(publisher_cmd(broker, workdir, "--password-file", str(bad)),
                                 cwd=workdir, env=clean_env(env), capture_output=True,
                                 text=True, timeout=60)
        assert refused.returncode == 1
        outputs += [refused.stdout, refused.stderr]
        wrong_key = subprocess.run(
            publisher_cmd(broker, workdir, "--count", "1"), cwd=workdir,
            env=clean_env({**env, "HOMEWATCH_KEY": "x" * 43 + "="}), capture_output=True,
            text=True, timeout=60)
        outputs += [wrong_key.stdout, wrong_key.stderr]
        sub.send_signal(signal.SIGTERM)
        out, err = sub.communicate(timeout=20)
        outputs += [out, err]
    outputs.append(broker.log())
    text = "\n".join(outputs)
    assert "Topic:home/pi-kitchen/temperature" in text and "Not authorized" in text
    for secret in secrets:
        assert secret not in text


def test_settings_printout_masks_environment_secrets(workdir: Path) -> None:
    """--show-settings with secrets in the environment prints them masked."""
    r = subprocess.run(python_m("publisher", "mqtts://localhost/home", "--device", "pi-kitchen",
                                "--show-settings"), cwd=workdir,
                       env=clean_env({"HOMEWATCH_PASSWORD": "pw-from-env-123456",
                                      "HOMEWATCH_KEY": "A" * 43 + "="}),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "pw-from-env-123456" not in r.stdout and "A" * 43 not in r.stdout
    assert os.environ.get("HOMEWATCH_PASSWORD") is None
