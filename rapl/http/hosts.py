"""Host check (setting ALLOWED_HOSTS): answer only the names RAPL is really reached by.

DNS rebinding: a page on a name its owner controls (``rebind.attacker.example``) has that name
resolve to 127.0.0.1 a moment later; the browser then counts RAPL as the page's own origin and
lets it read every answer. The ``Host`` header still carries the attacker's name, so requests are
answered only when it names ``localhost``, ``127.0.0.1``, ``[::1]``, the ``HOST`` setting (when it
is an address or name, not 0.0.0.0 or ``::``, which mean "every interface") or a name in
``ALLOWED_HOSTS`` (a reverse proxy's public name, the machine's LAN name); ``*`` allows any. A
literal IP address (``192.168.1.5:8000``, ``0.0.0.0:8000``) is always answered: rebinding needs a
name whose address changes, and a browser that connected to an address by itself sends that
address, so a page at ``http://192.168.1.5`` talking to RAPL there is RAPL's own page (or another
origin, which the CORS rules handle). Others get 421 in OpenAI's envelope, before anything else
looks at the request.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from flask import Flask, request

from ..errors import APIError
from ..settings import normalize_host

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# HOST values that mean "listen on every interface": not a name clients use.
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::", "*"})
EXTENSION = "rapl.hosts"


def host_name(header: str) -> str | None:
    """The host name in a ``Host`` header (port dropped), normalized; None if the header is malformed."""
    value = header.strip()
    if value.startswith("["):  # [IPv6] or [IPv6]:port
        end = value.find("]")
        name, rest = value[:end + 1], value[end + 1:]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
    else:
        name, colon, port = value.partition(":")
        if colon and not port.isdigit():
            return None
    name = normalize_host(name)
    return name or None


class HostPolicy:
    """The host names this server answers to: loopback, ``listen`` (the HOST setting) and ``allowed``."""

    def __init__(self, allowed: Iterable[str], listen: str = "") -> None:
        allowed = tuple(allowed)
        self.any = "*" in allowed
        names = {normalize_host(name) for name in (*LOOPBACK_NAMES, *allowed) if name != "*"}
        if normalize_host(listen) not in WILDCARD_ADDRESSES:
            names.add(normalize_host(listen))
        self.names = frozenset(names)

    def allows(self, header: str | None) -> bool:
        """True if a request whose ``Host`` header is ``header`` may be answered (no header: not a browser)."""
        if self.any or header is None:
            return True
        name = host_name(header)
        return name is not None and (name in self.names or _is_address(name))


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def register(app: Flask, allowed: Iterable[str], listen: str) -> None:
    """Refuse (421) requests for a host name the server is not reached by.

    Call after :func:`rapl.http.cors.register`: the check goes first among the before_request hooks,
    so nothing (origin check, API key, the routes' form parsing) runs for a misdirected request.
    """
    policy = HostPolicy(allowed, listen)
    app.extensions[EXTENSION] = policy
    if normalize_host(listen) in WILDCARD_ADDRESSES and not policy.any and len(policy.names) == len(LOOPBACK_NAMES):
        log.info("HOST=%s: clients on other machines may use this machine's IP address; a name they use "
                 "must be listed in ALLOWED_HOSTS (e.g. ALLOWED_HOSTS=mymac.local); other names get 421", listen)

    def _check_host() -> None:
        header = request.headers.get("Host")
        if policy.allows(header):
            return
        shown = (header or "")[:100]
        log.info("refused a request to %r for host %r (not localhost, HOST or ALLOWED_HOSTS)", request.path, shown)
        raise APIError(f"RAPL does not answer to the host name {shown!r}. Reach it by localhost, its IP "
                       "address or its HOST, or add the name to ALLOWED_HOSTS (a web page on another name may be "
                       "a DNS rebinding attack).", 421, code="host_not_allowed")

    app.before_request_funcs.setdefault(None, []).insert(0, _check_host)
