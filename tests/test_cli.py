"""Command lines: settings order (defaults < env < CLI), masked secrets, and bad input
giving one clear line on stderr with exit code 2 - never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from homewatch.secrets import Secret
from publisher import settings as pub_settings
from subscriber import settings as sub_settings
from tests.helpers import clean_env, python_m

URL = "mqtts://localhost:8883/home"


def run(module: str, *args: str, cwd: Path, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(python_m(module, *args), cwd=cwd, env=clean_env(env),
                           capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("module", "args", "env", "message"), [
    ("publisher", [], {}, "missing broker URL"),
    ("publisher", ["http://x/home"], {}, "expected mqtts://"),
    ("publisher", ["mqtt://broker.example.com/home"], {}, "use mqtts://"),
    ("publisher", ["mqtt://localhost/home"], {}, "--allow-plaintext"),
    ("publisher", [URL, "--interval", "abc"], {}, "--interval: could not convert"),
    ("publisher", [URL, "--interval", "-1"], {}, "--interval: must be greater than 0"),
    ("publisher", [URL], {"HOMEWATCH_INTERVAL": "soon"}, "HOMEWATCH_INTERVAL"),
    ("publisher", [URL, "--temperature", "lava"], {}, "invalid choice"),
    ("publisher", [URL, "--password", "hunter2"], {}, "unrecognized arguments"),
    ("publisher", [URL, "--device", "Pi/1"], {}, "invalid identity name"),
    ("publisher", [URL, "--device", "pi-attic"], {}, "key ring file not found"),
    ("publisher", [URL, "--device", "pi-kitchen", "--known-devices", "nope"], {},
     "known-devices file not found"),
    ("publisher", [URL, "--device", "pi-kitchen"], {"HOMEWATCH_KEY": "not-a-key"},
     "not a Fernet key"),
    ("publisher", [URL, "--device", "pi-kitchen", "--interval", "2", "--scan-duration", "3"],
     {}, "--scan-duration (3 s) must not be longer than --interval (2 s)"),
    ("publisher", [URL, "--device", "pi-kitchen", "--room", "x" * 65], {},
     "--room: 'xxx"),
    ("publisher", [URL, "--device", "pi-kitchen"], {"HOMEWATCH_ROOM": "  "},
     "is not a room name (1-64 printable characters"),
    ("publisher", [URL, "--device", "pi-kitchen", "--room", "Kitchen\x1b[2J"], {},
     "is not a room name"),
    ("publisher", [URL, "--device", "pi-kitchen", "--stall-cycles", "-1"], {},
     "--stall-cycles: must be 0 (off) or more"),
    ("subscriber", [URL, "--room-dwell", "-1"], {}, "--room-dwell"),
    ("subscriber", [], {}, "missing broker URL"),
    ("subscriber", [URL, "--ttl", "0"], {}, "--ttl: must be greater than 0"),
    ("subscriber", [URL, "--keys-dir", "nowhere"], {}, "keys directory not found"),
    ("subscriber", [URL], {"HOMEWATCH_JSON": "maybe"}, "HOMEWATCH_JSON: not a boolean"),
    ("subscriber", [URL, "--ca", "missing.crt"], {}, "CA certificate not found"),
])
def test_bad_input_gives_one_line_and_exit_2(workdir: Path, module: str, args: list[str],
                                             env: dict[str, str], message: str) -> None:
    """Every kind of bad input is one line on stderr and exit code 2."""
    r = run(module, *args, cwd=workdir, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"{module}: error: ") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_settings_order_is_defaults_then_env_then_cli(workdir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An env value overrides the default; a CLI value overrides the env."""
    monkeypatch.chdir(workdir)
    env = {"HOMEWATCH_INTERVAL": "30", "HOMEWATCH_DEVICE": "pi-kitchen",
           "HOMEWATCH_TEMPERATURE": "thermal"}
    s = pub_settings.build([URL], env)
    assert (s.interval, s.device, s.temperature, s.scan_duration) == (30.0, "pi-kitchen",
                                                                       "thermal", 5.0)
    s = pub_settings.build([URL, "--interval", "7"], env)
    assert s.interval == 7.0
    env["HOMEWATCH_URL"] = "mqtts://other:1234/flat"
    assert str(pub_settings.build([], env).connection.url) == "mqtts://other:1234/flat"
    assert str(pub_settings.build([URL], env).connection.url) == URL


