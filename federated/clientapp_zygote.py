"""Warm ClientApp processes for a SuperNode (a *zygote*).

Flower 1.32's SuperExec starts one ``flwr-clientapp`` process for every message a node gets, and
each one imports torch, Opacus and scikit-learn afresh: about 5 CPU-seconds for a training
message and 3 for an evaluation, far more than the training itself (federated/README.md). So a
SuperNode's supervisor also starts this zygote: one process that imports them once, then for
every ``flwr-clientapp`` launch forks a child that runs Flower's own ``flwr-clientapp`` entry
point, unchanged, with the launcher's arguments, environment, working directory and standard
streams. Training seeds nothing from the fork: DP noise is drawn per round from the OS
(training.py), other randomness from the server's run config.

The launcher is the ``flwr-clientapp`` that :func:`write_launcher` puts first on the Flower
process's PATH: a standard-library script that hands its argv and streams to the zygote over a
Unix socket (0600, in the SuperNode's data dir), relays SIGTERM/SIGINT/SIGHUP to the child and
exits with its status. When the zygote cannot be reached it runs the real ``flwr-clientapp``
instead: slower, never wrong.

Protocol, per connection: the launcher sends ``<length>\\n`` + a JSON request (argv, cwd, env)
with its fds 0-2 attached (SCM_RIGHTS); the zygote answers ``pid N\\n`` after the fork and
``exit CODE\\n`` when the child ends.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import selectors
import signal
import socket
import sys
from pathlib import Path
from typing import Any

__all__ = ["PRELOAD", "serve", "write_launcher", "zygote_command", "zygote_socket_path"]

# What a ClientApp process imports on its way to an answer (the FAB's apps.py imports the
# ServerApp module too). Nothing here may start a thread or open a connection at import.
PRELOAD = (
    "torch",
    "opacus",
    "sklearn.metrics",
    "httpx",
    "flwr.supernode.cli.flwr_clientapp",
    "federated.client_app",
    "federated.training",
    "federated.models",
    "federated.node_data",
    "federated.cohort",
    "federated.budget",
    "federated.server_app",
    "consent.client",
    "servicekit.storage",
)
MAX_REQUEST = 1 << 20


def zygote_socket_path(data_dir: Path) -> Path:
    """The zygote's socket in the SuperNode's data dir, or in a private temporary dir when
    that path is longer than a Unix socket address may be."""
    path = data_dir.resolve() / "clientapp.sock"
    if len(str(path).encode()) <= 100:
        return path
    import tempfile

    return Path(tempfile.mkdtemp(prefix="ipjms-zygote-")) / "clientapp.sock"


def zygote_command(socket_path: Path) -> list[str]:
    return [sys.executable, "-m", "federated.clientapp_zygote", str(socket_path)]


def write_launcher(bin_dir: Path, socket_path: Path) -> Path:
    """``bin_dir/flwr-clientapp``: the launcher the SuperExec finds first on PATH."""
    real = Path(sys.executable).parent / "flwr-clientapp"
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "flwr-clientapp"
    path.write_text(
        f"#!{sys.executable} -S\nSOCKET = {str(socket_path)!r}\nREAL = {str(real)!r}\n" + _LAUNCHER
    )
    path.chmod(0o700)
    return path


# The launcher's body (runs with `python -S`: standard library only, nothing to import slowly).
_LAUNCHER = r"""
import json, os, signal, socket, sys, time

def fallback(why):
    sys.stderr.write(f"flwr-clientapp launcher: {why}; starting {REAL}\n")
    os.execv(REAL, [REAL, *sys.argv[1:]])

def main():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(SOCKET)
        body = json.dumps({"argv": [REAL, *sys.argv[1:]], "cwd": os.getcwd(),
                           "env": dict(os.environ)}).encode()
        socket.send_fds(sock, [f"{len(body)}\n".encode() + body], [0, 1, 2])
        reader = sock.makefile("r")
        first = reader.readline().split()
    except OSError as exc:
        fallback(f"no zygote at {SOCKET} ({exc.__class__.__name__})")
    if len(first) != 2 or first[0] != "pid":
        fallback("the zygote did not start the app")
    pid = int(first[1])
    def relay(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, relay)
    line = reader.readline().split()
    if len(line) == 2 and line[0] == "exit":
        sys.exit(int(line[1]))
    while os.path.exists(f"/proc/{pid}"):  # the zygote went away: wait the child out
        time.sleep(0.2)
    sys.exit(1)

main()
"""


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    conn.settimeout(10)
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
    try:
        head, _, body = data.partition(b"\n")
        size = int(head)
        if not 0 < size <= MAX_REQUEST or len(fds) != 3:
            raise ValueError("malformed launch request")
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise ValueError("launch request cut short")
            body += chunk
        request = json.loads(body)
        if not isinstance(request.get("argv"), list) or not isinstance(request.get("env"), dict):
            raise ValueError("malformed launch request")
        return request, fds
    except (ValueError, OSError):
        for fd in fds:
            os.close(fd)
        raise


def _run_child(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become the launcher's process and run Flower's entry point."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in request["env"].items()})
        os.chdir(str(request.get("cwd") or "/"))
        sys.argv = [str(a) for a in request["argv"]]
        from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

        flwr_clientapp()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - report, then leave with a failure status
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def serve(socket_path: Path) -> None:
    if socket_path.exists():
        socket_path.unlink()
    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)  # the socket is created 0600: only this node's user may launch
    try:
        listener.bind(str(socket_path))
    finally:
        os.umask(old_mask)
    listener.listen(32)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    running: dict[int, tuple[int, socket.socket]] = {}  # pidfd → (pid, launcher connection)

    def stop(*_: object) -> None:
        """Go at once: no interpreter teardown of torch, Opacus and Flower (which took over 10 s
        on a loaded machine); launched ClientApps are children of their own and run on."""
        with contextlib.suppress(OSError):
            socket_path.unlink()
        sys.stdout.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"clientapp zygote ready at {socket_path} (pid {os.getpid()})", flush=True)
    while True:
        for key, _events in sel.select():
            if key.data is None:
                conn, _ = listener.accept()
                try:
                    request, fds = _read_request(conn)
                except (ValueError, OSError) as exc:
                    print(f"launch refused: {exc}", flush=True)
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    sel.close()
                    listener.close()
                    conn.close()
                    for pidfd, (_pid, other) in running.items():
                        os.close(pidfd)
                        other.close()
                    _run_child(request, fds)
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                running[pidfd] = (pid, conn)
                sel.register(pidfd, selectors.EVENT_READ, "child")
                with contextlib.suppress(OSError):  # a gone launcher: the child runs on
                    conn.sendall(f"pid {pid}\n".encode())
            else:
                pidfd = key.fd
                pid, conn = running.pop(pidfd)
                sel.unregister(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):
                    conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
                conn.close()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
