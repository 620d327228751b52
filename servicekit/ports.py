"""Loopback ports: a service binds port 0 itself and announces the port it got.

``free_port()`` picks a port and releases it before the caller's service binds it, so under
parallel test workers another process can take it in between. A service started with ``--port 0``
instead binds its listening socket first (:func:`bind_listener`, the OS picks the port and it
stays held), then writes what it got to ``<data dir>/bound-ports.json``
(:func:`announce_ports`); the launcher (``deploy/launcher.py``) waits for that file.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

__all__ = [
    "PORTS_FILE",
    "free_port",
    "bind_listener",
    "announce_ports",
    "add_announced_ports",
    "read_announced_ports",
]

PORTS_FILE = "bound-ports.json"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it).

    The port is released before the caller's service binds it, so another process can take it in
    between: prefer binding port 0 in the service itself and reading back what it got. Kept for
    processes that cannot do that (Flower's SuperLink/SuperNode take fixed ports).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: the OS picks a free port, held from now on),
    inheritable so that worker processes can serve on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def announce_ports(data_dir: Path, **ports: int) -> None:
    """Write the ports this service holds to ``data_dir/bound-ports.json`` (atomically)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{PORTS_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(ports))
    os.replace(tmp, data_dir / PORTS_FILE)


def add_announced_ports(data_dir: Path, **ports: int) -> None:
    """Add ``ports`` to those already announced in ``data_dir`` (a listener started later, e.g.
    a node's MLLP feed in its one background worker)."""
    announce_ports(data_dir, **{**(read_announced_ports(data_dir) or {}), **ports})


def read_announced_ports(data_dir: Path) -> dict[str, int] | None:
    """The ports a service announced in ``data_dir``, or None before it has."""
    try:
        return {k: int(v) for k, v in json.loads((data_dir / PORTS_FILE).read_text()).items()}
    except (OSError, ValueError):
        return None
