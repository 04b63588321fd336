"""A TCP proxy between workers and redis-server that injects network faults, in-test.

This machine has ``ip`` and ``tc`` but neither ``iptables`` nor ``nft``, so a partition
cannot be a kernel packet drop here; and ``tc netem`` on ``lo`` would slow every process
of the test, not one worker. The proxy gives each scenario its own faulty path, needs no
root, and runs on 127.0.0.1 only:

* ``delay`` — every chunk is forwarded ``delay`` seconds after it arrived (requests only:
  each Redis call then takes ``delay`` longer, like a slow link);
* ``partition()`` / ``heal()`` — stop forwarding in both directions, keeping the bytes,
  as the kernel keeps retransmitting through a real partition; healing delivers them in
  order, so a call sent during the partition reaches Redis late, as it would;
* ``drop_replies(n)`` — the next ``n`` replies from Redis are thrown away and their
  connections reset: the command ran, the client never hears of it (a lost reply);
* ``reset_all()`` — reset every open connection.

Threads, two per connection, each bounded by its sockets: closing the proxy closes every
socket, which ends every thread.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator


class FaultProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<upstream>, with faults on demand."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.delay = 0.0
        self._healed = threading.Event()
        self._healed.set()
        self._lock = threading.Lock()
        self._drop = 0
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        self._spawn(self._accept)

    def url(self, prefix: str) -> str:
        """A Redis URL through this proxy, under key prefix ``prefix``."""
        return f"redis://127.0.0.1:{self.port}/0?prefix={prefix}"

    # -- faults -------------------------------------------------------------------------

    def partition(self) -> None:
        """Stop forwarding (both directions); bytes wait in the proxy until heal()."""
        self._healed.clear()

    def heal(self) -> None:
        """Forward again, delivering what waited, in order."""
        self._healed.set()

    def drop_replies(self, count: int = 1) -> None:
        """Throw away the next ``count`` replies and reset their connections."""
        with self._lock:
            self._drop = count

    def reset_all(self) -> None:
        """Reset every open connection (RST, not FIN)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for pair in conns:
            for sock in pair:
                _reset(sock)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    # -- plumbing -----------------------------------------------------------------------

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            pair = (client, server)
            with self._lock:
                self._conns.append(pair)
            done = threading.Barrier(2, action=lambda pair=pair: self._forget(pair))
            self._spawn(self._pump, client, server, True, done)
            self._spawn(self._pump, server, client, False, done)

    def _forget(self, pair: tuple[socket.socket, socket.socket]) -> None:
        """Both directions ended: close the pair."""
        with self._lock:
            if pair in self._conns:
                self._conns.remove(pair)
        for sock in pair:
            sock.close()

    def _pump(
        self, src: socket.socket, dst: socket.socket, request: bool, done: threading.Barrier
    ) -> None:
        self._forward(src, dst, request)
        with contextlib.suppress(threading.BrokenBarrierError):
            done.wait(timeout=60)

    def _forward(self, src: socket.socket, dst: socket.socket, request: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                arrived = time.monotonic()
                self._healed.wait()
                if request and self.delay:
                    time.sleep(max(0.0, arrived + self.delay - time.monotonic()))
                if not request and self._take_drop():
                    _reset(src)
                    _reset(dst)
                    return
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _take_drop(self) -> bool:
        with self._lock:
            if self._drop <= 0:
                return False
            self._drop -= 1
            return True

    def close(self) -> None:
        """Close the listener and every connection; every thread then ends."""
        self._closed = True
        self._healed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self._listener.close()
        self.reset_all()
        for thread in self._threads:
            thread.join(timeout=5)


def _reset(sock: socket.socket) -> None:
    """Close with RST (linger on, zero timeout). SHUT_RD first wakes a thread blocked in
    recv() on it (closing alone would not, on Linux) without sending anything."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def fault_proxy(upstream: int) -> Iterator[FaultProxy]:
    """A proxy for the block; closed (every socket and thread) when it ends."""
    proxy = FaultProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()
