"""The web page's live dictation button in headless Chromium, with a fake microphone playing a real
clip, against RAPL's own server (the WebSocket takeover) on the real tiny.en model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import soxr

from rapl import create_app
from support.fake_backend import FakeBackend
from support.server import LiveServer, Server
from support.speech import JFK_TEXT, wer

pytestmark = pytest.mark.slow  # headless Chromium against the real tiny.en model

CHROMIUM = Path("/usr/bin/chromium")
BASE_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--use-fake-device-for-media-stream",
             "--use-fake-ui-for-media-stream"]

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")


@pytest.fixture(scope="module")
def microphone(jfk: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The JFK clip as the fake microphone plays it (48 kHz 16-bit WAV), with 4 s of silence after it:
    Chromium loops the file."""
    if not jfk.is_file():
        pytest.skip(f"{jfk} is absent (the shared real clips)")
    data, rate = soundfile.read(str(jfk), dtype="float32", always_2d=True)
    audio = soxr.resample(data.mean(axis=1), rate, 48000)
    path = tmp_path_factory.mktemp("mic") / "jfk.wav"
    soundfile.write(str(path), np.concatenate([audio, np.zeros(4 * 48000, dtype=np.float32)]), 48000,
                    subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def servers(whisper_model: str) -> Iterator[dict[str, LiveServer]]:
    made = {}
    for name, extra in (("open", {}), ("keyed", {"API_KEY": "page-key"})):
        app = create_app({"ENV_FILE": "", "PROGRESS": "false", "BACKEND": "whisper", "LOCAL_MODEL": whisper_model,
                          **extra})
        made[name] = LiveServer(app)
        assert made[name].wait_loaded() == "ready"
    yield made
    for server in made.values():
        server.close()


@pytest.fixture(scope="module")
def browser(microphone: Path) -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=[*BASE_ARGS, f"--use-file-for-fake-audio-capture={microphone}"])
        yield browser
        browser.close()


def _page(browser: Any, server: Server, key: str = "") -> tuple[Any, list[str]]:
    context = browser.new_context(permissions=["microphone"])
    if key:  # as if the user had saved it on an earlier visit
        context.add_init_script(f"localStorage.setItem('rapl.apiKey', {key!r})")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(30_000)
    page.goto(server.url + "/")
    return page, errors


def _handshakes(page: Any) -> list[dict[str, Any]]:
    """Each WebSocket handshake the page makes, as Chromium's DevTools report it: the request's
    headers, then (once it is answered) the response's status and headers."""
    seen: list[dict[str, Any]] = []
    cdp = page.context.new_cdp_session(page)
    cdp.on("Network.webSocketWillSendHandshakeRequest",
           lambda e: seen.append({"id": e["requestId"], "request": _lower(e["request"]["headers"])}))

    def answered(event: dict[str, Any]) -> None:
        for shake in seen:
            if shake["id"] == event["requestId"]:
                shake.update(status=event["response"]["status"], response=_lower(event["response"]["headers"]))

    cdp.on("Network.webSocketHandshakeResponseReceived", answered)
    cdp.send("Network.enable")
    return seen


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


# Live text on screen: the output holds words and is no longer the placeholder.
SPOKEN = "() => { const o = document.getElementById('output'); return !o.classList.contains('empty') && " \
         "o.textContent.trim().length > 0 }"


def _output(page: Any) -> str:
    return page.inner_text("#output").strip()


def test_words_appear_while_the_clip_plays_and_match_it(browser: Any, servers: dict[str, LiveServer]) -> None:
    page, errors = _page(browser, servers["open"])
    page.click("#live")
    clicked = time.monotonic()
    page.wait_for_function(SPOKEN, timeout=8_000)
    first_text = time.monotonic() - clicked
    early = _output(page)
    time.sleep(max(0.0, 12.5 - (time.monotonic() - clicked)))  # the 11 s clip has played, the silence plays
    page.click("#live")
    page.wait_for_function("() => document.getElementById('job').textContent === 'Done.'", timeout=30_000)
    final = _output(page)
    assert first_text < 8.0 and early, "no words while the clip was playing"
    assert final.startswith(early.split()[0])  # what was shown stayed: deltas are only ever added to
    assert wer(JFK_TEXT, final) <= 0.25, final
    assert not errors, errors
    assert page.get_attribute("#live", "aria-pressed") == "false"


