"""CORS (setting CORS_ORIGINS): which pages may call the API, the 403 for the others, preflights,
and headers on errors.

Header logic through Flask's test client on a real app, and a real waitress server for the
refusals; tests/http/test_clients.py and tests/http/test_browser_security.py drive a real browser
(Chromium) against a real server for the end-to-end proof.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from rapl import create_app
from rapl.errors import APIError
from rapl.http import cors, envelopes
from rapl.settings import LOCAL_ORIGINS, Settings, SettingsError
from support.fake_backend import FakeBackend
from support.server import Server
from support.speech import tone, wav_bytes

KEY = "sk-cors-test-key"
API_PATHS = [f"{prefix}{path}" for prefix in ("/v1", "", "/v1/v1")
             for path in ("/audio/transcriptions", "/audio/translations", "/models", "/models/whisper-1")]
# What the official openai JS SDK sends from a browser (dangerouslyAllowBrowser: true).
SDK_HEADERS = ("authorization, content-type, accept, x-stainless-lang, x-stainless-package-version, "
               "x-stainless-os, x-stainless-arch, x-stainless-runtime, x-stainless-runtime-version, "
               "x-stainless-retry-count, x-stainless-timeout, openai-organization, openai-project")
PAGE = "http://localhost:5173"  # a page on this machine (a dev server), allowed by default
LOCAL = ["http://localhost:5173", "http://localhost", "http://127.0.0.1:8000", "http://[::1]:3000",
         "https://localhost:8443", "HTTP://LOCALHOST:3000"]
FOREIGN = ["https://evil.example", "http://localhost.evil.example:3000", "http://127.0.0.1.nip.io:8000",
           "http://127.0.0.2:8000", "https://evil.example:8000", "http://localhost:abc", "file://", "*",
           "chrome-extension://abcdefghijklmnop", "", "null"]


def _app(**settings: str) -> Flask:
    return create_app({"ENV_FILE": "", "PROGRESS": "false", **settings}, backend=FakeBackend())


@pytest.fixture(scope="module")
def apps() -> Iterator[dict[str, Flask]]:
    """Apps on a FakeBackend: default CORS with a key and a 1 MB upload limit, null opted in, *, none, narrowed."""
    built = {"local": _app(API_KEY=KEY, MAX_UPLOAD_MB="1"),
             "null": _app(API_KEY=KEY, CORS_ORIGINS="local,null"),
             "any": _app(CORS_ORIGINS="*"),
             "none": _app(CORS_ORIGINS="none"),
             "narrow": _app(CORS_ORIGINS="http://localhost:*, https://app.example")}
    yield built
    for app in built.values():
        app.extensions["rapl"].shutdown()


def preflight(app: Flask, path: str, origin: str | None = PAGE, headers: str = SDK_HEADERS,
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
    assert resp.headers["Access-Control-Allow-Origin"] == PAGE
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
    null = preflight(apps["null"], "/v1/audio/transcriptions", origin="null", **pna)
    null_default = preflight(apps["local"], "/v1/audio/transcriptions", origin="null", **pna)
    null_any = preflight(apps["any"], "/v1/audio/transcriptions", origin="null", **pna)
    assert local.headers["Access-Control-Allow-Private-Network"] == "true"
    assert "Access-Control-Allow-Private-Network" not in evil.headers
    assert "Access-Control-Allow-Private-Network" not in null.headers
    assert null.headers["Access-Control-Allow-Origin"] == "null"
    assert not [h for h in null_default.headers.keys() if h.lower().startswith("access-control-allow-")]
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

def _cors_error(resp: Any, status: int, code: str, origin: str = PAGE) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.headers["Access-Control-Allow-Origin"] == origin
    assert "x-request-id" in resp.headers["Access-Control-Expose-Headers"]
    body = resp.get_json()
    assert body["error"]["code"] == code
    return body["error"]


def test_401_without_the_key_is_readable(apps: dict[str, Flask]) -> None:
    resp = apps["local"].test_client().post("/v1/audio/transcriptions", headers={"Origin": PAGE})
    _cors_error(resp, 401, "invalid_api_key")
    assert "WWW-Authenticate" in resp.headers["Access-Control-Expose-Headers"]


def test_400_413_404_405_are_readable(apps: dict[str, Flask]) -> None:
    client = apps["local"].test_client()
    auth = {"Origin": PAGE, "Authorization": f"Bearer {KEY}"}
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
    envelopes.register(app)
    cors.register(app, LOCAL_ORIGINS)

    @app.post("/busy")
    def busy() -> None:
        raise APIError("The queue is full.", 429, code="queue_full", headers={"Retry-After": "1"})

    resp = app.test_client().post("/busy", headers={"Origin": "http://127.0.0.1:5500"})
    _cors_error(resp, 429, "queue_full", origin="http://127.0.0.1:5500")
    assert resp.headers["Retry-After"] == "1"
    assert "retry-after" in resp.headers["Access-Control-Expose-Headers"].lower()


def test_the_web_page_keeps_its_own_headers(apps: dict[str, Flask]) -> None:
    resp = apps["local"].test_client().get("/", headers={"Origin": PAGE})
    assert resp.status_code == 200 and "default-src 'self'" in resp.headers["Content-Security-Policy"]


# --- the setting ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("local", LOCAL_ORIGINS),
    ("local,null", (*LOCAL_ORIGINS, "null")),
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


def test_local_leaves_null_out() -> None:
    """Origin: null is also what a sandboxed iframe on any website sends: it is opted into, not a default."""
    assert "null" not in LOCAL_ORIGINS and "null" not in Settings.load({}, environ={}).CORS_ORIGINS
    assert not cors.Policy(Settings.load({}, environ={}).CORS_ORIGINS).allows("null")


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


# --- pages CORS_ORIGINS does not allow are refused (403) before the body is read -------------------

# What Chromium sends with a cross-site fetch(..., {method: "POST", body: formData, mode: "no-cors"}):
# a "simple request", sent without a preflight; the browser only hides the answer from the page.
NO_CORS_POST = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "empty"}
REFUSED = ["https://evil.example", "null", "http://127.0.0.2:8000", "http://localhost.evil.example:3000"]


def _upload(app: Flask, headers: dict[str, str], size: int = 0) -> Any:
    clip = wav_bytes(tone(1.0)) if not size else b"\0" * size
    return app.test_client().post("/v1/audio/transcriptions", headers=headers, content_type="multipart/form-data",
                                  data={"model": "whisper-1", "file": (io.BytesIO(clip), "clip.wav")})


def _refused(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 403, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "origin_not_allowed" and error["type"] == "invalid_request_error"
    assert not [h for h in resp.headers.keys() if h.lower().startswith("access-control-allow-")]
    return error


@pytest.mark.parametrize("origin", REFUSED)
def test_a_cross_site_form_post_is_refused_before_the_key_and_the_body(apps: dict[str, Flask], origin: str) -> None:
    """403, not 401 (the key is not even looked at) and not 413 (the 2 MB body is never parsed)."""
    app = apps["local"]
    calls = app.extensions["rapl"].backend.calls
    before = len(calls)
    for headers in ({"Origin": origin, **NO_CORS_POST}, {"Origin": origin},
                    {"Origin": origin, **NO_CORS_POST, "Authorization": f"Bearer {KEY}"}):
        _refused(_upload(app, headers))
        _refused(_upload(app, headers, size=2 * 1024 * 1024))  # over MAX_UPLOAD_MB=1: would be 413
    assert len(calls) == before, "a refused page's audio reached the model"


def test_the_refusal_says_how_to_allow_null(apps: dict[str, Flask]) -> None:
    null = _refused(_upload(apps["local"], {"Origin": "null"}))
    evil = _refused(_upload(apps["local"], {"Origin": "https://evil.example"}))
    assert "CORS_ORIGINS=local,null" in null["message"] and "file://" in null["message"]
    assert "'https://evil.example'" in evil["message"] and "CORS_ORIGINS" in evil["message"]


def test_null_is_allowed_when_opted_in(apps: dict[str, Flask]) -> None:
    """CORS_ORIGINS=local,null: file:// pages and Electron apps (OpenWhispr) may call it and read the answer."""
    resp = _upload(apps["null"], {"Origin": "null", "Sec-Fetch-Site": "cross-site", "Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.headers["Access-Control-Allow-Origin"] == "null"
    _refused(_upload(apps["null"], {"Origin": "https://evil.example", "Authorization": f"Bearer {KEY}"}))


@pytest.mark.parametrize("path", ["/health", "/metrics", "/v1/models", "/models", "/openapi.json"])
@pytest.mark.parametrize("dest", ["image", "script", "empty", "iframe"])
def test_cross_site_subresource_gets_are_refused(apps: dict[str, Flask], path: str, dest: str) -> None:
    """<img src>, <script src>, a no-cors fetch or an iframe on another site: no Origin is sent, but
    Sec-Fetch-Site says cross-site; polling /health or /metrics would tell that site when you dictate."""
    mode = "navigate" if dest == "iframe" else "no-cors"
    headers = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": mode, "Sec-Fetch-Dest": dest,
               "Authorization": f"Bearer {KEY}"}
    _refused(apps["local"].test_client().get(path, headers=headers))


@pytest.mark.parametrize("path", ["/", "/openapi.json", "/v1/models"])
def test_following_a_link_from_another_site_still_works(apps: dict[str, Flask], path: str) -> None:
    """A top-level navigation: the user opens the page; the site that linked to it reads nothing."""
    headers = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document",
               "Sec-Fetch-User": "?1", "Authorization": f"Bearer {KEY}"}
    assert apps["local"].test_client().get(path, headers=headers).status_code == 200
    posted = _upload(apps["local"], {**headers, "Origin": "https://evil.example", "Sec-Fetch-Mode": "navigate"})
    _refused(posted)  # a cross-site <form method=post> navigation carries its Origin


