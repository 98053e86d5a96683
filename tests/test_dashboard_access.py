"""The dashboard's files made by the admin side: certificate, household password, hash,
inventory; modes and groups as the containers need them, the password the owner's alone."""

from __future__ import annotations

import ipaddress
import json
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from homewatch import dashboard_access, passwords, pki, provision
from homewatch.errors import ProvisionError
from tests.helpers import ROOT, clean_env, gen_certs, homewatch_cli

APP_GID = 10001


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def layout(tmp_path: Path) -> provision.Layout:
    gen_certs(tmp_path / "certs")
    return provision.Layout(tmp_path / "certs")


def test_hash_verifies_only_the_password() -> None:
    """The stored hash is salted scrypt: the password verifies, another does not."""
    stored = passwords.hash_password("correct horse battery")
    assert stored.startswith("scrypt$15$8$1$")
    assert passwords.verify_password("correct horse battery", stored)
    assert not passwords.verify_password("correct horse batterY", stored)
    assert stored != passwords.hash_password("correct horse battery")  # salted


@pytest.mark.parametrize("stored", ["", "plain text", "scrypt$15$8$1$AAAA",
                                    "scrypt$40$8$1$AAAA$" + "A" * 44,
                                    "scrypt$15$8$1$!!$" + "A" * 44])
def test_a_broken_hash_is_an_error_not_a_wrong_password(stored: str) -> None:
    """A damaged hash file raises ValueError (and a huge cost is refused, not computed)."""
    with pytest.raises(ValueError):
        passwords.verify_password("anything at all", stored)


def test_generated_passwords_are_long_and_unambiguous() -> None:
    """Generated passwords: 6 groups of 4 from 32 symbols (120 bits), no 0/o/1/l."""
    pw = passwords.new_password()
    groups = pw.split("-")
    assert len(groups) == 6 and all(len(g) == 4 for g in groups)
    assert not set(pw) & set("01lo")
    assert len({passwords.new_password() for _ in range(50)}) == 50


def test_gen_certs_makes_the_dashboard_certificate_from_a_ca_of_its_own(
        layout: provision.Layout) -> None:
    """certs/dashboard/server.crt names the broker's host names and addresses, and is
    signed by the dashboard's own CA (certs/dashboard-ca.crt, for browsers), not by the
    CA Pis trust."""
    crt = layout.root / "dashboard" / "server.crt"
    key = layout.root / "dashboard" / "server.key"
    assert mode(key) == 0o600 and mode(layout.root / "dashboard-ca.key") == 0o600
    subprocess.run(["openssl", "verify", "-CAfile", str(layout.root / "dashboard-ca.crt"),
                    str(crt)], check=True, capture_output=True)
    assert subprocess.run(["openssl", "verify", "-CAfile", str(layout.ca), str(crt)],
                          capture_output=True).returncode != 0

    def names(path: Path) -> set[str]:
        out = subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-ext",
                              "subjectAltName"], capture_output=True, text=True, check=True)
        return {n.strip() for n in out.stdout.splitlines()[1].split(",")}

    broker = names(layout.broker_dir / "server.crt")
    dashboard = names(crt)
    assert dashboard - {"DNS:dashboard"} == broker - {"DNS:broker"}
    assert "DNS:dashboard" in dashboard and "DNS:localhost" in dashboard


def test_server_init_makes_the_password_once_and_shares_only_the_hash(
        layout: provision.Layout) -> None:
    """init makes password (0600) + hash (0640, the app group); again, it keeps them."""
    made = dashboard_access.init_dashboard(layout, app_gid=APP_GID)
    assert made == ["dashboard password"]
    d = layout.root / "dashboard"
    pw = (d / "password").read_text().strip()
    assert mode(d / "password") == 0o600
    assert mode(d / "password.hash") == 0o640 and (d / "password.hash").stat().st_gid == APP_GID
    assert mode(d / "server.key") == 0o640 and (d / "server.key").stat().st_gid == APP_GID
    assert mode(d) == 0o2750 and d.stat().st_gid == APP_GID
    assert passwords.verify_password(pw, (d / "password.hash").read_text())
    assert pw not in (d / "password.hash").read_text()
    assert dashboard_access.init_dashboard(layout, app_gid=APP_GID) == []
    assert (d / "password").read_text().strip() == pw


def test_a_password_the_owner_wrote_gets_its_hash(layout: provision.Layout) -> None:
    """A password file without a hash (written by hand) is hashed by the next init."""
    d = layout.root / "dashboard"
    (d / "password").write_text("my own household phrase\n")
    assert dashboard_access.init_dashboard(layout) == ["dashboard password hash"]
    assert passwords.verify_password("my own household phrase",
                                     (d / "password.hash").read_text())


