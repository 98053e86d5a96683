"""`homewatch irk` on a fake BlueZ pairing store: keys listed as known-devices lines in the
byte order the publisher resolves with, every adapter, devices without a key left out, a
malformed info file reported in one line while the rest is listed, names kept on one
readable line, `--add` appending only new keys and keeping the file's mode, and a clear
line without root."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from publisher.presence import ah, load_known
from tests.helpers import ROOT, clean_env

# The Bluetooth Core Specification's sample: IRK ec0234a3...9d9b, prand 708194, hash 0dfbaa.
# The kernel (and so BlueZ's store) holds the key least significant octet first: its SMP
# self-test has it as 9b 7d 39 0a ... 02 ec, and BlueZ writes key[0] first.
STORED_KEY = "9B7D390AA610103405ADC857A33402EC"
SPEC_KEY = "ec0234a357c8ad05341010a60a397d9b"
SPEC_RPA = "70:81:94:0D:FB:AA"
HCI0 = "00:1A:7D:DA:71:13"
HCI1 = "5C:F3:70:8B:12:01"


def info(store: Path, adapter: str, device: str, text: str | bytes) -> Path:
    path = store / adapter / device / "info"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def paired(name: str, key: str) -> str:
    """An info file as BlueZ writes it for an LE phone (GKeyFile escapes in the name)."""
    return (f"[General]\nName={name}\nAddressType=public\nSupportedTechnologies=LE;\n"
            f"Trusted=true\nBlocked=false\n\n[IdentityResolvingKey]\nKey={key}\n\n"
            "[LongTermKey]\nKey=00112233445566778899AABBCCDDEEFF\nAuthenticated=2\n"
            "EncSize=16\nEDiv=0\nRand=0\n")


def homewatch(*args: str, uid: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "homewatch.cli", *args]
    if uid is not None:
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "bluetooth"
    path.mkdir(mode=0o700)
    return path


def test_a_key_read_from_the_store_resolves_the_phones_rotating_address(
        store: Path, tmp_path: Path) -> None:
    """The key as BlueZ stores it, added with --add, makes the publisher resolve the
    specification's sample resolvable private address to the phone's name."""
    info(store, HCI0, "4C:57:CA:12:34:56", paired("Annas iPhone", STORED_KEY))
    known = tmp_path / "known-devices"
    r = homewatch("irk", "--add", "--store", str(store), "--known-devices", str(known))
    assert r.returncode == 0, r.stderr
    assert known.read_text() == f"irk:{SPEC_KEY}  Annas iPhone\n"
    assert load_known(known).name_of(SPEC_RPA) == "Annas iPhone"
    prand = bytes.fromhex("4a1b2c")  # and any other address the phone makes with its key
    other = (prand + ah(bytes.fromhex(SPEC_KEY), prand)).hex(":").upper()
    assert load_known(known).name_of(other) == "Annas iPhone"


def test_every_adapter_is_listed_and_a_malformed_file_is_one_line(store: Path) -> None:
    """Devices with a key under several adapters are printed as ready-to-paste lines
    (each key once); devices without a key are left out; a malformed info file or key is
    one line on stderr naming it, and the rest are still listed."""
    info(store, HCI0, "4C:57:CA:12:34:56", paired("Annas iPhone", STORED_KEY))
    info(store, HCI1, "4C:57:CA:12:34:56", paired("Annas iPhone", STORED_KEY))  # twice
    info(store, HCI1, "F0:99:B6:00:00:01", paired("Franks Pixel", "0x" + "11" * 15 + "22"))
    info(store, HCI0, "00:11:22:33:44:55",
         "[General]\nName=Old Headset\n\n[LinkKey]\nKey=00112233445566778899AABBCCDDEEFF\n")
    bad_file = info(store, HCI0, "AA:BB:CC:DD:EE:01", "Key=no section header\n")
    bad_key = info(store, HCI1, "AA:BB:CC:DD:EE:02", paired("Broken", "12345"))
    (store / HCI0 / "settings").write_text("[General]\nDiscoverable=false\n")
    (store / HCI0 / "cache").mkdir()
    r = homewatch("irk", "--store", str(store))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"irk:{SPEC_KEY}  Annas iPhone",
                                     f"irk:22{'11' * 15}  Franks Pixel"]
    problems = r.stderr.splitlines()
    assert len(problems) == 2 and "Traceback" not in r.stderr
    assert str(bad_file) in problems[0] and "not a BlueZ info file" in problems[0]
    assert str(bad_key) in problems[1] and "not 32 hex digits" in problems[1]


def test_odd_names_stay_one_readable_line(store: Path, tmp_path: Path) -> None:
    """Names are sanitized for the file, so no entry can be injected through one:
    newlines and tabs (GKeyFile's escapes) and invisible direction overrides become
    spaces, a leading '=' goes, long names are cut to 64 characters, other scripts and
    emoji stay, and no name means the address."""
    names = {
        "01": ("Anna\\nrm -rf /\\tPhone", "Anna rm -rf / Phone"),
        "02": ("=Zoë\u2019s 📱 \u202eenohp", "Zoë\u2019s 📱 enohp"),  # an apostrophe
        "03": ("Ж" * 100, "Ж" * 64),
        "04": ("", "device AA:BB:CC:DD:EE:04"),
        "05": ("\\s\\sspaced  out\\s", "spaced out"),
        "06": ("Evil\\nirk:" + "ff" * 16 + "  Anna", "Evil irk:" + "ff" * 16 + " Anna"),
    }
    for n, (name, _) in names.items():
        info(store, HCI0, f"AA:BB:CC:DD:EE:{n}", paired(name, f"{n}" * 16))
    known = tmp_path / "known-devices"
    r = homewatch("irk", "--add", "--store", str(store), "--known-devices", str(known))
    assert r.returncode == 0, r.stderr
    lines = known.read_text(encoding="utf-8").splitlines()
    assert lines == [f"irk:{n * 16}  {want}" for n, (_, want) in names.items()]
    irks = load_known(known).irks
    assert sorted(name for _, name in irks) == sorted(want for _, want in names.values())
    assert bytes.fromhex("ff" * 16) not in [key for key, _ in irks]  # nothing injected


def test_add_appends_only_new_keys_keeps_the_mode_and_says_restart(
        store: Path, tmp_path: Path) -> None:
    """--add leaves the entries there alone, skips keys already there (any case), adds
    the others on lines of their own (also after a last line without a newline), keeps
    the file's mode, and says the publisher must be restarted; run again, it adds
    nothing."""
    info(store, HCI0, "4C:57:CA:12:34:56", paired("Annas iPhone", STORED_KEY))
    info(store, HCI0, "F0:99:B6:00:00:01", paired("Franks Pixel", "AB" * 16))
    known = tmp_path / "known-devices"
    before = (f"# MAC or irk:KEY  name\n88:29:9C:00:61:A9  Franks Watch\n"
              f"irk:{SPEC_KEY.upper()}  Anna")
    known.write_text(before)
    known.chmod(0o640)
    r = homewatch("irk", "--add", "--store", str(store), "--known-devices", str(known))
    assert r.returncode == 0, r.stderr
    assert known.read_text() == before + "\nirk:" + "ab" * 16 + "  Franks Pixel\n"
    assert known.stat().st_mode & 0o777 == 0o640
    assert "1 key(s) already in" in r.stdout
    assert "sudo systemctl restart homewatch-publisher" in r.stdout
    assert len(load_known(known)) == 3
    again = homewatch("irk", "--add", "--store", str(store), "--known-devices", str(known))
    assert again.returncode == 0 and "restart" not in again.stdout
    assert known.read_text() == before + "\nirk:" + "ab" * 16 + "  Franks Pixel\n"


def test_its_help_says_what_it_does_and_that_it_needs_root() -> None:
    """`homewatch irk --help` says what the command is for, that it runs as root and that
    the phone is paired first."""
    r = homewatch("irk", "--help")
    text = " ".join(r.stdout.split())
    assert r.returncode == 0
    for words in ("identity resolving key", "rotates its Bluetooth address", "Run as root",
                  "pair the phone first with bluetoothctl"):
        assert words in text, text


def test_a_new_known_devices_file_is_private(store: Path, tmp_path: Path) -> None:
    """--add to a file that does not exist yet makes it readable by its owner only."""
    info(store, HCI0, "4C:57:CA:12:34:56", paired("Annas iPhone", STORED_KEY))
    known = tmp_path / "known-devices"
    r = homewatch("irk", "--add", "--store", str(store), "--known-devices", str(known))
    assert r.returncode == 0, r.stderr
    assert known.stat().st_mode & 0o777 == 0o600


def test_without_root_or_pairing_it_says_what_to_do_in_one_line(store: Path) -> None:
    """Run by another user the root-only store gives one line naming sudo (exit 2); a
    missing store one line naming it (exit 2); a store without keys says to pair the
    phone first (exit 1). Never a traceback."""
    info(store, HCI0, "4C:57:CA:12:34:56", paired("Annas iPhone", STORED_KEY))
    work = Path(tempfile.mkdtemp(prefix="homewatch-irk-"))  # reachable by that user
    try:
        work.chmod(0o755)
        (work / "bluetooth").mkdir(mode=0o700)
        r = homewatch("irk", "--store", str(work / "bluetooth"), uid=4321)
    finally:
        (work / "bluetooth").rmdir()
        work.rmdir()
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and "sudo homewatch irk" in r.stderr
    r = homewatch("irk", "--store", str(store / "missing"))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert "no BlueZ pairing store" in r.stderr
    info(store, HCI0, "4C:57:CA:12:34:56", "[General]\nName=No key\n")
    r = homewatch("irk", "--store", str(store))
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "pair the phone first" in r.stderr and "Traceback" not in r.stderr
