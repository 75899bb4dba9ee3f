"""Several real models in one server, chosen by `model` from the official SDK: Whisper tiny.en (the .env model),
the multilingual Whisper base and the tiny SenseVoice; LRU unloading with the memory it gives back, measured;
a model that cannot load beside healthy ones."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from rapl import create_app
from support.server import Server
from support.speech import JFK_TEXT, wer

pytestmark = pytest.mark.slow  # three real models in one server


def _models_file(tmp_path: Path, base: str, sensevoice: Path, broken: Path | None = None) -> Path:
    text = f'''
[models.base]
backend = "whisper"
model = "{base}"
aliases = ["whisper-1", "gpt-4o-transcribe"]

[models.chinese]
backend = "sensevoice"
model = "{sensevoice}"
aliases = ["gpt-4o-mini-transcribe"]
'''
    if broken is not None:
        text += f'\n[models.broken]\nbackend = "whisper"\nmodel = "{broken}"\n'
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def three(tmp_path: Path, whisper_model: str, whisper_base_model: str,
          tiny_sensevoice: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(broken: bool = False, **settings: str) -> Server:
        empty = tmp_path / "empty-model"
        empty.mkdir(exist_ok=True)
        path = _models_file(tmp_path, whisper_base_model, tiny_sensevoice, empty if broken else None)
        app = create_app({"ENV_FILE": "", "PROGRESS": "false", "BACKEND": "whisper", "LOCAL_MODEL": whisper_model,
                          "MODELS_FILE": str(path), "THREADS": "2", **settings})
        server = Server(app, threads=16)
        servers.append(server)
        assert server.wait_loaded() == "ready"
        return server

    yield start
    for server in servers:
        server.close()


def _ask(server: Server, model: str, clip: bytes) -> Any:
    return server.sdk.audio.transcriptions.with_raw_response.create(model=model, file=("jfk.wav", clip))


def test_three_real_models_chosen_by_the_model_field(three: Callable[..., Server], jfk: Path) -> None:
    server = three(MAX_LOADED_MODELS="3")
    clip = jfk.read_bytes()
    tiny = _tiny(server)  # the .env model: tiny.en, by its directory's name
    answered = {}
    for name in (tiny, "base", "whisper-1", "chinese", "gpt-4o-mini-transcribe", "unknown-app-name"):
        raw = _ask(server, name, clip)
        answered[name] = (raw.headers["x-rapl-model"], raw.parse().text)
    assert {name: model for name, (model, _) in answered.items()} == {
        tiny: tiny, "base": "base", "whisper-1": "base", "chinese": "chinese",
        "gpt-4o-mini-transcribe": "chinese", "unknown-app-name": tiny}
    assert wer(JFK_TEXT, answered[tiny][1]) < 0.2 and wer(JFK_TEXT, answered["base"][1]) < 0.2
    assert answered["chinese"][1] != answered["base"][1]  # the tiny SenseVoice says its own words
    listed = {m.id: m.model_extra for m in server.sdk.models.list()}
    assert all(listed[name]["loaded"] for name in (tiny, "base", "chinese"))


def _tiny(server: Server) -> str:
    return server.app.extensions["rapl.models"].default.entry.id


def test_lru_unloads_and_gives_the_memory_back(three: Callable[..., Server], jfk: Path) -> None:
    """MAX_LOADED_MODELS=2: asking for the third model unloads the least recently used; the process's resident
    memory falls back when it does (measured: README, "Several models")."""
    server = three(MAX_LOADED_MODELS="2")
    clip = jfk.read_bytes()
    process = psutil.Process()
    alone = process.memory_info().rss
    _ask(server, "base", clip)
    both = process.memory_info().rss
    _ask(server, "chinese", clip)  # tiny.en is the least recently used: unloaded before SenseVoice loads
    with server.http() as http:
        states = {m["id"]: m["status"] for m in http.get("/health").json()["models"]}
    assert states == {_tiny(server): "unloaded", "base": "ready", "chinese": "ready"}
    assert both - alone > 50 * 2**20  # Whisper base took memory (about 150 MB measured)
    _ask(server, _tiny(server), clip)  # back again; base is now the least recently used
    with server.http() as http:
        states = {m["id"]: m["status"] for m in http.get("/health").json()["models"]}
    assert states == {_tiny(server): "ready", "base": "unloaded", "chinese": "ready"}
    after = process.memory_info().rss
    assert after < both + 40 * 2**20, (alone, both, after)  # base's memory went back, or most of it


def test_a_model_that_cannot_load_answers_503_and_the_others_serve(three: Callable[..., Server], jfk: Path) -> None:
    server = three(broken=True, MAX_LOADED_MODELS="3")
    clip = jfk.read_bytes()
    with server.http() as http:
        failed = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", clip)}, data={"model": "broken"})
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "model_unavailable", failed.text
    assert "could not be loaded" in failed.json()["error"]["message"]
    assert _ask(server, "base", clip).headers["x-rapl-model"] == "base"
    assert _ask(server, "whisper-1", clip).parse().text


def test_concurrent_requests_across_real_models(three: Callable[..., Server], jfk: Path) -> None:
    server = three(MAX_LOADED_MODELS="3", MAX_QUEUE="64")
    clip = jfk.read_bytes()
    results: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def one(name: str) -> None:
        raw = _ask(server, name, clip)
        with lock:
            results.append((name, raw.headers["x-rapl-model"], raw.parse().text))

    names = [_tiny(server), "base", "chinese"] * 4
    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(results) == 12 and all(name == model for name, model, _ in results)
    by_model: dict[str, set[str]] = {}
    for name, _, text in results:
        by_model.setdefault(name, set()).add(text)
    assert all(len(texts) == 1 for texts in by_model.values()), by_model  # each model always says the same
    assert len({next(iter(t)) for t in by_model.values()}) == 3  # and the three say different things
