"""Trust boundaries in the import graph: the LAN-facing dashboard never loads what holds
keys or talks MQTT, not even through a shared module; the Pi's `homewatch irk` loads none
of the server's administration."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT, clean_env

# What the key holder (subscriber), the Pis and the admin side need, the web server not.
FORBIDDEN = (
    "homewatch.secrets", "homewatch.fernet", "homewatch.envelope", "homewatch.mqtt",
    "homewatch.provision", "homewatch.pki", "homewatch.doctor", "homewatch.dockerctl",
    "homewatch.cli", "homewatch.config", "homewatch.admin", "paho", "cryptography.fernet",
    "docker", "publisher", "subscriber",
)

IMPORT_ALL = """
import importlib, json, pkgutil, sys
import dashboard
for info in pkgutil.walk_packages(dashboard.__path__, "dashboard."):
    importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


def test_the_dashboard_imports_no_key_or_mqtt_module() -> None:
    """Importing every module of the dashboard package in a fresh interpreter loads none
    of the modules that load keys, talk MQTT or administer the server."""
    r = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=ROOT, env=clean_env(),
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    modules = json.loads(r.stdout)
    assert "dashboard.app" in modules and "homewatch.history" in modules
    loaded = [m for m in modules for f in FORBIDDEN if m == f or m.startswith(f + ".")]
    assert loaded == [], f"the dashboard loads {loaded}"


# What a Pi does not need: the server's administration (provisioning, PKI, the
# dashboard's access, the doctor, Docker), MQTT and the web server.
ADMIN = ("homewatch.provision", "homewatch.pki", "homewatch.dashboard_access",
         "homewatch.passwords", "homewatch.doctor", "homewatch.dockerctl", "homewatch.mqtt",
         "docker", "paho", "subscriber", "dashboard")

RUN_IRK = """
import json, sys, tempfile
from homewatch import cli
code = cli.main(["irk", "--store", tempfile.mkdtemp()])
print(json.dumps([code, sorted(sys.modules)]))
"""


def test_the_pi_side_irk_command_imports_no_admin_module() -> None:
    """`homewatch irk` (run on a Pi) loads none of the server's administration modules,
    nor MQTT or the web server: the `homewatch` command's admin imports are lazy."""
    r = subprocess.run([sys.executable, "-c", RUN_IRK], cwd=ROOT, env=clean_env(),
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    code, modules = json.loads(r.stdout.splitlines()[-1])
    assert code == 1 and "homewatch.irk" in modules  # an empty store: nothing paired
    loaded = [m for m in modules for f in ADMIN if m == f or m.startswith(f + ".")]
    assert loaded == [], f"`homewatch irk` loads {loaded}"
