"""The Host check (setting ALLOWED_HOSTS): after DNS rebinding a page is same-origin with RAPL, but
its requests still name the attacker's host, and get 421 before anything else runs.

Flask's test client and a real waitress server; tests/http/test_browser_security.py has Chromium
resolve an attacker's name to 127.0.0.1 for the end-to-end proof.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from rapl import create_app
from rapl.http import hosts
from rapl.settings import Settings, SettingsError
from support.fake_backend import FakeBackend
from support.server import Server
from support.speech import tone, wav_bytes

KEY = "sk-hosts-test-key"
REBIND = "rebind.attacker.example"
LOOPBACK = ["localhost", "localhost:8000", "LOCALHOST:8000", "localhost.", "127.0.0.1", "127.0.0.1:8000",
            "[::1]", "[::1]:8000", "[0:0:0:0:0:0:0:1]:8000"]
FOREIGN = [REBIND, f"{REBIND}:8000", "localhost.attacker.example", "127.0.0.1.nip.io:8000", "2130706433.example",
           "[::1", "[::1]x", "localhost:abc", "::1", "", " "]
# A literal address is no rebinding (that needs a name whose address changes): always answered.
ADDRESSES = ["127.0.0.2:8000", "192.168.1.5:8000", "0.0.0.0:8000", "[::]:8000", "[fd00::5]"]


def _app(**settings: str) -> Flask:
    return create_app({"ENV_FILE": "", "PROGRESS": "false", "VAD": "false", **settings}, backend=FakeBackend())


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    """The defaults (HOST=127.0.0.1, no ALLOWED_HOSTS), with a key and a 1 MB upload limit."""
    built = _app(API_KEY=KEY, MAX_UPLOAD_MB="1")
    yield built
    built.extensions["rapl"].shutdown()


def _misdirected(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 421, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "host_not_allowed"
    assert "ALLOWED_HOSTS" in error["message"]
    return error


def _get(app: Flask, host: str, path: str = "/v1/models", **headers: str) -> Any:
    return app.test_client().get(path, headers={"Host": host, "Authorization": f"Bearer {KEY}", **headers})


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_names_are_answered(app: Flask, host: str) -> None:
    assert _get(app, host).status_code == 200


@pytest.mark.parametrize("host", FOREIGN)
def test_other_host_names_get_421(app: Flask, host: str) -> None:
    _misdirected(_get(app, host))


@pytest.mark.parametrize("path", ["/", "/health", "/metrics", "/openapi.json", "/static/app.js", "/v1/nothing"])
def test_every_path_is_checked(app: Flask, path: str) -> None:
    _misdirected(_get(app, REBIND, path))
    _misdirected(app.test_client().options(path, headers={"Host": REBIND, "Origin": f"http://{REBIND}",
                                                          "Access-Control-Request-Method": "POST"}))


def test_first_before_the_key_the_origin_and_the_body(app: Flask) -> None:
    """421, not 401 (no key), 403 (the page's origin) or 413 (the 2 MB body is never parsed)."""
    calls = app.extensions["rapl"].backend.calls
    resp = app.test_client().post("/v1/audio/transcriptions", content_type="multipart/form-data",
                                  headers={"Host": f"{REBIND}:8000", "Origin": "https://evil.example"},
                                  data={"file": (io.BytesIO(b"\0" * (2 * 1024 * 1024)), "big.wav")})
    _misdirected(resp)
    assert calls == []
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_the_answer_names_the_host_and_the_setting(app: Flask) -> None:
    error = _misdirected(_get(app, f"{REBIND}:8000"))
    assert f"'{REBIND}:8000'" in error["message"]
    long = _misdirected(_get(app, "x" * 5000))
    assert len(long["message"]) < 400


@pytest.mark.parametrize(("listen", "host", "answered"), [
    ("192.168.1.5", "192.168.1.5:8000", True),
    ("192.168.1.5", "192.168.1.6:8000", True),  # an address: never a rebinding
    ("mymac.local", "other.local:8000", False),
    ("mymac.local", "MyMac.local:8000", True),
    ("::1", "[::1]:8000", True),
    ("fe80::1", "[fe80:0::1]:8000", True),
    ("0.0.0.0", "0.0.0.0:8000", True),  # what the start-up line prints, opened in a browser
    ("0.0.0.0", "192.168.1.5:8000", True),
    ("0.0.0.0", "mymac.local:8000", False),  # "every interface" names nothing: names need ALLOWED_HOSTS
    ("::", "[::]:8000", True),
    ("0.0.0.0", "localhost:8000", True),
])
def test_the_host_setting_is_answered(listen: str, host: str, answered: bool) -> None:
    assert hosts.HostPolicy((), listen).allows(host) is answered


@pytest.mark.parametrize(("allowed", "host", "answered"), [
    ("192.168.1.5,mymac.local", "192.168.1.5:8000", True),
    ("192.168.1.5,mymac.local", "mymac.local", True),
    ("192.168.1.5,mymac.local", "other.local", False),
    ("Rapl.Example.com.", "rapl.example.com", True),
    ("rapl.example.com", "sub.rapl.example.com", False),
    ("[fd00::5]", "[fd00::5]:8000", True),
    ("fd00::5", "[FD00::5]", True),
    ("*", f"{REBIND}:8000", True),
    ("*", "[::1", True),
])
def test_allowed_hosts(allowed: str, host: str, answered: bool) -> None:
    app = _app(HOST="0.0.0.0", ALLOWED_HOSTS=allowed)
    try:
        status = app.test_client().get("/v1/models", headers={"Host": host}).status_code
    finally:
        app.extensions["rapl"].shutdown()
    assert status == (200 if answered else 421)


def test_a_request_without_host_is_not_a_browsers() -> None:
    assert hosts.HostPolicy(()).allows(None)


@pytest.mark.parametrize(("header", "name"), [
    ("LocalHost:8000", "localhost"), ("[::1]:8000", "::1"), ("[::1]", "::1"), ("a.example.", "a.example"),
    ("127.0.0.1", "127.0.0.1"), ("a.example:", None), ("a:b:c", None), ("[::1]8000", None), ("", None)])
def test_host_name(header: str, name: str | None) -> None:
    assert hosts.host_name(header) == name


# --- the setting ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("", ()),
    (" , ", ()),
    ("*", ("*",)),
    ("192.168.1.5, MyMac.local", ("192.168.1.5", "mymac.local")),
    ("[::1],fd00::5,rapl.example.com.", ("::1", "fd00::5", "rapl.example.com")),
    ("a.example,A.EXAMPLE", ("a.example",)),
    ("my_host,xn--bcher-kva.example", ("my_host", "xn--bcher-kva.example")),
])
def test_setting_values(raw: str, expected: tuple[str, ...]) -> None:
    assert Settings.load({"ALLOWED_HOSTS": raw}, environ={}).ALLOWED_HOSTS == expected


