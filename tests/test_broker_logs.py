"""The broker's log holds what matters, from the project's own configs: each client's
connection, refusals and errors; not the autosave every second."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import (
    BROKER_CONF,
    BROKER_MTLS_CONF,
    Broker,
    paho_client,
    password,
    stop_client,
)

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("conf", [BROKER_CONF, BROKER_MTLS_CONF], ids=["password", "mtls"])
def test_broker_log_has_connections_and_refusals_but_no_autosave(certs: Path, tmp_path: Path,
                                                                 conf: Path) -> None:
    """A device's connection and the refused clients are logged; the database saved
    meanwhile (once a second) is not."""
    broker = Broker(certs=certs, workdir=tmp_path / "broker", conf=conf).start()
    try:
        device = f"kitchen-{uuid.uuid4().hex[:6]}"
        keys = certs / "clients" / "pi-kitchen"
        client, rc = paho_client(broker, certs, "pi-kitchen", password(certs, "pi-kitchen"),
                                 client_id=device,
                                 cert=(keys / "client.crt", keys / "client.key"))
        stop_client(client)
        assert rc is not None and not rc.is_failure
        refused = [paho_client(broker, certs, None, None, client_id="anon")[0]]
        if conf == BROKER_CONF:
            refused.append(paho_client(broker, certs, "pi-kitchen", "wrong",
                                       client_id="wrong")[0])
        for c in refused:
            stop_client(c)
        db = tmp_path / "broker" / "data" / "mosquitto.db"
        deadline = time.monotonic() + 10
        while not (db.exists() and db.stat().st_mtime > time.time() - 1):
            assert time.monotonic() < deadline, "the broker never saved its database"
            time.sleep(0.2)
        time.sleep(2.5)  # a few more autosaves
    finally:
        broker.stop()
    log = broker.log()
    assert "Saving in-memory database" not in log
    assert "New client connected from 127.0.0.1" in log
    assert f" as {device} (" in log and "u'pi-kitchen'" in log
    assert f"Client {device} disconnected." in log
    if conf == BROKER_CONF:
        assert log.count("disconnected, not authorised.") == 2
    else:
        assert "OpenSSL Error" in log or "Client connection from 127.0.0.1 failed" in log
