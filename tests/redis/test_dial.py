"""dial.py: a connection to a standalone Redis and its handshake, without redis-py.

Every connection is made to a real redis-server; redis-py appears only as an independent
client that sets the servers up (ACL users).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest

import celeriac
import redis
from celeriac.brokers.redis import errors
from celeriac.brokers.redis.connection import translate
from celeriac.brokers.redis.dial import TLS, Endpoint, connect
from tests.redis_server import RedisServer, free_port, start_redis, start_tls_redis

PASSWORD = "s3cret"


def dial(url: str) -> socket.socket:
    """A connection made by dial.connect, as wire.py makes one."""
    endpoint = Endpoint.from_url(url)
    assert endpoint is not None, f"dial does not take {url}"
    return connect(endpoint, lib_name="celeriac-test", lib_version="1.2.3")


def call(sock: socket.socket, *args: str | int) -> Any:
    """One command on the socket and its reply, read with a reader of the test's own."""
    command: tuple[Any, ...] = args  # hiredis's stub says a 1-tuple: any length is
    sock.sendall(hiredis.pack_command(command))
    reader = hiredis.Reader()
    while (reply := reader.gets()) is False:
        data = sock.recv(65536)
        assert data, "the server closed the connection"
        reader.feed(data)
    return reply


def client_info(sock: socket.socket) -> dict[str, str]:
    """CLIENT INFO of this connection, as a dict."""
    text: bytes = call(sock, "CLIENT", "INFO")
    return dict(field.split("=", 1) for field in text.decode().split())


def assert_clean(sock: socket.socket) -> None:
    """The connection answers PING with PONG and has nothing more to read: the handshake
    read every reply it asked for."""
    assert call(sock, "PING") == b"PONG"
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(1)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server of this module's own, on TCP and a Unix socket."""
    started = start_redis(tmp_path_factory.mktemp("dial"), unixsocket=True)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server with a password, and ACL users alice (pw), bob (p/w) and carol (pw, who
    may not run CLIENT)."""
    started = start_redis(
        tmp_path_factory.mktemp("locked"),
        extra=("--requirepass", PASSWORD),
        started=(b"-NOAUTH",),
    )
    try:
        with redis.Redis(port=started.port, password=PASSWORD) as admin:
            admin.execute_command("ACL", "SETUSER", "alice", "on", ">pw", "~*", "&*", "+@all")
            admin.execute_command("ACL", "SETUSER", "bob", "on", ">p/w", "~*", "&*", "+@all")
            admin.execute_command(
                "ACL", "SETUSER", "carol", "on", ">pw", "~*", "&*", "+@all", "-client"
            )
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, int, Path]]:
    """A server that also serves TLS: (the server, its TLS port, its certificate), the
    certificate self-signed for 127.0.0.1 (as tests/redis/test_server.py's fixture)."""
    started, tls_port, cert = start_tls_redis(tmp_path_factory.mktemp("tls"))
    yield started, tls_port, cert
    started.stop()


# --- connecting over TCP and a Unix socket --------------------------------------------


def test_a_tcp_connection_is_ready_and_clean(server: RedisServer) -> None:
    with dial(f"redis://127.0.0.1:{server.port}/0?socket_timeout=7") as sock:
        assert sock.gettimeout() == 7.0  # the socket timeout, no longer the connect one
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        info = client_info(sock)
        assert info["resp"] == "3" and info["db"] == "0"
        assert_clean(sock)


def test_keepalive_can_be_turned_off(server: RedisServer) -> None:
    with dial(f"redis://127.0.0.1:{server.port}?socket_keepalive=false") as sock:
        assert not sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)


def test_the_client_name_is_set(server: RedisServer) -> None:
    with dial(f"redis://127.0.0.1:{server.port}/0?client_name=dial-test") as sock:
        assert client_info(sock)["name"] == "dial-test"
        assert_clean(sock)


def test_the_library_name_and_version_are_given(server: RedisServer) -> None:
    with dial(f"redis://127.0.0.1:{server.port}/0") as sock:
        if call(sock, "COMMAND", "INFO", "CLIENT|SETINFO") == [None]:
            pytest.skip("Redis before 7.2 has no CLIENT SETINFO (see the test after this)")
        info = client_info(sock)
        assert (info["lib-name"], info["lib-ver"]) == ("celeriac-test", "1.2.3")


