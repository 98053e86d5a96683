"""scripts/gen-certs.sh: a private CA and a broker certificate with the right SANs."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from tests.helpers import GEN_CERTS, gen_certs


def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True,
                          check=True).stdout


def sans(cert: Path) -> str:
    return openssl("x509", "-in", str(cert), "-noout", "-ext", "subjectAltName")


def fingerprint(cert: Path) -> str:
    return openssl("x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256")


def test_makes_a_ca_and_a_broker_certificate_it_signed(tmp_path: Path) -> None:
    """The broker certificate verifies against the new CA, for TLS server use."""
    r = gen_certs(tmp_path, "--san", "homeserver.lan", "--san", "192.168.1.10")
    assert "Fingerprint" in r.stdout and "notAfter" in r.stdout
    srv = tmp_path / "broker" / "server.crt"
    out = openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), "-purpose", "sslserver",
                  str(srv))
    assert out.strip().endswith(": OK")
    names = sans(srv)
    for expected in ("DNS:localhost", "IP Address:127.0.0.1", "DNS:broker",
                     "DNS:homeserver.lan", "IP Address:192.168.1.10"):
        assert expected in names


def test_private_keys_are_never_world_readable(tmp_path: Path) -> None:
    """ca.key and server.key are 0600."""
    gen_certs(tmp_path)
    for key in (tmp_path / "ca.key", tmp_path / "broker" / "server.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_broker_gid_makes_the_key_group_readable_only(tmp_path: Path) -> None:
    """--broker-gid 1883 gives the broker's group read access, others none."""
    gen_certs(tmp_path, "--broker-gid", "1883")
    key = tmp_path / "broker" / "server.key"
    st = key.stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (1883, 0o640)


def test_running_again_keeps_the_ca(tmp_path: Path) -> None:
    """A second run keeps the CA and the broker certificate."""
    gen_certs(tmp_path)
    before = fingerprint(tmp_path / "ca.crt"), fingerprint(tmp_path / "broker" / "server.crt")
    r = gen_certs(tmp_path)
    assert "keeping the existing CA" in r.stdout
    after = fingerprint(tmp_path / "ca.crt"), fingerprint(tmp_path / "broker" / "server.crt")
    assert before == after


def test_renew_server_keeps_the_ca_and_adds_sans(tmp_path: Path) -> None:
    """--renew-server reissues the broker certificate under the same CA."""
    gen_certs(tmp_path)
    ca = fingerprint(tmp_path / "ca.crt")
    gen_certs(tmp_path, "--renew-server", "--san", "nas.lan")
    assert fingerprint(tmp_path / "ca.crt") == ca
    assert "DNS:nas.lan" in sans(tmp_path / "broker" / "server.crt")


def test_renew_server_adds_names_and_keeps_those_added_before(tmp_path: Path) -> None:
    """`make broker-cert SAN=...` names more, never fewer: a name or address added by an
    earlier --san stays in both server certificates when another is added."""
    gen_certs(tmp_path, "--san", "nas.lan", "--san", "192.0.2.7")
    gen_certs(tmp_path, "--renew-server", "--san", "homeserver.lan")
    for cert in (tmp_path / "broker" / "server.crt", tmp_path / "dashboard" / "server.crt"):
        names = [n.strip() for n in sans(cert).splitlines()[1].split(",")]
        assert {"DNS:nas.lan", "IP Address:192.0.2.7", "DNS:homeserver.lan"} <= set(names)
        assert len(names) == len(set(names))
    assert "DNS:dashboard" not in sans(tmp_path / "broker" / "server.crt")
    assert "DNS:broker" not in sans(tmp_path / "dashboard" / "server.crt")


def test_force_replaces_the_ca(tmp_path: Path) -> None:
    """--force makes a new CA (and a new broker certificate)."""
    gen_certs(tmp_path)
    ca = fingerprint(tmp_path / "ca.crt")
    gen_certs(tmp_path, "--force")
    assert fingerprint(tmp_path / "ca.crt") != ca


def test_bad_arguments_give_usage_and_exit_2(tmp_path: Path) -> None:
    """Unknown options exit 2 with a clear message."""
    r = subprocess.run(["bash", str(GEN_CERTS), "--out", str(tmp_path), "--bogus"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown argument: --bogus" in r.stderr


def test_relative_out_is_relative_to_where_you_run_it(tmp_path: Path) -> None:
    """--out mycerts writes ./mycerts of the caller, not of the repository."""
    subprocess.run(["bash", str(GEN_CERTS), "--out", "mycerts"], cwd=tmp_path, check=True,
                   capture_output=True)
    assert (tmp_path / "mycerts" / "ca.crt").is_file()
