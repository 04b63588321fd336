"""Private redis-server processes for the tests: standalone servers and a 3-master Cluster.

Every server listens on 127.0.0.1 on a free port, keeps its files in a temporary folder,
runs without persistence unless asked (``--save '' --appendonly no``), and is stopped by
its PID. Tests isolate themselves by key prefix or queue name on a shared server, never
by FLUSHALL.

Without ``redis-server`` on PATH the tests that need it are skipped with a message saying
how to install it; when the CI environment variable is set they fail instead, so CI
never passes by skipping.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import redis

MISSING = (
    "redis-server not found: install Debian's redis-server package (apt-get install redis-server)"
)
_START_TIMEOUT = 20.0


def require_redis_server() -> str:
    """The path of redis-server; skip the test (fail under CI) when it is not installed."""
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return path


def free_port(*, with_bus: bool = False) -> int:
    """A loopback TCP port nobody listens on (and port + 10000 too, for a Cluster bus)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not with_bus:
            return port
        if port + 10000 < 65536 and _is_free(port + 10000):
            return port
    raise RuntimeError("no free loopback port pair for a Redis Cluster node")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, even by SIGKILL,
    so a killed test run never leaves a server behind (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _ping(port: int, replies: tuple[bytes, ...] = (b"+PONG",)) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(replies)
    except OSError:
        return False


@dataclass
class RedisServer:
    """One running redis-server."""

    port: int
    folder: Path
    process: subprocess.Popen[bytes]
    unixsocket: Path | None = None
    remove_folder: bool = False  # the folder was made for this server: delete it on stop

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def log(self) -> str:
        """The end of the server's log file."""
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL if it lingers)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.remove_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the server by its PID, as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start_redis(
    folder: Path | None = None,
    *,
    port: int | None = None,
    appendonly: bool = False,
    unixsocket: bool = False,
    extra: tuple[str, ...] = (),
    started: tuple[bytes, ...] = (b"+PONG",),
) -> RedisServer:
    """Start a private redis-server on loopback and wait until it answers PING.

    Args:
        folder: where its files go (a new temporary folder when None).
        port: the port (a free one when None), e.g. to restart a server where it was.
        appendonly: turn AOF on (``appendfsync everysec``).
        unixsocket: also listen on ``<folder>/redis.sock``.
        extra: more ``--option value`` arguments.
        started: the replies to PING that mean it has started: add ``b"-LOADING"`` for
            one still reading its files, ``b"-NOAUTH"`` for one that wants a password.
    """
    binary = require_redis_server()
    remove_folder = folder is None
    folder = folder or Path(tempfile.mkdtemp(prefix="celeriac-redis-"))
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    sock = folder / "redis.sock" if unixsocket else None
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(folder),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--logfile",
        str(folder / "redis.log"),
        "--daemonize",
        "no",
    ]
    if sock is not None:
        args += ["--unixsocket", str(sock), "--unixsocketperm", "700"]
    process = subprocess.Popen(
        [*args, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - a single call into prctl, no locks
    )
    server = RedisServer(port, folder, process, sock, remove_folder)
    _wait_until_ready(server, started)
    return server


def start_tls_redis(folder: Path) -> tuple[RedisServer, int, Path]:
    """A redis-server that also serves TLS: (the server, its TLS port, its certificate),
    the certificate self-signed for 127.0.0.1 (the test is skipped without openssl or a
    redis-server built with TLS)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found: it makes the test's certificate")
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    request = ("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2")
    files = ("-keyout", str(key), "-out", str(cert))
    names = ("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1")
    subprocess.run(["openssl", *request, *files, *names], check=True, capture_output=True)
    tls_port = free_port()
    options: tuple[str, ...] = ("--tls-port", str(tls_port), "--tls-cert-file", str(cert))
    options += ("--tls-key-file", str(key), "--tls-ca-cert-file", str(cert))
    try:
        server = start_redis(folder / "redis", extra=(*options, "--tls-auth-clients", "no"))
    except RuntimeError as exc:
        pytest.skip(f"this redis-server cannot serve TLS: {exc}")
    return server, tls_port, cert


def _wait_until_ready(server: RedisServer, replies: tuple[bytes, ...] = (b"+PONG",)) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while not _ping(server.port, replies):
        if server.process.poll() is not None:
            raise RuntimeError(f"redis-server exited at start-up:\n{server.log()}")
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"redis-server did not answer PING:\n{server.log()}")
        time.sleep(0.01)


@dataclass
class RedisClusterNodes:
    """A running Redis Cluster of masters without replicas."""

    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A Cluster URL for the broker (any node; the client discovers the rest)."""
        return f"redis://127.0.0.1:{self.nodes[0].port}?cluster=1"

    folder: Path | None = None

    def owner(self, slot: int) -> int:
        """The port of the primary that serves ``slot``."""
        with redis.Redis(port=self.nodes[0].port) as client:
            for first, last, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                if first <= slot <= last:
                    return int(primary[1])
        raise RuntimeError(f"no node serves slot {slot}")

    def begin_move(self, slot: int, to: int) -> Callable[[], int]:
        """Mark ``slot`` as migrating to the node on port ``to``, as a reshard does before
        it moves any key; the returned function moves its keys and hands the slot over
        (returns how many keys moved). Until then the slot's multi-key scripts are refused
        (ASK, then TRYAGAIN), as they are during a real reshard."""
        source = redis.Redis(port=self.owner(slot))
        target = redis.Redis(port=to)
        source_id, target_id = (c.execute_command("CLUSTER MYID") for c in (source, target))
        target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)

        def finish() -> int:
            moved = 0
            while keys := source.execute_command("CLUSTER GETKEYSINSLOT", slot, 10):
                source.execute_command("MIGRATE", "127.0.0.1", to, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
            for node in (target, source):
                node.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
            source.close()
            target.close()
            return moved

        return finish

    def stop(self) -> None:
        """Stop every node by its PID."""
        for node in self.nodes:
            node.stop()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def start_cluster(folder: Path | None = None, masters: int = 3) -> RedisClusterNodes:
    """Start ``masters`` cluster-enabled servers, join them with ``redis-cli --cluster
    create``, and wait until every node reports ``cluster_state:ok``."""
    require_redis_server()
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.fail("redis-cli not found: it comes with Debian's redis-server package")
    cluster = RedisClusterNodes()
    if folder is None:
        folder = cluster.folder = Path(tempfile.mkdtemp(prefix="celeriac-cluster-"))
    try:
        for _ in range(masters):
            port = free_port(with_bus=True)
            cluster.nodes.append(
                start_redis(
                    folder / str(port),
                    port=port,
                    extra=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                    ),
                )
            )
        addresses = [f"127.0.0.1:{n.port}" for n in cluster.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        _wait_cluster_ok(cli, cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_cluster_ok(cli: str, cluster: RedisClusterNodes) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    for node in cluster.nodes:
        while True:
            info = subprocess.run(
                [cli, "-p", str(node.port), "cluster", "info"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if "cluster_state:ok" in info.stdout:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis Cluster not ready:\n{info.stdout}{info.stderr}")
            time.sleep(0.05)


class Shared:
    """Servers shared by every test of a session, started on first use."""

    server: RedisServer | None = None
    cluster: RedisClusterNodes | None = None

    @classmethod
    def get_server(cls) -> RedisServer:
        """The session's standalone server."""
        if cls.server is None:
            cls.server = start_redis()
        return cls.server

    @classmethod
    def get_cluster(cls) -> RedisClusterNodes:
        """The session's Cluster."""
        if cls.cluster is None:
            cls.cluster = start_cluster()
        return cls.cluster

    @classmethod
    def stop(cls) -> None:
        """Stop whatever was started (idempotent)."""
        for running in (cls.server, cls.cluster):
            if running is not None:
                with contextlib.suppress(Exception):
                    running.stop()
        cls.server = cls.cluster = None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's private standalone redis-server."""
    yield Shared.get_server()
    Shared.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterNodes]:
    """The session's private 3-master Redis Cluster."""
    yield Shared.get_cluster()
    Shared.stop()