def test_a_pis_room_is_a_setting_and_defaults_to_its_device_name(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--room (or HOMEWATCH_ROOM) names the Pi's room, trimmed; without it the room is
    the device name. The subscriber's --room-hysteresis and --room-dwell default to 5 dB
    and 30 s."""
    monkeypatch.chdir(workdir)
    base = [URL, "--device", "pi-kitchen"]
    assert pub_settings.build(base, {}).room == "pi-kitchen"
    assert pub_settings.build(base, {"HOMEWATCH_ROOM": " Living room "}).room == "Living room"
    assert pub_settings.build([*base, "--room", "Küche"], {"HOMEWATCH_ROOM": "x"}).room == (
        "Küche")
    s = sub_settings.build([URL], {})
    assert (s.room_hysteresis, s.room_dwell) == (5.0, 30.0)
    s = sub_settings.build([URL, "--room-hysteresis", "8"], {"HOMEWATCH_ROOM_DWELL": "60"})
    assert (s.room_hysteresis, s.room_dwell) == (8.0, 60.0)


def test_scan_duration_may_equal_the_interval_and_the_default_fits_a_short_one(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scan as long as the interval (continuous scanning, as the README says) is
    accepted; a 2 s interval with the default scan duration scans for 2 s."""
    monkeypatch.chdir(workdir)
    base = [URL, "--device", "pi-kitchen", "--scanner", "bleak"]
    s = pub_settings.build([*base, "--interval", "10", "--scan-duration", "10"], {})
    assert s.scan_duration == 10.0
    s = pub_settings.build([*base, "--interval", "2"], {})
    assert (s.interval, s.scan_duration) == (2.0, 2.0)
    s = pub_settings.build([*base], {"HOMEWATCH_INTERVAL": "30"})
    assert s.scan_duration == 5.0


def test_settings_are_frozen(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings cannot change after start."""
    monkeypatch.chdir(workdir)
    s = sub_settings.build([URL], {})
    with pytest.raises(AttributeError):
        s.ttl = 1  # type: ignore[misc]


def test_password_comes_from_file_or_env_and_prints_masked(workdir: Path, certs: Path) -> None:
    """--show-settings masks the password and key ring whether from file or env."""
    pw = (certs / "clients" / "pi-kitchen" / "password").read_text().strip()
    key = (certs / "clients" / "pi-kitchen" / "fernet.key").read_text().strip()
    r = run("publisher", URL, "--device", "pi-kitchen", "--show-settings", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert pw not in r.stdout and key not in r.stdout and "********" in r.stdout
    r = run("publisher", URL, "--device", "pi-kitchen", "--show-settings", cwd=workdir,
            env={"HOMEWATCH_PASSWORD": "env-secret-123"})
    assert "env-secret-123" not in r.stdout and "********" in r.stdout


def test_env_password_wins_over_the_file(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HOMEWATCH_PASSWORD, when set, is used instead of the password file."""
    monkeypatch.chdir(workdir)
    s = sub_settings.build([URL], {"HOMEWATCH_PASSWORD": "from-env"})
    assert s.connection.password == Secret("from-env")
    assert "from-env" not in repr(s)


def test_help_lists_env_names(workdir: Path) -> None:
    """--help names each option's HOMEWATCH_* variable."""
    r = run("subscriber", "--help", cwd=workdir)
    assert r.returncode == 0
    for name in ("HOMEWATCH_URL", "HOMEWATCH_TTL", "HOMEWATCH_KEYS_DIR", "HOMEWATCH_JSON"):
        assert name in r.stdout


def test_readme_publisher_table_matches_the_options() -> None:
    """Each row of the README's publisher table is a real option with that variable, and
    the table lists every publisher option but the common ones named under it."""
    from tests.helpers import ROOT
    text = (ROOT / "README.md").read_text()
    table = text[text.index("Publisher (`publisher --help`):"):]
    table = table[:table.index("\n\n", table.index("| option |"))]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| `")]
    documented = {}
    for option, env in rows:
        name = option.strip().strip("`").split()[0].lstrip("-").lower()
        documented[name] = env.strip().strip("`")
    by_name = {o.name: o for o in pub_settings.OPTIONS}
    for name, env in documented.items():
        assert name in by_name, f"README documents --{name}, which does not exist"
        assert by_name[name].env == env, name
    common = {"allow-plaintext", "show-settings", "log-level", "client-cert", "client-key",
              "sysfs", "count"}
    missing = set(by_name) - set(documented) - common
    assert not missing, f"options missing from the README table: {sorted(missing)}"


def test_bundle_env_gives_url_and_device_below_env_and_cli(tmp_path: Path, certs: Path) -> None:
    """--credentials DIR with homewatch.env: its URL and device are used unless the
    environment or the command line say otherwise; nothing else is taken from it."""
    creds = tmp_path / "pi-kitchen"
    creds.mkdir()
    for f in ("ca.crt",):
        (creds / f).write_bytes((certs / f).read_bytes())
    for f in ("password", "fernet.key"):
        (creds / f).write_bytes((certs / "clients" / "pi-kitchen" / f).read_bytes())
        (creds / f).chmod(0o600)
    (creds / "homewatch.env").write_text(
        "# Homewatch publisher settings\nHOMEWATCH_URL=mqtts://bundle.lan:8883/house\n"
        "HOMEWATCH_DEVICE=pi-kitchen\nHOMEWATCH_KEY=not-a-key\nHOMEWATCH_INTERVAL=1\n")
    s = pub_settings.build(["--credentials", str(creds)], {})
    assert (s.connection.url.host, s.connection.url.base, s.device) == (
        "bundle.lan", "house", "pi-kitchen")
    assert s.interval == 10.0  # only the URL and the device come from the bundle
    s = pub_settings.build(["--credentials", str(creds)],
                           {"HOMEWATCH_URL": "mqtts://env.lan:8883/home"})
    assert s.connection.url.host == "env.lan"
    s = pub_settings.build(["mqtts://cli.lan:8883/home", "--credentials", str(creds)],
                           {"HOMEWATCH_URL": "mqtts://env.lan:8883/home"})
    assert s.connection.url.host == "cli.lan"
