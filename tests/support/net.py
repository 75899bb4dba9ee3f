"""The network in tests: free loopback ports, and blocking everything beyond loopback."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_loopback(host: Any) -> bool:
    """True for None (a local bind), the localhost names and loopback addresses."""
    if host is None:
        return True
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    name = str(host).strip("[]").split("%", 1)[0].lower()
    if name in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def network_blocked() -> Iterator[list[tuple[Any, ...]]]:
    """Refuse every connection, datagram and name lookup that would leave this machine.

    Loopback (127.0.0.0/8, ::1, localhost) and Unix sockets stay open, so a test can still
    talk to its own server on 127.0.0.1.  Yields the list of refused attempts, each as
    ``("connect", address)``, ``("sendto", address)`` or ``("getaddrinfo", host, port)``;
    the refused call fails as it would on a machine without a network.
    """
    attempts: list[tuple[Any, ...]] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_sendto, real_getaddrinfo = socket.socket.sendto, socket.getaddrinfo
    real_gethostbyname, real_gethostbyname_ex = socket.gethostbyname, socket.gethostbyname_ex

    def leaves(sock: socket.socket, address: Any) -> bool:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False  # Unix sockets, netlink: not the network
        host = address[0] if isinstance(address, tuple) and address else address
        return not is_loopback(host)

    def connect(self: socket.socket, address: Any) -> None:
        if leaves(self, address):
            attempts.append(("connect", address))
            raise OSError(errno.ENETUNREACH, f"network access is blocked in this test: {address!r}")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if leaves(self, address):
            attempts.append(("connect", address))
            return errno.ENETUNREACH
        return real_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        if args and leaves(self, args[-1]):
            attempts.append(("sendto", args[-1]))
            raise OSError(errno.ENETUNREACH, f"network access is blocked in this test: {args[-1]!r}")
        return real_sendto(self, data, *args)

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_loopback(host):
            attempts.append(("getaddrinfo", host, port))
            raise socket.gaierror(socket.EAI_NONAME, f"name lookup is blocked in this test: {host!r}")
        return real_getaddrinfo(host, port, *args, **kwargs)

    def gethostbyname(host: str) -> str:
        if not is_loopback(host):
            attempts.append(("getaddrinfo", host, None))
            raise socket.gaierror(socket.EAI_NONAME, f"name lookup is blocked in this test: {host!r}")
        return real_gethostbyname(host)

    def gethostbyname_ex(host: str) -> Any:
        if not is_loopback(host):
            attempts.append(("getaddrinfo", host, None))
            raise socket.gaierror(socket.EAI_NONAME, f"name lookup is blocked in this test: {host!r}")
        return real_gethostbyname_ex(host)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket.socket, "connect_ex", connect_ex)
        patch.setattr(socket.socket, "sendto", sendto)
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        patch.setattr(socket, "gethostbyname", gethostbyname)
        patch.setattr(socket, "gethostbyname_ex", gethostbyname_ex)
        yield attempts