def test_default_is_none_beyond_loopback_and_host() -> None:
    assert Settings.load({}, environ={}).ALLOWED_HOSTS == ()


@pytest.mark.parametrize("raw", ["rapl.example.com:8443", "http://rapl.example.com", "a b", "a..example",
                                 "-a.example", "a.example/", "*.example.com", "[::1]:8000"])
def test_invalid_setting_fails_at_start_up_naming_it(raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        _app(ALLOWED_HOSTS=raw)
    message = str(info.value)
    assert message.startswith("ALLOWED_HOSTS=") and "without scheme or port" in message


# --- a real server --------------------------------------------------------------------------------

def _raw_get(server: Server, host: bytes, path: bytes = b"/v1/models") -> bytes:
    """One HTTP/1.1 request with exactly this Host header (HTTP clients fix it to the URL's)."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def test_a_rebinding_host_gets_421_from_a_real_server(fake_server: Server) -> None:
    rebound = _raw_get(fake_server, f"{REBIND}:8000".encode())
    assert rebound.startswith(b"HTTP/1.1 421 "), rebound[:200]
    assert b'"host_not_allowed"' in rebound and b"fake-tiny" not in rebound
    with fake_server.http() as http:
        posted = http.post("/v1/audio/transcriptions", headers={"Host": REBIND}, data={"model": "whisper-1"},
                           files={"file": ("clip.wav", wav_bytes(tone(2.0)))})
        assert posted.status_code == 421 and fake_server.backend.calls == []
        assert http.get("/v1/models").status_code == 200  # Host: 127.0.0.1:<port>
    assert _raw_get(fake_server, b"localhost").startswith(b"HTTP/1.1 200 ")
