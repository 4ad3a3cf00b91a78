"""Every PostgreSQL connection notices a silently dead peer: TCP keepalive and a user timeout.

PostgreSQL's own timeouts run on the server; when the network between
them dies without a FIN or RST, only the client's kernel can tell, through
the socket options libpq sets from the engine's connect arguments.
"""

from __future__ import annotations

import socket

import pytest
from sqlalchemy import Connection

from service.stores import engines
from tests.support.postgres import server_url

pytestmark = pytest.mark.postgres

TCP_OPTIONS = {
    "TCP_KEEPIDLE": socket.TCP_KEEPIDLE,
    "TCP_KEEPINTVL": socket.TCP_KEEPINTVL,
    "TCP_KEEPCNT": socket.TCP_KEEPCNT,
    "TCP_USER_TIMEOUT": socket.TCP_USER_TIMEOUT,
}


def socket_options(connection: Connection) -> dict[str, int]:
    """The keepalive and user-timeout options of the driver's own socket."""
    driver_connection = connection.connection.dbapi_connection
    assert driver_connection is not None
    with socket.fromfd(driver_connection.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM) as peer:
        options = {"SO_KEEPALIVE": peer.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)}
        for name, option in TCP_OPTIONS.items():
            options[name] = peer.getsockopt(socket.IPPROTO_TCP, option)
    return options


def test_every_connection_carries_keepalive_and_a_user_timeout() -> None:
    """Each pooled connection probes an idle peer and gives up on unacknowledged data in time."""
    engine = engines.build_engine(server_url(), lock_timeout_ms=1000, pool_size=1)
    try:
        with engine.connect() as connection:
            options = socket_options(connection)
    finally:
        engine.dispose()
    print(f"client socket options: {options}")
    assert options == {
        "SO_KEEPALIVE": 1,
        "TCP_KEEPIDLE": engines.KEEPALIVE_IDLE_SECONDS,
        "TCP_KEEPINTVL": engines.KEEPALIVE_INTERVAL_SECONDS,
        "TCP_KEEPCNT": engines.KEEPALIVE_COUNT,
        "TCP_USER_TIMEOUT": engines.TCP_USER_TIMEOUT_MS,
    }
