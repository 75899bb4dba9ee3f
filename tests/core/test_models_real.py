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


def _models_file(tmp_path: Path, base: str, sensevoice: Path, broken: Path | None = None, extra: str = "") -> Path:
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
    path.write_text(text + extra, encoding="utf-8")
    return path


@pytest.fixture
def three(tmp_path: Path, whisper_model: str, whisper_base_model: str,
          tiny_sensevoice: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(broken: bool = False, extra: str = "", **settings: str) -> Server:
        empty = tmp_path / "empty-model"
        empty.mkdir(exist_ok=True)
        path = _models_file(tmp_path, whisper_base_model, tiny_sensevoice, empty if broken else None, extra)
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


def test_memory_per_model_is_reported_and_the_budget_unloads(three: Callable[..., Server], jfk: Path) -> None:
    """Each loaded model's resident memory in /health, /metrics and /v1/models; MODEL_MEMORY_MB unloads the least
    recently used model even when MAX_LOADED_MODELS would keep it."""
    server = three(MAX_LOADED_MODELS="3", MODEL_MEMORY_MB="1")  # any two models are over a 1 MB budget
    clip = jfk.read_bytes()
    _ask(server, "base", clip)
    with server.http() as http:
        states = {m["id"]: (m["status"], m["memory_mb"]) for m in http.get("/health").json()["models"]}
        metrics = http.get("/metrics").text
        card = http.get("/v1/models/base").json()
    assert states[_tiny(server)] == ("unloaded", None) and states["base"][0] == "ready", states
    assert states["base"][1] > 30, states  # Whisper base: about 150-300 MB measured (README, "Several models")
    assert card["memory_mb"] == states["base"][1]
    from prometheus_client.parser import text_string_to_metric_families

    samples = {s.labels["model"]: s.value for family in text_string_to_metric_families(metrics)
               if family.name == "rapl_model_memory_bytes" for s in family.samples}
    assert samples == {"base": pytest.approx(states["base"][1] * 1e6)}, samples  # only loaded models have one


def test_a_model_directory_that_vanishes_answers_503_for_it_alone(three: Callable[..., Server], jfk: Path,
                                                                 tiny_sensevoice: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "vanishing" / "SenseVoiceSmall"
    shutil.copytree(tiny_sensevoice, copy)
    extra = f'\n[models.vanishing]\nbackend = "sensevoice"\nmodel = "{copy}"\n'
    server = three(MAX_LOADED_MODELS="3", extra=extra)
    shutil.rmtree(copy.parent)  # after start-up checked it, before its first use
    clip = jfk.read_bytes()
    with server.http() as http:
        failed = http.post("/v1/audio/transcriptions", files={"file": ("a.flac", clip)}, data={"model": "vanishing"})
        health = http.get("/health").json()
    assert failed.status_code == 503, failed.text
    error = failed.json()["error"]
    assert error["code"] == "model_unavailable" and "no such directory" in error["message"], error
    assert {m["id"]: m["status"] for m in health["models"]}["vanishing"] == "failed"
    assert health["status"] == "ready"  # the default model, and the server, are fine
    assert wer(JFK_TEXT, _ask(server, "base", clip).parse().text) < 0.2


def test_requests_while_a_model_unloads_and_two_loads_at_once(three: Callable[..., Server], jfk: Path) -> None:
    """A request that comes as its model is being unloaded reloads it (never a 5xx); two loads asked at once
    over the API both answer, and MAX_LOADED_MODELS still holds."""
    server = three(MAX_LOADED_MODELS="1", MAX_QUEUE="32")
    clip = jfk.read_bytes()
    answers: list[tuple[int, str]] = []
    with server.http() as http:
        for _ in range(3):
            assert http.delete(f"/v1/models/{_tiny(server)}").status_code == 200
            raw = http.post("/v1/audio/transcriptions", files={"file": ("a.flac", clip)},
                            data={"model": _tiny(server)})
            answers.append((raw.status_code, raw.json().get("text", raw.text)))
    assert [status for status, _ in answers] == [200] * 3, answers
    assert all(wer(JFK_TEXT, text) < 0.2 for _, text in answers)
    loads: dict[str, int] = {}

    def load(name: str) -> None:
        with server.http() as http:
            loads[name] = http.post(f"/v1/models/{name}/load").status_code

    threads = [threading.Thread(target=load, args=(name,)) for name in ("base", "chinese")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert loads == {"base": 200, "chinese": 200}
    with server.http() as http:
        states = {m["id"]: m["status"] for m in http.get("/health").json()["models"]}
    assert sum(state == "ready" for state in states.values()) == 1, states
