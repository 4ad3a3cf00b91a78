"""A loopback TCP proxy that can be cut and restored, to take a database "down".

Stopping the machine's PostgreSQL would disturb every other test; cutting
the one path between a service and its database is the same outage from
the service's point of view. The tests use it (tests/support/tcp_proxy.py
re-exports it) and so does the Jepsen-style bank workload's nemesis
(loadtest/jepsen_nemesis.py), which runs outside the tests too.
"""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

BUFFER_BYTES = 65536


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._guard = threading.Lock()
        self._open: list[socket.socket] = []
        self._accepting = True
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and break every open one."""
        with self._guard:
            self._accepting = False
            connections, self._open = self._open, []
        for connection in connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def restore(self) -> None:
        with self._guard:
            self._accepting = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._guard:
                accepting = self._accepting
            if not accepting:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._guard:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while chunk := source.recv(BUFFER_BYTES):
                sink.sendall(chunk)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