@pytest.mark.parametrize("site", ["same-origin", "same-site", "none"])
def test_only_cross_site_requests_are_refused(apps: dict[str, Flask], site: str) -> None:
    """Sec-Fetch-Site: RAPL's own page, a page on this machine, or the user typing the URL pass."""
    headers = {"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    client = apps["none"].test_client()
    assert client.get("/v1/models", headers={**headers, "Sec-Fetch-Site": site}).status_code == 200
    _refused(client.get("/v1/models", headers={**headers, "Sec-Fetch-Site": "cross-site"}))


def test_apps_sdks_and_curl_are_not_affected(apps: dict[str, Flask]) -> None:
    """No Origin and no Sec-Fetch-*: not a browser page. The same upload from a web page is refused."""
    headers = {"Authorization": f"Bearer {KEY}", "User-Agent": "curl/8.5.0"}
    resp = _upload(apps["local"], headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    _refused(_upload(apps["local"], {**headers, "Origin": "https://evil.example"}))


def test_the_servers_own_page_on_a_lan_name_is_same_origin() -> None:
    """RAPL's web page reached as http://mymac.local:8000 posts with that origin: same-origin, allowed,
    also from browsers without Sec-Fetch-Site; another port or scheme of that name is another origin."""
    app = _app(ALLOWED_HOSTS="mymac.local,rapl.example.com")
    try:
        own = {"Host": "mymac.local:8000", "Origin": "http://mymac.local:8000"}
        assert _upload(app, own).status_code == 200
        assert _upload(app, {**own, "Sec-Fetch-Site": "same-origin"}).status_code == 200
        proxied = {"Host": "rapl.example.com", "Origin": "https://rapl.example.com"}  # behind a TLS proxy
        assert _upload(app, proxied).status_code == 200
        assert _upload(app, {"Host": "rapl.example.com", "Origin": "http://rapl.example.com:80"}).status_code == 200
        _refused(_upload(app, {"Host": "mymac.local:8000", "Origin": "http://mymac.local:9000"}))
        _refused(_upload(app, {"Host": "mymac.local", "Origin": "null"}))
    finally:
        app.extensions["rapl"].shutdown()


def test_star_lets_every_page_in_and_none_only_the_servers_own(apps: dict[str, Flask]) -> None:
    evil = {"Origin": "https://evil.example", **NO_CORS_POST}
    resp = _upload(apps["any"], evil)
    assert resp.status_code == 200 and resp.headers["Access-Control-Allow-Origin"] == "https://evil.example"
    assert apps["any"].test_client().get("/v1/models", headers=NO_CORS_POST).status_code == 200
    _refused(_upload(apps["none"], evil))
    _refused(_upload(apps["none"], {"Origin": "http://localhost:3000"}))
    assert _upload(apps["none"], {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}).status_code == 200


@pytest.mark.parametrize(("origins", "origin", "host", "same"), [
    ((), "http://localhost", "localhost", True),
    ((), "http://localhost:80", "localhost", True),
    ((), "http://localhost", "localhost:80", True),
    ((), "https://a.example", "a.example:443", True),
    ((), "http://[::1]:8000", "[::1]:8000", True),
    ((), "HTTP://A.EXAMPLE:8000", "a.example:8000", True),
    ((), "http://a.example:8000", "a.example:8001", False),
    ((), "https://a.example", "a.example:80", False),
    ((), "null", "localhost", False),
    ((), "file://", "localhost", False),
    ((), "http://a.example", None, False),
])
def test_same_origin(origins: tuple[str, ...], origin: str, host: str | None, same: bool) -> None:
    assert cors.same_origin(origin, host) is same


def test_the_check_runs_on_a_real_server_before_the_model(fake_server: Server) -> None:
    """waitress + the real app: the cross-site POST gets 403 and the model never runs; without Origin it does."""
    clip = wav_bytes(tone(2.0))
    with fake_server.http() as http:
        def post(**headers: str) -> Any:
            return http.post("/v1/audio/transcriptions", headers=headers, data={"model": "whisper-1"},
                             files={"file": ("clip.wav", clip)})

        refused = [post(Origin=origin, **NO_CORS_POST) for origin in REFUSED]
        assert fake_server.backend.calls == []
        health = http.get("/health", headers={**NO_CORS_POST, "Sec-Fetch-Dest": "image"})
        ok = post()
    assert [r.status_code for r in refused] == [403] * len(REFUSED), [r.text for r in refused]
    assert {r.json()["error"]["code"] for r in refused} == {"origin_not_allowed"}
    assert health.status_code == 403
    assert ok.status_code == 200 and len(fake_server.backend.calls) == 1


@pytest.mark.parametrize("origin", ["tauri://localhost", "http://tauri.localhost", "https://tauri.localhost"])
def test_tauri_webviews_are_local(origin: str) -> None:
    policy = cors.Policy(Settings.load({}, environ={}).CORS_ORIGINS)
    assert policy.allows(origin) and not policy.allows(origin.replace("localhost", "localhost.example.com"))
    assert not policy.allows("tauri://evil.example")