def test_with_an_api_key_the_page_connects_with_the_key_it_was_given(browser: Any,
                                                                     servers: dict[str, LiveServer]) -> None:
    page, errors = _page(browser, servers["keyed"])
    shakes = _handshakes(page)
    page.wait_for_selector("#key-form", state="visible")  # the page asked /v1/models and got 401
    page.fill("#api-key", "page-key")
    page.press("#api-key", "Enter")
    page.click("#live")
    page.wait_for_function(SPOKEN, timeout=12_000)
    # Browsers set no headers on a WebSocket: the key went as OpenAI's subprotocol, and was taken.
    assert [s["request"]["sec-websocket-protocol"] for s in shakes] == ["realtime, openai-insecure-api-key.page-key"]
    assert "authorization" not in shakes[0]["request"]
    assert shakes[0]["status"] == 101 and shakes[0]["response"]["sec-websocket-protocol"] == "realtime"
    page.click("#live")
    page.wait_for_function("() => document.getElementById('job').textContent === 'Done.'", timeout=30_000)
    assert _output(page).lower().startswith("and")  # the clip starts "And so, my fellow Americans"
    assert not errors, errors
    opened = servers["keyed"].app.extensions["rapl.realtime"].counters["sessions_opened"]
    assert opened >= 1


def test_a_refused_key_asks_for_the_right_one_and_then_starts(browser: Any, servers: dict[str, LiveServer]) -> None:
    """A stale saved key: the handshake is refused (401, which a browser only shows as close 1006); the
    page asks the endpoint why, asks for the key, and once given it starts the dictation by itself."""
    counters = servers["keyed"].app.extensions["rapl.realtime"].counters
    opened = counters["sessions_opened"]
    page, errors = _page(browser, servers["keyed"], key="stale-key")
    shakes = _handshakes(page)
    page.wait_for_selector("#key-form", state="visible")  # /v1/models refused the saved key
    page.click("#live")
    page.wait_for_function("() => document.getElementById('job').textContent === 'Waiting for the API key…'")
    assert "did not accept" in page.inner_text("#key-message")
    assert page.get_attribute("#live", "aria-pressed") == "false"
    page.fill("#api-key", "page-key")
    page.press("#api-key", "Enter")
    page.wait_for_selector("#live[aria-pressed='true']")  # no second click: the pending start ran
    page.wait_for_function(SPOKEN, timeout=12_000)
    page.click("#live")
    page.wait_for_function("() => document.getElementById('job').textContent === 'Done.'", timeout=30_000)
    assert [s["request"]["sec-websocket-protocol"] for s in shakes] == [
        "realtime, openai-insecure-api-key.stale-key", "realtime, openai-insecure-api-key.page-key"]
    assert shakes[0].get("status") != 101 and shakes[1]["status"] == 101  # (DevTools reports no 401 response)
    assert counters["sessions_opened"] == opened + 1
    assert not errors, errors


def test_a_server_without_websockets_is_named(browser: Any) -> None:
    """Served by plain waitress (no WebSocket takeover): the page says what live dictation needs."""
    server = Server(create_app({"ENV_FILE": "", "PROGRESS": "false", "VAD": "false"}, backend=FakeBackend()))
    try:
        assert server.wait_loaded() == "ready"
        page, errors = _page(browser, server)
        page.click("#live")
        page.wait_for_function("() => document.getElementById('job').dataset.kind === 'error'")
        assert "needs RAPL's own server" in page.inner_text("#job")
        assert page.get_attribute("#live", "aria-pressed") == "false" and page.is_enabled("#live")
        assert not errors, errors
        page.context.close()  # its keep-alive connections would hold waitress's loop open
    finally:
        server.close()


def test_speech_before_the_session_is_set_up_is_kept(browser: Any, servers: dict[str, LiveServer]) -> None:
    """A slow server (session.created held back 2.5 s): what the microphone heard meanwhile is sent once
    session.updated comes, so the first words are in the transcript."""
    page, errors = _page(browser, servers["open"])
    held: list[str] = []
    sockets: list[Any] = []

    def relay(ws: Any) -> None:
        sockets.append(ws)
        server = ws.connect_to_server()
        server.on_message(lambda m: held.append(m) if '"session.created"' in m else ws.send(m))

    page.route_web_socket("**/v1/realtime*", relay)
    page.click("#live")
    page.wait_for_timeout(2_500)  # the clip's first words play while the session waits
    assert len(held) == 1 and page.inner_text("#job") == "Connecting…"
    sockets[0].send(held[0])
    page.wait_for_function(SPOKEN, timeout=8_000)
    page.wait_for_timeout(1_500)
    page.click("#live")
    page.wait_for_function("() => document.getElementById('job').textContent === 'Done.'", timeout=30_000)
    said = " ".join(_output(page).lower().replace(",", " ").split())
    assert said.startswith("and so my fellow"), said
    assert not errors, errors
