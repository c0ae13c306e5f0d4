"""Network faults between real processes: a loopback TCP relay that can slow and cut.

Tests and experiments put a :class:`Relay` between a party and the coordinator
(the party's config names the relay's address; TLS still runs end to end and
stays pinned to the coordinator's certificate) to make an upload slow enough
to interrupt, or to cut every connection at once — a network failure as the
party and the coordinator both see it. Loopback only; every thread ends when
its sockets close, and :meth:`Relay.close` closes them all.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

__all__ = ["Relay"]

_BLOCK = 64 << 10


class Relay:
    """Forward ``127.0.0.1:port`` to ``target`` (HOST:PORT on loopback).

    ``rate`` bounds the bytes per second sent towards the target (None: no
    bound; settable while running); :meth:`cut` drops every open connection.
    """

    def __init__(self, target: str, rate: float | None = None) -> None:
        host, _, port = target.rpartition(":")
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError(f"a relay forwards to loopback only, not {target!r}")
        self.target = ("127.0.0.1", int(port))
        self.rate = rate
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, throttled: bool) -> None:
        started, sent = time.monotonic(), 0
        try:
            while data := source.recv(_BLOCK):
                sink.sendall(data)
                rate = self.rate
                if throttled and rate:
                    sent += len(data)
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(min(ahead, 1.0))
                else:
                    started, sent = time.monotonic(), 0
        except OSError:
            pass
        finally:
            self._drop(source, sink)

    def _drop(self, *sockets: socket.socket) -> None:
        with self._lock:
            for s in sockets:
                self._open.discard(s)
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self) -> None:
        """Drop every open connection (new ones are still relayed)."""
        with self._lock:
            open_now = list(self._open)
        self._drop(*open_now)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