def test_new_password_replaces_the_hash_and_keeps_the_group(layout: provision.Layout) -> None:
    """`homewatch dashboard password` (make dashboard-password): new password and hash,
    modes kept; a chosen one comes from stdin and must be 12+ characters."""
    dashboard_access.init_dashboard(layout, app_gid=APP_GID)
    d = layout.root / "dashboard"
    old = (d / "password").read_text()
    out = homewatch_cli(layout.root, "dashboard", "password")
    assert "every session has ended" in out.stdout
    new = (d / "password").read_text().strip()
    assert new != old.strip() and new not in out.stdout
    assert passwords.verify_password(new, (d / "password.hash").read_text())
    assert mode(d / "password") == 0o600 and mode(d / "password.hash") == 0o640
    assert (d / "password.hash").stat().st_gid == APP_GID
    short = subprocess.run(["python3", "-m", "homewatch.cli", "--certs", str(layout.root),
                            "dashboard", "password", "--stdin"], input="short\n",
                           capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert short.returncode == 2
    assert short.stderr.strip().splitlines() == [
        "homewatch: error: the dashboard password must be 12 to 256 characters long"]
    with pytest.raises(ProvisionError):
        dashboard_access.set_password(layout, "x" * 300)


def test_inventory_lists_certificate_expiry_and_keys(layout: provision.Layout) -> None:
    """certificates.json: CA, broker, dashboard expiry and each identity, refreshed when
    a device is added or removed."""
    provision.init_server(layout, demo_device="demo-pi")
    dashboard_access.init_dashboard(layout)
    inventory = layout.root / "dashboard" / "certificates.json"
    doc = json.loads(inventory.read_text())
    for name in ("ca", "broker", "dashboard"):
        assert doc[name]["not_after"].endswith("Z")
    assert doc["devices"]["demo-pi"]["key_created"]
    homewatch_cli(layout.root, "device", "add", "pi-kitchen")
    doc = json.loads(inventory.read_text())
    assert doc["devices"]["pi-kitchen"]["role"] == "device"
    assert doc["devices"]["pi-kitchen"]["not_after"]  # the CA key is here: a client cert
    homewatch_cli(layout.root, "device", "remove", "pi-kitchen", "--force")
    assert "pi-kitchen" not in json.loads(inventory.read_text())["devices"]
    assert b"password" not in inventory.read_bytes().lower()


def test_a_dashboard_certificate_from_another_ca_is_reissued(layout: provision.Layout) -> None:
    """A dashboard certificate the dashboard's CA did not sign (one from the project CA)
    is reissued by the next gen-certs; one it signed is kept."""
    kept = (layout.root / "dashboard" / "server.crt").read_bytes()
    gen_certs(layout.root)
    assert (layout.root / "dashboard" / "server.crt").read_bytes() == kept
    subprocess.run(["openssl", "x509", "-in", str(layout.broker_dir / "server.crt"), "-out",
                    str(layout.root / "dashboard" / "server.crt")], check=True)
    gen_certs(layout.root)
    subprocess.run(["openssl", "verify", "-CAfile", str(layout.root / "dashboard-ca.crt"),
                    str(layout.root / "dashboard" / "server.crt")], check=True,
                   capture_output=True)


def test_the_owner_sets_a_chosen_password_without_root(layout: provision.Layout) -> None:
    """`homewatch dashboard password --stdin` run by the owner of certs/ (not root, not in
    the app group) sets the chosen password; the hash stays readable to the app group."""
    dashboard_access.init_dashboard(layout, app_gid=APP_GID)
    owner = 4321
    work = Path(tempfile.mkdtemp(prefix="homewatch-owner-"))  # reachable by that user
    try:
        certs = work / "certs"
        shutil.copytree(layout.root, certs, symlinks=True)
        subprocess.run(["chown", "-R", f"{owner}", str(certs)], check=True)
        subprocess.run(["chgrp", "-R", str(APP_GID), str(certs / "dashboard")], check=True)
        (certs / "dashboard").chmod(0o2750)  # as `make up` leaves it
        work.chmod(0o755)
        r = subprocess.run(["setpriv", f"--reuid={owner}", f"--regid={owner}",
                            "--clear-groups", sys.executable, "-m", "homewatch.cli",
                            "--certs", str(certs), "dashboard", "password", "--stdin"],
                           input="our own household phrase\n", capture_output=True, text=True,
                           cwd=ROOT, env=clean_env())
        assert r.returncode == 0, r.stderr
        d = certs / "dashboard"
        assert passwords.verify_password("our own household phrase",
                                         (d / "password.hash").read_text())
        assert mode(d / "password") == 0o600 and (d / "password").stat().st_uid == owner
        assert mode(d / "password.hash") == 0o640
        assert (d / "password.hash").stat().st_gid == APP_GID
        assert mode(d) == 0o2750
    finally:
        shutil.rmtree(work)


@pytest.fixture
def named_layout(tmp_path: Path) -> provision.Layout:
    """Certificates for a server called homeserver, with homeserver.lan added."""
    out = tmp_path / "certs"
    subprocess.run(["bash", str(ROOT / "scripts" / "gen-certs.sh"), "--out", str(out),
                    "--san", "homeserver.lan", "--san", "192.0.2.55"],
                   env=clean_env({"GEN_CERTS_HOSTNAME": "homeserver"}), check=True,
                   capture_output=True)
    dashboard_access.init_dashboard(provision.Layout(out))
    return provision.Layout(out)


def test_dashboard_urls_follow_the_bind_address_and_the_certificates_names(
        named_layout: provision.Layout) -> None:
    """Published on one address: that URL only. On all addresses: the LAN address first
    (as `make up` says), then the host names with a domain the certificate gives; without
    a LAN address, an address of the certificate that is not loopback."""
    urls = dashboard_access.urls
    assert urls(named_layout, "127.0.0.1", 9443, lan="192.0.2.55") == [
        "https://127.0.0.1:9443/"]
    assert urls(named_layout, "::1", 8443, lan=None) == ["https://[::1]:8443/"]
    assert urls(named_layout, "[::1]", 8443, lan=None) == ["https://[::1]:8443/"]
    assert urls(named_layout, "[::]", 8443, lan="192.0.2.55") == urls(
        named_layout, "0.0.0.0", 8443, lan="192.0.2.55")
    assert urls(named_layout, "0.0.0.0", 8443, lan="192.0.2.55") == [
        "https://192.0.2.55:8443/", "https://homeserver.local:8443/",
        "https://homeserver.lan:8443/"]
    first = urls(named_layout, "0.0.0.0", 8443, lan=None)[0]
    host = first.removeprefix("https://").removesuffix(":8443/").strip("[]")
    assert not ipaddress.ip_address(host).is_loopback
    assert host in pki.subject_alt_names(
        pki.load_cert(named_layout.root / "dashboard" / "server.crt"))


def test_dashboard_url_command_names_the_password_file_never_the_password(
        named_layout: provision.Layout) -> None:
    """`homewatch dashboard url` (what the Compose init service logs): one line with the
    URL for DASHBOARD_BIND:DASHBOARD_PORT and the password's file, not the password; a
    host the certificate does not name gets a warning with the fix."""
    pw = (named_layout.root / "dashboard" / "password").read_text().strip()
    r = subprocess.run([sys.executable, "-m", "homewatch.cli", "--certs", "certs", "dashboard",
                        "url"], cwd=named_layout.root.parent, capture_output=True, text=True,
                       check=True, env=clean_env({"DASHBOARD_BIND": "127.0.0.1",
                                                  "DASHBOARD_PORT": "9443"}))
    assert r.stdout.splitlines() == [
        "dashboard: https://127.0.0.1:9443/ (listening on 127.0.0.1:9443); log in with the "
        "password in certs/dashboard/password (new one: make dashboard-password)"]
    assert pw not in r.stdout + r.stderr and r.stderr == ""
    r = homewatch_cli(named_layout.root, "dashboard", "url", "--bind", "192.0.2.77")
    assert r.stdout.startswith("dashboard: https://192.0.2.77:8443/ (listening on ")
    assert r.stderr.splitlines() == [
        "homewatch: warning: the dashboard's certificate does not name 192.0.2.77: browsers "
        'will refuse it. Fix: make broker-cert SAN="192.0.2.77"']


def test_dashboard_url_with_a_damaged_certificate_warns_and_still_answers(
        named_layout: provision.Layout) -> None:
    """A dashboard certificate that is not one (what the init service meets, then logs)
    is a one-line warning, not a traceback; the line still names the password's file."""
    (named_layout.root / "dashboard" / "server.crt").write_text("not a certificate\n")
    for bind in ("0.0.0.0", "[::1]"):
        r = homewatch_cli(named_layout.root, "dashboard", "url", "--bind", bind)
        assert r.stdout.startswith("dashboard: https://") and "dashboard/password" in r.stdout
        assert "Traceback" not in r.stderr
    assert r.stdout.startswith("dashboard: https://[::1]:8443/ (listening on [::1]:8443)")
    assert r.stderr.splitlines() == [
        f"homewatch: warning: {named_layout.root / 'dashboard' / 'server.crt'} is not a "
        "certificate: remake it with make broker-cert"]
