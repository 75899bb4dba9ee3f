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
from support.server import LiveServer
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


def _page(browser: Any, server: LiveServer) -> tuple[Any, list[str]]:
    context = browser.new_context(permissions=["microphone"])
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(30_000)
    page.goto(server.url + "/")
    return page, errors


# Live text on screen: the output holds words and is no longer the placeholder.
SPOKEN = "() => { const o = document.getElementById('output'); return !o.classList.contains('empty') && " \
         "o.textContent.trim().length > 0 }"


def _output(page: Any) -> str:
    return page.inner_text("#output").strip()


def test_words_appear_while_the_clip_plays_and_match_it(browser: Any, servers: dict[str, LiveServer]) -> None:
    page, errors = _page(browser, servers["open"])
    page.click("#live")
    clicked = time.monotonic()
    page.wait_for_function(SPOKEN, timeout=9_000)
    first_text = time.monotonic() - clicked
    early = _output(page)
    time.sleep(max(0.0, 12.5 - (time.monotonic() - clicked)))  # the 11 s clip has played, the silence plays
    page.click("#live")
    page.wait_for_function("() => document.getElementById('job').textContent === 'Done.'", timeout=30_000)
    final = _output(page)
    assert first_text < 9.0 and early, "no words while the clip was playing"
    assert final.startswith(early.split()[0])  # what was shown stayed: deltas are only ever added to
    assert wer(JFK_TEXT, final) <= 0.25, final
    assert not errors, errors
    assert page.get_attribute("#live", "aria-pressed") == "false"


def test_with_an_api_key_the_page_connects_with_the_key_it_was_given(browser: Any,
                                                                     servers: dict[str, LiveServer]) -> None:
    page, errors = _page(browser, servers["keyed"])
    page.wait_for_selector("#key-form", state="visible")  # the page asked /v1/models and got 401
    page.fill("#api-key", "page-key")
    page.press("#api-key", "Enter")
    page.click("#live")
    page.wait_for_function(SPOKEN, timeout=12_000)
    page.click("#live")
    page.wait_for_function("() => document.getElementById('job').textContent === 'Done.'", timeout=30_000)
    assert _output(page).lower().startswith("and")  # the clip starts "And so, my fellow Americans"
    assert not errors, errors
    opened = servers["keyed"].app.extensions["rapl.realtime"].counters["sessions_opened"]
    assert opened >= 1
