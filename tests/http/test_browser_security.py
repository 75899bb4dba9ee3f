"""Browser rules in real Chromium (Playwright) against a real waitress server on a FakeBackend.

What a web page the user happens to visit can do to RAPL: a page on another origin posts audio
(no-cors FormData, a "simple request" the browser sends without asking) or polls /health from
an <img>; a sandboxed iframe on it sends ``Origin: null``; a DNS-rebinding page is served under
the attacker's name from 127.0.0.1. Chromium resolves the made-up names (evil.example,
rebind.attacker.example, rapl.lan) to 127.0.0.1 (--host-resolver-rules), so they are other
sites to the browser, not localhost. Each test asserts what the server answered and that the
model never ran.

Needs Debian's chromium (apt-get install chromium) and Playwright for Python (pip install
playwright); Playwright's own browser download is never used.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import request, request_finished

from support import ROOT
from support.fake_backend import say
from support.server import Server
from support.speech import tone, wav_bytes

pytestmark = pytest.mark.slow  # headless Chromium

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

EVIL = "evil.example"
REBIND = "rebind.attacker.example"
LAN = "rapl.lan"
OPENWHISPR = ROOT / "tests" / "clients" / "browser" / "openwhispr.html"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        f"--host-resolver-rules=MAP {EVIL} 127.0.0.1, MAP {REBIND} 127.0.0.1, MAP {LAN} 127.0.0.1",
        "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable"]  # the names have no https
NO_LNA = ("--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable,BlockInsecurePrivateNetworkRequests,"
          "PrivateNetworkAccessSendPreflights,LocalNetworkAccessChecks")
CLIP_B64 = base64.b64encode(wav_bytes(tone(1.0))).decode()

# The other website's page: helpers Playwright calls (each resolves, never throws).
ATTACK_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Some website</title></head><body>
<a id="link" href="">your RAPL</a>
<script>
function form(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new FormData();
  data.append("file", new Blob([bytes], { type: "audio/wav" }), "clip.wav");
  data.append("model", "whisper-1");
  return data;
}
async function post([url, b64, mode]) {
  try {
    const r = await fetch(url, { method: "POST", body: form(b64), mode });
    return { type: r.type, status: r.status, text: r.type === "opaque" ? null : await r.text() };
  } catch (e) { return { error: String(e) }; }
}
async function get(url) {
  try { const r = await fetch(url, { cache: "no-store" }); return { status: r.status, text: await r.text() }; }
  catch (e) { return { error: String(e) }; }
}
function element([tag, url]) {
  return new Promise((resolve) => {
    const el = document.createElement(tag);
    el.onload = () => resolve("load");
    el.onerror = () => resolve("error");
    el.src = url;
    document.body.append(el);
  });
}
// A sandboxed iframe (no allow-same-origin): its requests carry Origin: null.
function sandboxed([url, b64]) {
  return new Promise((resolve) => {
    const frame = document.createElement("iframe");
    frame.sandbox = "allow-scripts";
    window.addEventListener("message", (e) => { if (e.source === frame.contentWindow) resolve(e.data); });
    const code = `const [url, b64] = ${JSON.stringify([url, b64])};
      ${form.toString()}
      async function run() {
        const out = {};
        try {
          const r = await fetch(url + "/v1/audio/transcriptions", { method: "POST", body: form(b64) });
          out.post = { status: r.status, text: await r.text() };
        } catch (e) { out.post = { error: String(e) }; }
        try { const r = await fetch(url + "/health"); out.health = { status: r.status, text: await r.text() }; }
        catch (e) { out.health = { error: String(e) }; }
        parent.postMessage(out, "*");
      }
      run();`;
    frame.srcdoc = "<script>" + code + "<\\/script>";
    document.body.append(frame);
  });
}
</script></body></html>"""


class _Site(http.server.BaseHTTPRequestHandler):
    """Serves ATTACK_PAGE at every path: the other website."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = ATTACK_PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def evil_site() -> Iterator[str]:
    """The other website, http://evil.example:<port> (served on 127.0.0.1; Chromium maps the name)."""
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    yield f"http://{EVIL}:{site.server_address[1]}"
    site.shutdown()
    site.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Any) -> Iterator[Any]:
    chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, timeout=60_000)
    yield chromium
    chromium.close()


def _page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


@pytest.fixture
def page(browser: Any, fake_serve: Callable[..., Server]) -> Iterator[Any]:
    """A fresh page; closed before the test's servers (its keep-alive connections would hold them open)."""
    yield from _page(browser)