def test_a_refused_client_setinfo_is_ignored_and_its_reply_read(locked: RedisServer) -> None:
    # carol may not run CLIENT: NOPERM for SETINFO, as Redis before 7.2 answers ERR.
    with dial(f"redis://carol:pw@127.0.0.1:{locked.port}/2") as sock:
        assert call(sock, "ACL", "WHOAMI") == b"carol"
        assert_clean(sock)


def test_a_unix_socket_url_connects_to_its_database(server: RedisServer) -> None:
    with dial(f"unix://{server.unixsocket}?db=1&client_name=over-unix") as sock:
        assert sock.family == socket.AF_UNIX
        info = client_info(sock)
        assert (info["db"], info["name"]) == ("1", "over-unix")
        assert "U" in info["flags"]
        assert_clean(sock)


# --- databases ------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "db"), [("/3", "3"), ("/0?db=4", "4"), ("/3?db=5", "5")])
def test_the_database_is_selected(server: RedisServer, path: str, db: str) -> None:
    with dial(f"redis://127.0.0.1:{server.port}{path}") as sock:
        assert client_info(sock)["db"] == db
        assert_clean(sock)


def test_a_database_past_the_servers_databases_is_refused(server: RedisServer) -> None:
    with pytest.raises(errors.ResponseError, match="DB index is out of range"):
        dial(f"redis://127.0.0.1:{server.port}/16")  # databases is 16: 0 to 15


# --- passwords and ACL users ----------------------------------------------------------


@pytest.mark.parametrize(
    ("userinfo", "query", "user"),
    [
        (f":{PASSWORD}@", "", b"default"),
        ("", f"?password={PASSWORD}", b"default"),  # redis-py reads ?password= too
        ("alice:pw@", "", b"alice"),
        ("bob:p%2Fw@", "", b"bob"),  # percent-encoded: the password is p/w
        ("", "?username=alice&password=pw", b"alice"),
    ],
)
def test_the_right_credentials_are_accepted(
    locked: RedisServer, userinfo: str, query: str, user: bytes
) -> None:
    with dial(f"redis://{userinfo}127.0.0.1:{locked.port}/1{query}") as sock:
        assert call(sock, "ACL", "WHOAMI") == user
        assert client_info(sock)["db"] == "1"
        assert_clean(sock)


@pytest.mark.parametrize("userinfo", ["", ":wrong@", "alice:wrong@", "nobody:pw@", "alice@"])
def test_wrong_or_missing_credentials_are_an_authentication_error(
    locked: RedisServer, userinfo: str
) -> None:
    with pytest.raises(errors.AuthenticationError):
        dial(f"redis://{userinfo}127.0.0.1:{locked.port}/0")


def test_a_user_without_a_password_is_logged_in_as_that_user(server: RedisServer) -> None:
    # As redis-py: AUTH <user> "" (a user without a password is not the default user).
    with redis.Redis(port=server.port) as admin:
        admin.execute_command("ACL", "SETUSER", "dave", "on", "nopass", "~*", "&*", "+@all")
    with dial(f"redis://dave@127.0.0.1:{server.port}/0") as sock:
        assert call(sock, "ACL", "WHOAMI") == b"dave"


def test_no_socket_is_left_open_by_a_failed_handshake(locked: RedisServer) -> None:
    before = open_fds()
    for url in (f"redis://:wrong@127.0.0.1:{locked.port}", f"redis://127.0.0.1:{locked.port}"):
        with pytest.raises(errors.AuthenticationError) as caught:
            dial(url)
        # The error (its traceback holds connect's frames) is alive: only a socket closed
        # before raising is gone by now.
        assert open_fds() == before, caught.value


# --- TLS ------------------------------------------------------------------------------


def test_tls_with_the_ca_connects(tls_server: tuple[RedisServer, int, Path]) -> None:
    _, tls_port, cert = tls_server
    url = f"rediss://127.0.0.1:{tls_port}/2?ssl_ca_certs={cert}&ssl_min_version=TLSv1_3"
    with dial(url) as sock:
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() == "TLSv1.3"
        assert client_info(sock)["db"] == "2"
        assert call(sock, "PING") == b"PONG"


