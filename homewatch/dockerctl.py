"""Talking to the Compose stack through the Docker SDK: find the broker, reload it.

Containers are found by their Compose labels (``com.docker.compose.project`` and
``com.docker.compose.service``), which Compose v1 and v2 both set, whatever they name
the containers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from homewatch.errors import HomewatchError


def default_project(directory: Path | None = None) -> str:
    """COMPOSE_PROJECT_NAME, else Compose's default: the directory name, normalised."""
    name = os.environ.get("COMPOSE_PROJECT_NAME")
    if name:
        return name
    base = (directory or Path.cwd()).resolve().name.lower()
    return re.sub(r"[^-_a-z0-9]", "", base)


def find_service(project: str, service: str) -> list[Any]:
    try:
        from docker.client import DockerClient
        from docker.errors import DockerException
    except ImportError:
        raise HomewatchError("the Docker SDK is not installed (pip install "
                             "'homewatch[server]')") from None
    try:
        client = DockerClient.from_env()
        return list(client.containers.list(filters={"label": [
            f"com.docker.compose.project={project}",
            f"com.docker.compose.service={service}"]}))
    except DockerException as exc:
        raise HomewatchError(f"cannot talk to Docker: {exc}") from None


def reload_broker(project: str) -> str:
    """Send SIGHUP to the project's broker: it re-reads passwords, ACL and certificates."""
    from docker.errors import DockerException

    containers = find_service(project, "broker")
    if not containers:
        raise HomewatchError(f"no running broker container in Compose project {project!r} "
                             "(is the stack up? set COMPOSE_PROJECT_NAME if you named it)")
    for container in containers:
        try:
            container.kill(signal="SIGHUP")
        except DockerException as exc:
            raise HomewatchError(f"cannot signal {container.name}: {exc}") from None
    return ", ".join(c.name for c in containers)
