"""A real Home Assistant Core for the tests: started from its own virtualenv (made by
scripts/ci/install-homeassistant.sh), onboarded and driven only through its public APIs
(REST, and WebSocket for the entity and device registries), its MQTT integration set up
through the same config flow a user clicks through (broker, port, user, password, the
project CA uploaded as a file), then watched through ``/api/states``.

Nothing of Home Assistant is imported here: it pins paho-mqtt 1.6 and lives in its own
virtualenv. Its log stays in the instance's directory and its tail is shown whenever a
wait fails."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import free_port, stop_process

VERSION = "2024.3.3"
DEFAULT_VENV = Path("/opt/homeassistant")
INSTALL = "scripts/ci/install-homeassistant.sh"
DEFAULT_PREFIX = "homeassistant"

State = dict[str, Any]
Check = Callable[[list[State]], Any]


class HomeAssistantError(Exception):
    """Home Assistant did not do what the harness asked."""


class MqttRefused(HomeAssistantError):
    """The MQTT config flow refused the settings (e.g. ``{"base": "cannot_connect"}``)."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(f"Home Assistant refused the MQTT settings: {errors}")
        self.errors = errors


def venv() -> Path:
    """Where Home Assistant's virtualenv is: $HOMEWATCH_HA_VENV or /opt/homeassistant."""
    return Path(os.environ.get("HOMEWATCH_HA_VENV") or DEFAULT_VENV)


def missing() -> str | None:
    """Why Home Assistant cannot run here (with how to install it), or None."""
    python = venv() / "bin" / "python"
    marker = venv() / ".homewatch-homeassistant"
    if not python.exists() or not marker.exists():
        return (f"Home Assistant {VERSION} is not installed in {venv()}: run "
                f"`{INSTALL}` (CI's .ci/run does; HOMEWATCH_HA_VENV=DIR for another place)")
    if marker.read_text().strip() != VERSION:
        return (f"{venv()} holds Home Assistant {marker.read_text().strip()}, not {VERSION}: "
                f"run `{INSTALL}`")
    return None


@dataclass(frozen=True)
class MqttSettings:
    """What a user enters in Home Assistant's MQTT integration. The password is read
    from ``password_file`` only when it is sent to Home Assistant."""

    host: str
    port: int
    ca: Path
    username: str
    password_file: Path
    discovery_prefix: str = DEFAULT_PREFIX


CONFIGURATION = """\
homeassistant:
  name: Homewatch test
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: NL
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: info
    paho.mqtt.client: debug
"""