def test_tls_without_verification_connects(tls_server: tuple[RedisServer, int, Path]) -> None:
    _, tls_port, _ = tls_server
    with dial(f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=none") as sock:
        assert call(sock, "PING") == b"PONG"


def test_an_untrusted_certificate_is_a_connection_error_caused_by_it(
    tls_server: tuple[RedisServer, int, Path],
) -> None:
    _, tls_port, _ = tls_server
    before = open_fds()
    with pytest.raises(errors.ConnectionError, match=f"connecting to 127.0.0.1:{tls_port}") as e:
        dial(f"rediss://127.0.0.1:{tls_port}/0")
    assert isinstance(e.value.__cause__, ssl.SSLCertVerificationError)
    assert open_fds() == before


def test_the_host_name_is_checked_unless_told_not_to(
    tls_server: tuple[RedisServer, int, Path],
) -> None:
    # The certificate names 127.0.0.1, not localhost.
    _, tls_port, cert = tls_server
    url = f"rediss://localhost:{tls_port}/0?ssl_ca_certs={cert}"
    with pytest.raises(errors.ConnectionError) as caught:
        dial(url)
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    assert "localhost" in str(caught.value.__cause__)  # the host name, not the issuer
    # Said as a name the certificate was not issued for: it said "a certificate this
    # client does not trust ... name the CA", of a CA already named.
    said = str(translate(caught.value, "send messages", url))
    assert "presented a TLS certificate for another name" in said
    assert "ssl_check_hostname=false" in said and "Name the CA" not in said
    with dial(f"{url}&ssl_check_hostname=false") as sock:
        assert call(sock, "PING") == b"PONG"


def test_tls_at_a_plain_port_times_out_connecting(
    tls_server: tuple[RedisServer, int, Path],
) -> None:
    # The server waits for a line the TLS client hello never ends: only the connect
    # timeout ends the wait. A handshake under the socket timeout (an hour here) would
    # hang until the suite's per-test timeout fails the test.
    plain, _, _ = tls_server
    before = open_fds()
    url = f"rediss://127.0.0.1:{plain.port}/0?socket_connect_timeout=0.5&socket_timeout=3600"
    with pytest.raises(errors.TimeoutError, match="Timeout connecting to server"):
        dial(url)
    assert open_fds() == before


# --- unreachable servers --------------------------------------------------------------


def test_a_refused_connection_is_a_connection_error_caused_by_it() -> None:
    port = free_port()
    with pytest.raises(errors.ConnectionError) as caught:
        dial(f"redis://127.0.0.1:{port}/0")
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert str(caught.value) == f"Error 111 connecting to 127.0.0.1:{port}. Connection refused."


def test_a_host_that_does_not_resolve_is_a_connection_error_caused_by_it() -> None:
    with pytest.raises(errors.ConnectionError, match=r"no-such-host\.invalid:6379") as caught:
        dial("redis://no-such-host.invalid:6379")
    assert isinstance(caught.value.__cause__, socket.gaierror)


def test_a_missing_unix_socket_is_a_connection_error(tmp_path: Path) -> None:
    with pytest.raises(errors.ConnectionError, match=r"redis\.sock") as caught:
        dial(f"unix://{tmp_path}/redis.sock")
    assert isinstance(caught.value.__cause__, FileNotFoundError)


# --- reading URLs ---------------------------------------------------------------------


def test_a_bare_url_reads_as_the_defaults() -> None:
    assert Endpoint.from_url("redis://") == Endpoint()
    assert Endpoint.from_url("redis://db") == Endpoint(host="db")
    assert Endpoint.from_url("rediss://db") == Endpoint(host="db", tls=TLS())


def test_a_url_is_read_whole() -> None:
    url = (
        "redis://user:p%40ss%2Fw@[::1]:6380/3?socket_timeout=2.5&socket_connect_timeout=1"
        "&socket_keepalive=no&client_name=w1"
    )
    assert Endpoint.from_url(url) == Endpoint(
        host="::1",
        port=6380,
        db=3,
        username="user",
        password="p@ss/w",
        client_name="w1",
        connect_timeout=1.0,
        timeout=2.5,
        keepalive=False,
    )


@pytest.mark.parametrize(
    ("url", "username", "password"),
    [
        ("redis://db?password=pw", None, "pw"),
        ("redis://db?username=u&password=pw", "u", "pw"),
        ("redis://:url@db?password=query", None, "url"),  # the URL's wins
        ("redis://a:url@db?username=b&password=query", "a", "url"),
        ("redis://:p%2Bw@db", None, "p+w"),
    ],
)
def test_credentials_come_from_the_url_before_the_query(
    url: str, username: str | None, password: str | None
) -> None:
    endpoint = Endpoint.from_url(url)
    assert endpoint is not None
    assert (endpoint.username, endpoint.password) == (username, password)


def test_a_unix_url_reads_its_path_and_database() -> None:
    endpoint = Endpoint.from_url("unix://:pw@/run/redis%20x.sock?db=2")
    assert endpoint == Endpoint(path="/run/redis x.sock", db=2, password="pw")
    assert endpoint.where == "/run/redis x.sock"


def test_tls_options_are_read() -> None:
    url = (
        "rediss://db:6380/0?ssl_cert_reqs=optional&ssl_ca_certs=/ca.pem&ssl_ca_path=/cas"
        "&ssl_ca_data=PEM&ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_password=kp"
        "&ssl_check_hostname=false&ssl_min_version=771&ssl_ciphers=HIGH"
    )
    endpoint = Endpoint.from_url(url)
    assert endpoint is not None
    assert endpoint.tls == TLS(
        cert_reqs="optional",
        ca_certs="/ca.pem",
        ca_path="/cas",
        ca_data="PEM",
        certfile="/c.pem",
        keyfile="/k.pem",
        password="kp",
        check_hostname=False,
        min_version=771,
        ciphers="HIGH",
    )


@pytest.mark.parametrize(
    ("given", "version"),
    [
        ("TLSv1_2", ssl.TLSVersion.TLSv1_2),
        ("TLSv1_3", ssl.TLSVersion.TLSv1_3),
        ("772", ssl.TLSVersion.TLSv1_3),  # redis-py's form: the number
        ("MAXIMUM_SUPPORTED", ssl.TLSVersion.MAXIMUM_SUPPORTED),
    ],
)
def test_the_tls_minimum_is_a_name_or_its_number(given: str, version: ssl.TLSVersion) -> None:
    endpoint = Endpoint.from_url(f"rediss://db?ssl_min_version={given}")
    assert endpoint is not None and endpoint.tls is not None
    assert endpoint.tls.min_version == version


@pytest.mark.parametrize(
    "url",
    [
        "redis://db:6379/0?health_check_interval=5",  # redis-py's, not dial's
        "redis://db:6379/0?protocol=2",
        "redis://db:6379/0?ssl_ca_certs=/ca.pem",  # TLS options on a plain URL
        "unix:///run/redis.sock?ssl_cert_reqs=none",
        "unix:///run/redis.sock?socket_keepalive=true",  # TCP only
        "redis://db:6379/0?socket_timeout=0",  # 0 makes redis-py's socket non-blocking
        "redis://db:6379/0?socket_connect_timeout=-1",
        "http://db:6379/0",
    ],
)
def test_a_url_dial_does_not_take_is_left_to_redis_py(url: str) -> None:
    assert Endpoint.from_url(url) is None


@pytest.mark.parametrize(
    ("query", "option"),
    [
        ("socket_timeout=abc", "socket_timeout"),
        ("socket_connect_timeout=1s", "socket_connect_timeout"),
        ("db=x", "db"),
        ("ssl_cert_reqs=NONE", "ssl_cert_reqs"),  # lowercase only, as redis-py
        ("ssl_min_version=TLSv9", "ssl_min_version"),
        ("ssl_min_version=5", "ssl_min_version"),
    ],
)
def test_a_value_that_does_not_parse_names_its_option(query: str, option: str) -> None:
    value = query.partition("=")[2]
    with pytest.raises(ValueError, match=f"^{option}='{value}' is not "):
        Endpoint.from_url(f"rediss://db:6380/0?{query}")


def test_booleans_read_as_redis_py_reads_them() -> None:
    def keepalive(value: str) -> bool:
        endpoint = Endpoint.from_url(f"redis://db?socket_keepalive={value}")
        assert endpoint is not None
        return endpoint.keepalive

    assert [keepalive(v) for v in ("0", "f", "False", "n", "NO")] == [False] * 5
    assert [keepalive(v) for v in ("1", "true", "yes", "on")] == [True] * 4


# --- what a process loads -------------------------------------------------------------


def test_dialling_loads_neither_redis_py_nor_ssl(server: RedisServer) -> None:
    script = (
        "import sys\n"
        "import celeriac.brokers.redis.dial as d\n"
        f"e = d.Endpoint.from_url('redis://127.0.0.1:{server.port}/1')\n"
        "d.connect(e, lib_name='t', lib_version='1').close()\n"
        "print('redis' in sys.modules, 'ssl' in sys.modules)\n"
    )
    src = str(Path(celeriac.__file__).resolve().parents[1])  # the celeriac under test
    env = {**os.environ, "PYTHONPATH": src}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
