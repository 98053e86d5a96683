"""Provisioning: names, passwords in Mosquitto's format, key rings, ACL, file modes."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from homewatch import provision
from homewatch.errors import ProvisionError
from homewatch.secrets import load_keyring
from tests.helpers import gen_certs, git, homewatch_cli


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("name", ["a/b", "+", "#", "pi#1", "Pi-Kitchen", "-pi", "", "pi kitchen",
                                  "x" * 64, "broker"])
def test_bad_or_reserved_names_are_refused(name: str) -> None:
    """Names outside [a-z0-9][a-z0-9-]* (or reserved) would break ACLs and are refused."""
    with pytest.raises(ProvisionError):
        provision.validate_name(name)


def test_password_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    """Our $7$ hash verifies the same password mosquitto_passwd hashed, and vice versa."""
    pw = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "alice", "s3cret"], check=True)
    encoded = pw.read_text().strip().split(":", 1)[1]
    assert provision.verify_password("s3cret", encoded)
    assert not provision.verify_password("wrong", encoded)
    ours = provision.hash_password("s3cret")
    assert ours.startswith("$7$101$") and provision.verify_password("s3cret", ours)


def test_add_device_makes_private_files_and_acl(tmp_path: Path) -> None:
    """A device gets a 0600 password and key ring, the subscriber a copy of the key."""
    layout = provision.Layout(tmp_path)
    provision.add_identity(layout, "subscriber")
    made = provision.add_identity(layout, "pi-kitchen")
    assert made.key_file is not None
    for f in (layout.password("pi-kitchen"), made.key_file,
              layout.subscriber_key("pi-kitchen"), layout.passwd, layout.acl,
              layout.password("subscriber")):
        assert mode(f) == 0o600, f
    assert made.key_file.read_text() == layout.subscriber_key("pi-kitchen").read_text()
    load_keyring(made.key_file)
    users = provision.read_passwd(layout.passwd)
    assert provision.verify_password(layout.password("pi-kitchen").read_text().strip(),
                                     users["pi-kitchen"])
    acl = layout.acl.read_text()
    assert "user pi-kitchen\ntopic write home/pi-kitchen/#" in acl
    assert "user subscriber\ntopic read home/#" in acl
    assert "pattern" not in acl and "readwrite" not in acl


def test_existing_identity_needs_force(tmp_path: Path) -> None:
    """Adding an existing name fails; --force replaces its password and key."""
    layout = provision.Layout(tmp_path)
    provision.add_identity(layout, "pi-kitchen")
    old_pw = layout.password("pi-kitchen").read_text()
    with pytest.raises(ProvisionError, match="--force"):
        provision.add_identity(layout, "pi-kitchen")
    provision.add_identity(layout, "pi-kitchen", force=True)
    assert layout.password("pi-kitchen").read_text() != old_pw


def test_remove_identity_deletes_material_and_broker_lines(tmp_path: Path) -> None:
    """Removing a device drops its passwd/ACL lines and deletes its password and keys."""
    layout = provision.Layout(tmp_path)
    provision.add_identity(layout, "subscriber")
    provision.add_identity(layout, "pi-kitchen")
    provision.remove_identity(layout, "pi-kitchen")
    assert "pi-kitchen" not in layout.passwd.read_text()
    assert "pi-kitchen" not in layout.acl.read_text()
    assert not layout.client_dir("pi-kitchen").exists()
    assert not layout.subscriber_key("pi-kitchen").exists()


def test_cli_add_list_remove(tmp_path: Path) -> None:
    """`homewatch device add/list/remove` work; remove needs --force; bad names exit 2."""
    out = homewatch_cli(tmp_path, "device", "add", "pi-kitchen").stdout
    assert "provisioned pi-kitchen" in out and "SIGHUP" in out
    listing = homewatch_cli(tmp_path, "device", "list").stdout.splitlines()
    assert listing[0].split() == ["NAME", "ROLE", "KEY", "CREATED", "CERTIFICATE", "EXPIRES"]
    assert listing[1].split()[:2] == ["pi-kitchen", "device"]
    r = homewatch_cli(tmp_path, "device", "remove", "pi-kitchen", check=False)
    assert r.returncode == 2 and "--force" in r.stderr
    homewatch_cli(tmp_path, "device", "remove", "pi-kitchen", "--force")
    r = homewatch_cli(tmp_path, "device", "add", "a/b", check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "invalid identity" in r.stderr


def test_bundle_url_the_broker_certificate_does_not_name_is_warned_with_the_fix(
        tmp_path: Path) -> None:
    """A bundle whose URL host is not in the broker certificate's subjectAltNames (the Pi
    would refuse the broker) gets a warning with the command that adds it; a listed name
    or IP address gets none."""
    certs = tmp_path / "certs"
    gen_certs(certs, "--san", "192.0.2.77")
    r = homewatch_cli(certs, "device", "add", "pi-far", "--bundle", str(tmp_path / "b"),
                      "--url", "mqtts://10.99.0.7:8883/home")
    assert r.returncode == 0, r.stderr
    assert "homewatch: warning: the broker certificate" in r.stderr
    assert "does not name '10.99.0.7'" in r.stderr
    assert "scripts/admin.sh gen-certs --renew-server --san 10.99.0.7" in r.stderr
    for n, host in enumerate(("192.0.2.77", "localhost", "127.0.0.1")):
        r = homewatch_cli(certs, "device", "add", f"pi-near{n}", "--bundle",
                          str(tmp_path / "b"), "--url", f"mqtts://{host}:8883/home")
        assert "warning" not in r.stderr, (host, r.stderr)


def test_generated_files_are_gitignored() -> None:
    """Everything under certs/ except its README is ignored by git."""
    for p in ("certs/ca.key", "certs/clients/pi/password", "certs/broker/passwd", ".env"):
        assert git("check-ignore", "-q", "--no-index", p, check=False).returncode == 0, p
    assert git("check-ignore", "-q", "--no-index", "certs/README.md",
               check=False).returncode == 1


def test_server_init_without_a_demo_device_leaves_the_subscriber_a_keys_directory(
        tmp_path: Path) -> None:
    """With DEMO=0 no device exists yet: the subscriber still gets its (empty) keys
    directory, so it starts and waits for the first `make add-device`."""
    gen_certs(tmp_path)
    layout = provision.Layout(tmp_path)
    assert provision.init_server(layout) == ["subscriber", "healthcheck"]
    assert layout.subscriber_keys.is_dir() and not any(layout.subscriber_keys.iterdir())
    assert stat.S_IMODE(layout.subscriber_keys.stat().st_mode) & 0o007 == 0