@dataclass
class HomeAssistant:
    """One Home Assistant process with its configuration directory under ``workdir``."""

    workdir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _token: str = field(default="", repr=False)
    _refresh: str = field(default="", repr=False)
    _token_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def logfile(self) -> Path:
        return self.workdir / "home-assistant.out"

    # -- life cycle --------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> HomeAssistant:
        """Start it, wait until its API answers, and onboard the owner user."""
        reason = missing()
        if reason:
            raise HomeAssistantError(reason)
        self.port = self.port or free_port()
        config = self.workdir / "config"
        tmp = self.workdir / "tmp"
        for d in (config, tmp):
            d.mkdir(parents=True, exist_ok=True)
        (config / "configuration.yaml").write_text(CONFIGURATION.format(port=self.port))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir),
               "TMPDIR": str(tmp), "LANG": "C.UTF-8", "TZ": "UTC"}
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                [str(venv() / "bin" / "python"), "-m", "homeassistant", "-c", str(config),
                 "--skip-pip", "--log-no-color"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        try:
            self._wait_until(lambda: self._get_onboarding() is not None, timeout,
                             "Home Assistant's API never answered")
            self._onboard()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s; its exit code."""
        if self.proc is None:
            return None
        stop_process(self.proc, timeout)
        code = self.proc.returncode
        self.proc = None
        return code

    def rss_kib(self) -> int:
        """Its resident memory now, from /proc."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise HomeAssistantError("no VmRSS in /proc")

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def log_count(self, text: str) -> int:
        """How many lines of its log contain ``text``."""
        return sum(text in line for line in self.log().splitlines())

    def wait_for_log(self, text: str, *, more_than: int = 0, timeout: float = 30.0) -> int:
        """Wait until more than ``more_than`` lines of its log contain ``text``; the count."""
        def probe() -> int:
            count = self.log_count(text)
            return count if count > more_than else 0
        return int(self._wait_until(probe, timeout,
                                    f"its log never had {text!r} (more than {more_than}x)"))

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # -- HTTP ----------------------------------------------------------------------------

    def _raw(self, method: str, path: str, *, body: bytes | None = None,
             headers: dict[str, str] | None = None, timeout: float = 30.0,
             ) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:  # loopback only
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode(errors="replace")
        try:
            return status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return status, text

    def api(self, method: str, path: str, payload: Any = None, *,
            ok: tuple[int, ...] = (200, 201)) -> Any:
        """An authenticated REST call with a JSON body; its JSON answer."""
        headers = {"Authorization": f"Bearer {self._access_token()}"}
        body = None
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        status, answer = self._raw(method, path, body=body, headers=headers)
        if status not in ok:
            raise HomeAssistantError(f"{method} {path}: HTTP {status} {answer}\n"
                                     f"--- Home Assistant log (tail) ---\n{self.log_tail()}")
        return answer

    def _get_onboarding(self) -> Any:
        if self.proc is not None and self.proc.poll() is not None:
            raise HomeAssistantError(f"Home Assistant exited with {self.proc.returncode}\n"
                                     f"{self.log_tail()}")
        if "Failed to create HTTP server" in self.log():  # e.g. its port was taken since
            raise HomeAssistantError(f"Home Assistant could not listen on {self.port}\n"
                                     f"{self.log_tail()}")
        try:
            status, answer = self._raw("GET", "/api/onboarding", timeout=2)
        except OSError:
            return None
        return answer if status == 200 else None

    def _onboard(self) -> None:
        """The owner user (the first onboarding step) and a token: nothing else, since the
        later steps add integrations that call the internet."""
        client_id = self.url + "/"
        status, answer = self._raw(
            "POST", "/api/onboarding/users",
            body=json.dumps({"client_id": client_id, "name": "Owner", "username": "owner",
                             "password": secrets.token_urlsafe(16),
                             "language": "en"}).encode(),
            headers={"Content-Type": "application/json"})
        if status != 200:
            raise HomeAssistantError(f"onboarding refused: HTTP {status} {answer}")
        self._grant({"grant_type": "authorization_code", "code": answer["auth_code"],
                     "client_id": client_id})

    def _grant(self, form: dict[str, str]) -> None:
        status, answer = self._raw(
            "POST", "/auth/token", body=urllib.parse.urlencode(form).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        if status != 200:
            raise HomeAssistantError(f"no token: HTTP {status} {answer}")
        self._token, self._token_at = answer["access_token"], time.monotonic()
        self._refresh = answer.get("refresh_token", self._refresh)

    def _access_token(self) -> str:
        """The access token, refreshed before its 30 minutes run out (a session-long
        instance outlives one)."""
        if time.monotonic() - self._token_at > 20 * 60:
            self._grant({"grant_type": "refresh_token", "refresh_token": self._refresh,
                         "client_id": self.url + "/"})
        return self._token

    # -- states --------------------------------------------------------------------------

    def states(self) -> list[State]:
        """Every entity's state (``GET /api/states``)."""
        return list(self.api("GET", "/api/states"))

    def state(self, entity_id: str) -> State | None:
        """One entity's state, or None when Home Assistant has no such entity."""
        headers = {"Authorization": f"Bearer {self._access_token()}"}
        status, answer = self._raw("GET", f"/api/states/{entity_id}", headers=headers)
        if status == 404:
            return None
        if status != 200:
            raise HomeAssistantError(f"GET /api/states/{entity_id}: HTTP {status} {answer}")
        return dict(answer)

    def wait_for(self, what: str | Check, timeout: float = 30.0, message: str = "", *,
                 where: Callable[[State], Any] | None = None) -> Any:
        """Poll ``/api/states`` until ``what`` holds: an entity id (its state is returned
        once it exists and, given ``where``, ``where(state)`` is true) or a predicate over
        all states (its truthy result is returned). On timeout: an AssertionError with the
        entity's last state and the tail of Home Assistant's log."""
        last: list[State] = []
        if isinstance(what, str):
            entity_id = what

            def check(states: list[State]) -> Any:
                state = next((s for s in states if s["entity_id"] == entity_id), None)
                return state if state and (where is None or where(state)) else None
            label = entity_id
        else:
            check, label = what, getattr(what, "__name__", "the condition")

        def probe() -> Any:
            last[:] = self.states()
            return check(last)
        try:
            return self._wait_until(probe, timeout, message or f"{label} never held")
        except AssertionError as e:
            if isinstance(what, str):
                seen = next((s for s in last if s["entity_id"] == what), None)
                raise AssertionError(f"{e}\n--- last state of {what}: {seen}") from None
            raise

    def _wait_until(self, probe: Callable[[], Any], timeout: float, message: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{message} within {timeout:.0f} s\n"
                    f"--- Home Assistant log (tail, {self.logfile}) ---\n{self.log_tail()}")
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"Home Assistant exited ({self.proc.returncode}) while "
                                     f"waiting: {message}\n{self.log_tail()}")
            time.sleep(0.25)

    # -- registries (WebSocket API: REST has none) -----------------------------------

    def websocket(self, *commands: dict[str, Any]) -> list[Any]:
        """Run WebSocket API commands (e.g. ``{"type": "config/entity_registry/list"}``)
        one after another on one authenticated connection; their results."""
        async def run() -> list[Any]:
            async with aiohttp.ClientSession() as session, \
                    session.ws_connect(self.url + "/api/websocket") as ws:
                await ws.receive_json()  # auth_required
                await ws.send_json({"type": "auth", "access_token": self._access_token()})
                if (answer := await ws.receive_json())["type"] != "auth_ok":
                    raise HomeAssistantError(f"WebSocket authentication failed: {answer}")
                results = []
                for number, command in enumerate(commands, 1):
                    await ws.send_json({"id": number, **command})
                    while (answer := await ws.receive_json()).get("id") != number:
                        pass
                    if not answer.get("success"):
                        raise HomeAssistantError(f"{command}: {answer.get('error')}")
                    results.append(answer["result"])
                return results
        return asyncio.run(asyncio.wait_for(run(), 30))

    def entity_registry(self) -> list[dict[str, Any]]:
        """Every registered entity: entity_id, unique_id, platform, device_id, ..."""
        return list(self.websocket({"type": "config/entity_registry/list"})[0])

    def device_registry(self) -> list[dict[str, Any]]:
        """Every registered device: id, name, identifiers, manufacturer, model, ..."""
        return list(self.websocket({"type": "config/device_registry/list"})[0])

    def entity_id(self, unique_id: str, platform: str = "mqtt") -> str | None:
        """The entity id Home Assistant gave the entity with this unique_id, or None."""
        return next((e["entity_id"] for e in self.entity_registry()
                     if e["unique_id"] == unique_id and e["platform"] == platform), None)

    def wait_for_unique_id(self, unique_id: str, *, where: Callable[[State], Any] | None = None,
                           timeout: float = 30.0) -> State:
        """The state of the MQTT entity with this unique_id, once it is registered and
        has a state (for which ``where`` holds, if given): what a test of discovery
        configs wants without guessing the entity id Home Assistant derives."""
        entity_id = self._wait_until(lambda: self.entity_id(unique_id), timeout,
                                     f"no entity with unique_id {unique_id!r}")
        return dict(self.wait_for(entity_id, timeout, where=where))

    # -- the MQTT integration ------------------------------------------------------------

    def mqtt_entries(self) -> list[dict[str, Any]]:
        """The MQTT config entries (at most one)."""
        return list(self.api("GET", "/api/config/config_entries/entry?domain=mqtt"))

    def reload_mqtt(self) -> None:
        """Reload the MQTT entry: it disconnects and connects again, as at a restart."""
        for entry in self.mqtt_entries():
            self.api("POST", f"/api/config/config_entries/entry/{entry['entry_id']}/reload")

    def remove_mqtt(self) -> None:
        """Delete the MQTT integration (its entities go with it)."""
        for entry in self.mqtt_entries():
            self.api("DELETE", f"/api/config/config_entries/entry/{entry['entry_id']}")

    def setup_mqtt(self, settings: MqttSettings) -> str:
        """Set up (or replace) the MQTT integration through its config flow, as a user
        would: broker, port, user, password, then the CA file uploaded. With a discovery
        prefix other than ``homeassistant`` the options flow sets it. The entry's id; a
        refusal raises MqttRefused with the flow's errors."""
        self.remove_mqtt()
        password = settings.password_file.read_text().strip()
        flow = self.api("POST", "/api/config/config_entries/flow",
                        {"handler": "mqtt", "show_advanced_options": True})
        broker = {"broker": settings.host, "port": settings.port,
                  "username": settings.username, "password": password}
        result = self._flow_step(flow, {**broker, "advanced_options": True})
        result = self._flow_step(result, {**broker, "set_ca_cert": "custom"})
        result = self._flow_step(result, {**broker, "set_ca_cert": "custom",
                                          "certificate": self.upload(settings.ca)})
        if result.get("type") != "create_entry":
            raise MqttRefused(result.get("errors") or {"flow": str(result)})
        entry_id = str(result["result"]["entry_id"])
        if settings.discovery_prefix != DEFAULT_PREFIX:
            self._set_discovery_prefix(entry_id, broker, settings.discovery_prefix)
        return entry_id

    def _flow_step(self, flow: dict[str, Any], data: dict[str, Any],
                   kind: str = "flow") -> dict[str, Any]:
        if flow.get("type") != "form":
            raise HomeAssistantError(f"the MQTT {kind} ended early: {flow}")
        if flow.get("errors"):
            raise MqttRefused(flow["errors"])
        return dict(self.api("POST", f"/api/config/config_entries/{kind}/{flow['flow_id']}",
                             data))

    def _set_discovery_prefix(self, entry_id: str, broker: dict[str, Any],
                              prefix: str) -> None:
        """The options flow: the broker form again (the CA kept), then the options with
        the prefix; birth and will messages off (they would be ACL-denied writes)."""
        flow = self.api("POST", "/api/config/config_entries/options/flow",
                        {"handler": entry_id, "show_advanced_options": True})
        # The entry has a CA already, so its broker form opens with the advanced fields.
        result = self._flow_step(flow, {**broker, "set_ca_cert": "custom"}, "options/flow")
        result = self._flow_step(result, {"discovery": True, "discovery_prefix": prefix,
                                          "birth_enable": False, "will_enable": False},
                                 "options/flow")
        if result.get("type") != "create_entry":
            raise MqttRefused(result.get("errors") or {"options": str(result)})

    def upload(self, path: Path) -> str:
        """``POST /api/file_upload`` (multipart field ``file``): the file's id."""
        boundary = secrets.token_hex(16)
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"{path.name}\"\r\nContent-Type: application/x-x509-ca-cert"
                f"\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        status, answer = self._raw(
            "POST", "/api/file_upload", body=body,
            headers={"Authorization": f"Bearer {self._access_token()}",
                     "Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise HomeAssistantError(f"file upload refused: HTTP {status} {answer}")
        return str(answer["file_id"])
