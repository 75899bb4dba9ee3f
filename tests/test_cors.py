"""CORS (setting CORS_ORIGINS): which pages may call the API, preflights, and headers on errors.

Header logic through Flask's test client on a real app; tests/test_clients.py drives a real
browser (Chromium) against a real server for the end-to-end proof.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from rapl import cors, create_app, errors
from rapl.errors import APIError
from rapl.settings import LOCAL_ORIGINS, Settings, SettingsError
from support.fake_backend import FakeBackend

KEY = "sk-cors-test-key"
API_PATHS = [f"{prefix}{path}" for prefix in ("/v1", "", "/v1/v1")
             for path in ("/audio/transcriptions", "/audio/translations", "/models", "/models/whisper-1")]
# What the official openai JS SDK sends from a browser (dangerouslyAllowBrowser: true).
SDK_HEADERS = ("authorization, content-type, accept, x-stainless-lang, x-stainless-package-version, "
               "x-stainless-os, x-stainless-arch, x-stainless-runtime, x-stainless-runtime-version, "
               "x-stainless-retry-count, x-stainless-timeout, openai-organization, openai-project")
LOCAL = ["null", "http://localhost:5173", "http://localhost", "http://127.0.0.1:8000", "http://[::1]:3000",
         "https://localhost:8443", "HTTP://LOCALHOST:3000"]
FOREIGN = ["https://evil.example", "http://localhost.evil.example:3000", "http://127.0.0.1.nip.io:8000",
           "http://127.0.0.2:8000", "https://evil.example:8000", "http://localhost:abc", "file://", "*",
           "chrome-extension://abcdefghijklmnop", ""]


def _app(**settings: str) -> Flask:
    return create_app({"ENV_FILE": "", "PROGRESS": "false", **settings}, backend=FakeBackend())


@pytest.fixture(scope="module")
def apps() -> Iterator[dict[str, Flask]]:
    """Apps on a FakeBackend: default CORS with a key and a 1 MB upload limit, *, none, narrowed."""
    built = {"local": _app(API_KEY=KEY, MAX_UPLOAD_MB="1"),
             "any": _app(CORS_ORIGINS="*"),
             "none": _app(CORS_ORIGINS="none"),
             "narrow": _app(CORS_ORIGINS="http://localhost:*, https://app.example")}
    yield built
    for app in built.values():
        app.extensions["rapl"].shutdown()


def preflight(app: Flask, path: str, origin: str | None = "null", headers: str = SDK_HEADERS,
              method: str = "POST", **extra: str) -> Any:
    sent = {"Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers, **extra}
    if origin is not None:
        sent["Origin"] = origin
    return app.test_client().options(path, headers=sent)


def allowed_headers(resp: Any) -> set[str]:
    return {h.strip().lower() for h in resp.headers.get("Access-Control-Allow-Headers", "").split(",") if h.strip()}


# --- preflights ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", API_PATHS)
def test_preflight_on_every_api_path_needs_no_key(apps: dict[str, Flask], path: str) -> None:
    resp = preflight(apps["local"], path, method="GET" if "/models" in path else "POST")
    assert resp.status_code == 204, resp.get_data(as_text=True)
    assert resp.headers["Access-Control-Allow-Origin"] == "null"
    assert {"GET", "POST"} <= {m.strip() for m in resp.headers["Access-Control-Allow-Methods"].split(",")}
    assert allowed_headers(resp) == {h.strip() for h in SDK_HEADERS.split(",")}
    assert int(resp.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in resp.headers["Vary"]
    assert resp.get_data() == b""


def test_plain_options_without_origin_is_not_401_or_405(apps: dict[str, Flask]) -> None:
    resp = apps["local"].test_client().options("/v1/audio/transcriptions")
    assert resp.status_code == 204
    assert {"POST", "OPTIONS"} <= {m.strip() for m in resp.headers["Allow"].split(",")}
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_preflight_to_an_unknown_path_is_a_404(apps: dict[str, Flask]) -> None:
    resp = preflight(apps["any"], "/v1/nothing", origin="http://localhost:3000")
    assert resp.status_code == 404
    assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"  # the page can read why


def test_only_safe_request_headers_are_allowed(apps: dict[str, Flask]) -> None:
    resp = preflight(apps["local"], "/v1/audio/transcriptions",
                     headers="Authorization, X-Evil, Cookie, x-stainless-os, OpenAI-Beta, bad header, Content-Type")
    assert allowed_headers(resp) == {"authorization", "x-stainless-os", "openai-beta", "content-type"}


def test_private_network_preflight(apps: dict[str, Flask]) -> None:
    """Chrome asks before a public page reaches a private address; pages on this machine get a yes."""
    pna = {"Access-Control-Request-Private-Network": "true"}
    local = preflight(apps["local"], "/v1/audio/transcriptions", origin="http://localhost:5173", **pna)
    evil = preflight(apps["local"], "/v1/audio/transcriptions", origin="https://evil.example", **pna)
    # A file:// page never asks (it counts as local); a sandboxed iframe on a public site would, as null.
    null = preflight(apps["local"], "/v1/audio/transcriptions", origin="null", **pna)
    null_any = preflight(apps["any"], "/v1/audio/transcriptions", origin="null", **pna)
    assert local.headers["Access-Control-Allow-Private-Network"] == "true"
    assert "Access-Control-Allow-Private-Network" not in evil.headers
    assert "Access-Control-Allow-Private-Network" not in null.headers
    assert null.headers["Access-Control-Allow-Origin"] == "null"
    assert null_any.headers["Access-Control-Allow-Private-Network"] == "true"


# --- which origins ------------------------------------------------------------------------------

@pytest.mark.parametrize("origin", LOCAL)
def test_local_pages_are_allowed_by_default(apps: dict[str, Flask], origin: str) -> None:
    resp = apps["local"].test_client().get("/v1/models", headers={"Origin": origin,
                                                                  "Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] == origin
    exposed = {h.strip().lower() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-request-id", "x-rapl-model", "openai-processing-ms", "retry-after"} <= exposed
    assert "Access-Control-Allow-Credentials" not in resp.headers  # no cookies: the key is a header


@pytest.mark.parametrize("origin", FOREIGN)
def test_other_websites_are_not_let_in_by_default(apps: dict[str, Flask], origin: str) -> None:
    resp = preflight(apps["local"], "/v1/audio/transcriptions", origin=origin)
    assert resp.status_code == 204
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert "Access-Control-Allow-Headers" not in resp.headers
    assert "Origin" in resp.headers["Vary"]


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost:3000"])
def test_star_allows_any_origin_by_echoing_it(apps: dict[str, Flask], origin: str) -> None:
    resp = preflight(apps["any"], "/v1/audio/transcriptions", origin=origin)
    assert resp.headers["Access-Control-Allow-Origin"] == origin  # echoed: works with Authorization
    assert "authorization" in allowed_headers(resp)


@pytest.mark.parametrize(("origin", "allowed"), [
    ("http://localhost:3000", True), ("http://localhost", True), ("https://app.example", True),
    ("https://app.example:8443", False), ("null", False), ("http://127.0.0.1:8000", False)])
def test_a_list_narrows_it(apps: dict[str, Flask], origin: str, allowed: bool) -> None:
    resp = preflight(apps["narrow"], "/v1/audio/transcriptions", origin=origin)
    assert ("Access-Control-Allow-Origin" in resp.headers) is allowed


def test_none_turns_cors_off(apps: dict[str, Flask]) -> None:
    resp = preflight(apps["none"], "/v1/audio/transcriptions", origin="null")
    get = apps["none"].test_client().get("/v1/models", headers={"Origin": "http://localhost:3000"})
    assert resp.status_code == 204  # still no 405 for OPTIONS
    for answer in (resp, get):
        assert not [h for h in answer.headers.keys() if h.lower().startswith("access-control-")]


# --- errors carry the headers, so a page can read the envelope ------------------------------------

def _cors_error(resp: Any, status: int, code: str, origin: str = "null") -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.headers["Access-Control-Allow-Origin"] == origin
    assert "x-request-id" in resp.headers["Access-Control-Expose-Headers"]
    body = resp.get_json()
    assert body["error"]["code"] == code
    return body["error"]


def test_401_without_the_key_is_readable(apps: dict[str, Flask]) -> None:
    resp = apps["local"].test_client().post("/v1/audio/transcriptions", headers={"Origin": "null"})
    _cors_error(resp, 401, "invalid_api_key")
    assert "WWW-Authenticate" in resp.headers["Access-Control-Expose-Headers"]


def test_400_413_404_405_are_readable(apps: dict[str, Flask]) -> None:
    client = apps["local"].test_client()
    auth = {"Origin": "null", "Authorization": f"Bearer {KEY}"}
    missing = client.post("/v1/audio/transcriptions", headers=auth, data={"model": "whisper-1"},
                          content_type="multipart/form-data")
    big = client.post("/v1/audio/transcriptions", headers=auth, content_type="multipart/form-data",
                      data={"file": (io.BytesIO(b"\0" * (2 * 1024 * 1024)), "big.wav")})
    unknown = client.get("/v1/nothing", headers=auth)
    wrong = client.get("/v1/audio/transcriptions", headers=auth)
    assert _cors_error(missing, 400, "missing_file")["param"] == "file"
    _cors_error(big, 413, "request_too_large")
    _cors_error(unknown, 404, "not_found")
    _cors_error(wrong, 405, "method_not_allowed")


def test_429_and_its_retry_after_are_readable() -> None:
    """Pure header logic: an app with only the error handlers and CORS, and a route that is always busy."""
    app = Flask(__name__)
    errors.register(app)
    cors.register(app, LOCAL_ORIGINS)

    @app.post("/busy")
    def busy() -> None:
        raise APIError("The queue is full.", 429, code="queue_full", headers={"Retry-After": "1"})

    resp = app.test_client().post("/busy", headers={"Origin": "http://127.0.0.1:5500"})
    _cors_error(resp, 429, "queue_full", origin="http://127.0.0.1:5500")
    assert resp.headers["Retry-After"] == "1"
    assert "retry-after" in resp.headers["Access-Control-Expose-Headers"].lower()


def test_the_web_page_keeps_its_own_headers(apps: dict[str, Flask]) -> None:
    resp = apps["local"].test_client().get("/", headers={"Origin": "null"})
    assert resp.status_code == 200 and "default-src 'self'" in resp.headers["Content-Security-Policy"]


# --- the setting ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("local", LOCAL_ORIGINS),
    ("", ()),
    ("none", ()),
    (" NONE ", ()),
    ("*", ("*",)),
    ("http://localhost:*", ("http://localhost:*",)),
    ("https://App.Example/, null", ("https://app.example", "null")),
    ("local, https://app.example", (*LOCAL_ORIGINS, "https://app.example")),
    ("http://[::1]:8080,http://192.168.1.5:3000", ("http://[::1]:8080", "http://192.168.1.5:3000")),
])
def test_setting_values(raw: str, expected: tuple[str, ...]) -> None:
    assert Settings.load({"CORS_ORIGINS": raw}, environ={}).CORS_ORIGINS == expected


def test_default_is_local() -> None:
    assert Settings.load({}, environ={}).CORS_ORIGINS == LOCAL_ORIGINS


@pytest.mark.parametrize("raw", ["evil.example", "https://app.example/path", "localhost:3000", "none, local",
                                 "http://", "https://app.example:port", "https://a.example?x=1"])
def test_invalid_setting_names_it_and_the_valid_values(raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.load({"CORS_ORIGINS": raw}, environ={})
    message = str(info.value)
    assert message.startswith("CORS_ORIGINS=") and "local, *, none" in message and "http://localhost:*" in message


@pytest.mark.parametrize(("origins", "origin", "allowed"), [
    (("http://localhost:*",), "http://localhost:1", True),
    (("http://localhost:*",), "http://localhost:65535", True),
    (("http://localhost:*",), "http://localhost:", False),
    (("http://localhost:*",), "https://localhost:3000", False),
    (("http://[::1]:*",), "http://[::1]", True),
    (("http://[::1]:*",), "http://[::1]:9", True),
    (("https://app.example",), "https://app.example:443", False),
    (("null",), "NULL", True),
    ((), "null", False),
])
def test_policy_matching(origins: tuple[str, ...], origin: str, allowed: bool) -> None:
    assert cors.Policy(origins).allows(origin) is allowed