@pytest.fixture(scope="module")
def browser_without_lna(playwright: Any) -> Iterator[Any]:
    """Chromium without its Local Network Access check, as Firefox and Safari are.

    Chromium itself refuses a page that came from a public address (a rebinding page, first
    served by the attacker) requests to loopback; other browsers send them, so the server must
    refuse them itself.
    """
    chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[*ARGS[:-1], NO_LNA], timeout=60_000)
    yield chromium
    chromium.close()


@pytest.fixture
def rebinding_page(browser_without_lna: Any, fake_serve: Callable[..., Server]) -> Iterator[Any]:
    yield from _page(browser_without_lna)


@contextlib.contextmanager
def answered(server: Server) -> Iterator[list[dict[str, Any]]]:
    """Every request ``server`` answers inside the block: method, path, status and the browser's headers."""
    seen: list[dict[str, Any]] = []

    def finished(sender: Any, response: Any, **extra: Any) -> None:
        seen.append({"method": request.method, "path": request.path, "status": response.status_code,
                     "host": request.headers.get("Host"), "origin": request.headers.get("Origin"),
                     "site": request.headers.get("Sec-Fetch-Site"), "dest": request.headers.get("Sec-Fetch-Dest")})

    request_finished.connect(finished, server.app)
    try:
        yield seen
    finally:
        request_finished.disconnect(finished, server.app)


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def test_another_website_cannot_post_audio(page: Any, fake_serve: Callable[..., Server], evil_site: str) -> None:
    """A no-cors FormData POST (no preflight: the browser sends it, only hiding the answer) and a normal
    one from http://evil.example: both 403 before the body is read; the model never runs."""
    server = fake_serve()
    endpoint = f"{server.url}/v1/audio/transcriptions"
    page.goto(f"{evil_site}/attack.html")
    with answered(server) as seen:
        blind = page.evaluate("post", [endpoint, CLIP_B64, "no-cors"])
        normal = page.evaluate("post", [endpoint, CLIP_B64, "cors"])
    assert blind == {"type": "opaque", "status": 0, "text": None}, blind  # sent; the page sees nothing
    assert normal == {"error": "TypeError: Failed to fetch"}, normal
    posts = [r for r in seen if r["method"] == "POST"]
    assert len(posts) == 2 and {r["origin"] for r in posts} == {evil_site}, seen
    assert [r["status"] for r in posts] == [403, 403], seen
    assert server.backend.calls == [], "the other website's audio reached the model"


def test_another_website_cannot_poll_the_api_but_its_links_open_the_page(
        page: Any, fake_serve: Callable[..., Server], evil_site: str) -> None:
    """<img> and <script> GETs from another site carry no Origin, but Sec-Fetch-Site: cross-site: 403
    (polling /health or /metrics would tell that site when you dictate). The user following a link
    from it to their own RAPL still gets the page, and the page works."""
    server = fake_serve()
    page.goto(f"{evil_site}/attack.html")
    with answered(server) as seen:
        for tag, path in (("img", "/health"), ("img", "/metrics"), ("script", "/v1/models"), ("script", "/health")):
            assert page.evaluate("element", [tag, server.url + path]) == "error"
        fetched = page.evaluate("get", server.url + "/health")
    assert fetched == {"error": "TypeError: Failed to fetch"}, fetched
    assert [(r["path"], r["status"], r["site"], r["origin"]) for r in seen] == [
        ("/health", 403, "cross-site", None), ("/metrics", 403, "cross-site", None),
        ("/v1/models", 403, "cross-site", None), ("/health", 403, "cross-site", None),
        ("/health", 403, "cross-site", evil_site)], seen

    page.eval_on_selector("#link", "(a, href) => { a.href = href; }", server.url + "/")
    with answered(server) as seen:
        page.click("#link")
        page.wait_for_url(server.url + "/")
        page.wait_for_selector("#health[data-state='ready']")
    first = seen[0]
    assert (first["path"], first["status"], first["site"], first["dest"]) == ("/", 200, "cross-site", "document")
    assert all(r["status"] == 200 for r in seen), seen  # then its own (same-origin) requests


def test_a_sandboxed_iframe_reads_nothing_unless_null_is_opted_in(
        page: Any, fake_serve: Callable[..., Server], evil_site: str) -> None:
    """A sandboxed iframe on any website sends Origin: null: by default no transcript and no /health.
    CORS_ORIGINS=local,null lets it read both, which is why null is opted into, not a default."""
    server = fake_serve()
    opted_in = fake_serve(CORS_ORIGINS="local,null")
    page.goto(f"{evil_site}/attack.html")
    with answered(server) as seen:
        out = page.evaluate("sandboxed", [server.url, CLIP_B64])
    assert out == {"post": {"error": "TypeError: Failed to fetch"}, "health": {"error": "TypeError: Failed to fetch"}}
    assert [(r["path"], r["status"], r["origin"]) for r in seen] == [
        ("/v1/audio/transcriptions", 403, "null"), ("/health", 403, "null")], seen
    assert server.backend.calls == []

    out = page.evaluate("sandboxed", [opted_in.url, CLIP_B64])
    assert out["post"]["status"] == 200 and say(1.0) in out["post"]["text"], out
    assert out["health"]["status"] == 200, out
    assert len(opted_in.backend.calls) == 1


def test_file_pages_and_electron_apps_need_null(page: Any, fake_serve: Callable[..., Server]) -> None:
    """OpenWhispr's request from a file:// page (as from its Electron window): 403 by default,
    transcribed with CORS_ORIGINS=local,null."""
    page.goto(OPENWHISPR.as_uri())
    for settings in ({}, {"CORS_ORIGINS": "local,null"}):
        server = fake_serve(**settings)
        with answered(server) as seen:
            out = page.evaluate("openWhispr", {"endpoint": f"{server.url}/v1/audio/transcriptions",
                                               "audioBase64": CLIP_B64, "mimeType": "audio/wav"})
        ((sent),) = seen
        assert sent["origin"] == "null"
        if settings:
            assert out.get("ok") and out["text"] == say(1.0), out
            assert sent["status"] == 200 and len(server.backend.calls) == 1
        else:
            assert out == {"ok": False, "fetchError": "TypeError: Failed to fetch"}, out
            assert sent["status"] == 403 and server.backend.calls == []


def test_a_rebinding_page_reads_nothing(rebinding_page: Any, fake_serve: Callable[..., Server]) -> None:
    """http://rebind.attacker.example:<RAPL's port> resolving to 127.0.0.1 is same-origin with RAPL to
    the browser: every request it makes names that host, and gets 421, not the data."""
    page = rebinding_page
    server = fake_serve()
    origin = f"http://{REBIND}:{port_of(server)}"
    with answered(server) as seen:
        direct = page.goto(f"{origin}/v1/models")
        assert direct is not None and direct.status == 421
        assert "host_not_allowed" in page.content() and "fake-tiny" not in page.content()
        assert page.goto(f"{origin}/").status == 421  # the web page is not served under that name either
        # The attacker's page as first served (from the attacker's address); its requests then reach RAPL.
        page.route(f"{origin}/attack.html", lambda route: route.fulfill(status=200, content_type="text/html",
                                                                        body=ATTACK_PAGE))
        page.goto(f"{origin}/attack.html")
        models = page.evaluate("get", "/v1/models")
        health = page.evaluate("get", "/health")
        posted = page.evaluate("post", ["/v1/audio/transcriptions", CLIP_B64, "cors"])
    for answer in (models, health, posted):
        assert answer.get("status") == 421 and "host_not_allowed" in answer["text"], (models, health, posted)
    assert "fake-tiny" not in models["text"] and '"ready"' not in health["text"]
    assert server.backend.calls == []
    assert seen and all(r["status"] == 421 and r["host"] == f"{REBIND}:{port_of(server)}" for r in seen), seen


def test_a_name_in_allowed_hosts_serves_the_page(page: Any, fake_serve: Callable[..., Server]) -> None:
    """ALLOWED_HOSTS=rapl.lan (a LAN name): the web page loads under it and transcribes (same-origin POST
    with Origin http://rapl.lan:<port>); without the setting that name gets 421."""
    refused = fake_serve()
    assert page.goto(f"http://{LAN}:{port_of(refused)}/").status == 421
    server = fake_serve(ALLOWED_HOSTS=LAN)
    origin = f"http://{LAN}:{port_of(server)}"
    assert page.goto(f"{origin}/").status == 200
    page.wait_for_selector("#health[data-state='ready']")
    script = """async (b64) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const data = new FormData();
      data.append("file", new Blob([bytes], { type: "audio/wav" }), "clip.wav");
      const r = await fetch("/v1/audio/transcriptions", { method: "POST", body: data });
      return { status: r.status, text: await r.text() };
    }"""
    with answered(server) as seen:
        out = page.evaluate(script, CLIP_B64)
    assert out["status"] == 200 and say(1.0) in out["text"], out
    ((sent),) = seen
    # Chromium sends Sec-Fetch-* only to https and localhost: here the Origin, equal to Host, decides.
    assert (sent["origin"], sent["site"], sent["status"]) == (origin, None, 200)
