"""Several models in one server (rapl/core/models.py): the models file, choosing a model per request, LRU unloading,
the model endpoints; on FakeBackends here, on three real models in test_models_real.py."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rapl import create_app
from rapl.core.models import ModelsFileError, read
from rapl.settings import Settings
from support import ROOT
from support.fake_backend import FakeBackend
from support.server import Server
from support.speech import tone, wav_bytes

CLIP = wav_bytes(tone(1.0))
BASE = Settings.load({"BACKEND": "whisper", "LOCAL_MODEL": "Systran/faster-whisper-small"}, environ={})


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- the models file ---------------------------------------------------------------------------

def test_the_example_file_reads_with_the_env_model_first() -> None:
    example = ROOT / "config" / "models.toml.example"
    entries = read(example, Settings.load({}, environ={}))  # the defaults: SenseVoiceSmall
    assert [e.id for e in entries] == ["dictation", "whisper-base"]  # dictation is the .env model's table
    assert entries[0].language == "zh" and "whisper-1" in entries[1].aliases
    other = read(example, BASE)  # a .env model the file does not name comes first, under its public name
    assert [e.id for e in other] == ["Systran/faster-whisper-small", "dictation", "whisper-base"]


@pytest.mark.parametrize(("text", "line", "words"), [
    ('[models.a]\nbackend = "whisper"\n\n[models.b]\nbackend = "nope"\n', 5, "backend='nope' is invalid: use one of"),
    ('[models.a]\nbackend = "whisper"\nmodel = "/no/such/dir/model"\n', 3, "is not a directory here"),
    ('[models.a]\nbackend = "whisper"\naliases = ["x"]\n[models.b]\nbackend = "mlx"\naliases = ["x"]\n', 6,
     "the name 'x' is already [models.a]'s"),
    ('[models.a]\nbackend = "whisper"\nlanguage = 3\n', 3, "language must be text"),
    ('[models.a]\nbackend = "whisper"\nspeed = "fast"\n', 3, "unknown setting 'speed'"),
    ('[models.a]\nbackend = "mlx"\naliases = ["Systran/faster-whisper-small"]\n', 3, "the .env model's"),
    ('[other]\nx = 1\n', 1, "unknown table [other]"),
])
def test_a_bad_models_file_names_the_file_the_line_and_the_setting(tmp_path: Path, text: str, line: int,
                                                                   words: str) -> None:
    path = _file(tmp_path, text)
    with pytest.raises(ModelsFileError) as caught:
        read(path, BASE)
    assert f"{path}:{line}:" in str(caught.value) and words in str(caught.value), str(caught.value)


def test_a_toml_syntax_error_names_its_line(tmp_path: Path) -> None:
    path = _file(tmp_path, '[models.a]\nbackend = "whisper\n')
    with pytest.raises(ModelsFileError, match=r"MODELS_FILE=.*line 2"):
        read(path, BASE)


def test_every_problem_is_one_line_and_check_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from rapl import check

    path = _file(tmp_path, '[models.a]\nbackend = "nope"\n[models.b]\nbackend = "whisper"\nmodel = "./gone/x"\n'
                           '[models.c]\nbackend = "whisper"\naliases = ["b"]\n')
    with pytest.raises(ModelsFileError) as caught:
        read(path, BASE)
    assert len(str(caught.value).splitlines()) == 3
    report = check.Report()
    assert check.check_models_file(report, Settings.load({"MODELS_FILE": str(path)}, environ={})) is False
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert len(lines) == 3 and report.failures == 3
    env = tmp_path / "env"
    env.write_text(f"MODELS_FILE={path}\nBACKEND=whisper\nLOCAL_MODEL={tmp_path}\nPORT=1\n")
    assert check.run(str(env)) == 2


def test_start_up_fails_on_a_bad_models_file(tmp_path: Path) -> None:
    path = _file(tmp_path, '[models.a]\nbackend = "nope"\n')
    with pytest.raises(ModelsFileError, match="backend='nope'"):
        create_app({"ENV_FILE": "", "MODELS_FILE": str(path)})


# -- one server, three fake models ---------------------------------------------------------------

MODELS = '''
[models.fast]
backend = "whisper"
model = "tiny-fake"
aliases = ["gpt-4o-mini-transcribe"]
language = "de"

[models.big]
backend = "whisper"
model = "big-fake"
aliases = ["whisper-1"]
'''


@pytest.fixture
def several(tmp_path: Path) -> Callable[..., tuple[Server, dict[str, FakeBackend]]]:
    servers: list[Server] = []

    def start(**settings: str) -> tuple[Server, dict[str, FakeBackend]]:
        fakes = {"main": FakeBackend("main-fake"), "fast": FakeBackend("tiny-fake"), "big": FakeBackend("big-fake")}
        app = create_app({"ENV_FILE": "", "PROGRESS": "false", "VAD": "false", "MODELS_FILE":
                          str(_file(tmp_path, MODELS)), **settings}, backend=fakes["main"], backends_by_id=fakes)
        server = Server(app, threads=16)
        servers.append(server)
        assert server.wait_loaded(timeout=30) == "ready"
        return server, fakes

    yield start
    for server in servers:
        server.close()


def _post(server: Server, model: str, **fields: str) -> Any:
    with server.http() as http:
        return http.post("/v1/audio/transcriptions", files={"file": ("a.wav", CLIP, "audio/wav")},
                         data={"model": model, **fields})


def test_the_model_field_chooses_the_model(several: Callable[..., Any]) -> None:
    server, fakes = several()
    for name, expected in [("fast", "fast"), ("gpt-4o-mini-transcribe", "fast"), ("big", "big"),
                           ("whisper-1", "big"), ("anything-else", "main-fake"), ("", "main-fake")]:
        response = _post(server, name)
        assert response.status_code == 200 and response.headers["x-rapl-model"] == expected, (name, response.text)
    assert len(fakes["fast"].calls) == 2 and len(fakes["big"].calls) == 2 and len(fakes["main"].calls) == 2
    assert fakes["fast"].calls[0].options.language == "de"  # the model's default language
    assert _post(server, "fast", language="en").status_code == 200 and fakes["fast"].calls[-1].options.language == "en"


def test_strict_models_answer_404_for_unknown_names(several: Callable[..., Any]) -> None:
    server, _ = several(STRICT_MODELS="true")
    response = _post(server, "gpt-4o-transcribe")
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "model_not_found" and response.json()["error"]["param"] == "model"
    assert _post(server, "whisper-1").headers["x-rapl-model"] == "big"


def test_models_are_listed_with_aliases_and_whether_loaded(several: Callable[..., Any]) -> None:
    server, _ = several()
    listed = {m.id: m for m in server.sdk.models.list()}
    assert {"main-fake", "fast", "big", "whisper-1", "gpt-4o-mini-transcribe", "gpt-4o-transcribe"} <= set(listed)
    assert listed["main-fake"].model_extra["loaded"] is True and listed["big"].model_extra["loaded"] is False
    assert listed["whisper-1"].model_extra["root"] == "big"
    assert listed["gpt-4o-transcribe"].model_extra["root"] == "main-fake"  # served by the default
    assert server.sdk.models.retrieve("fast").id == "fast"


def test_lru_unloads_to_keep_max_loaded_models(several: Callable[..., Any]) -> None:
    server, fakes = several(MAX_LOADED_MODELS="2")
    assert _post(server, "fast").status_code == 200  # main + fast loaded
    assert fakes["main"].unloads == 0
    assert _post(server, "big").status_code == 200  # main is the least recently used: unloaded first
    assert (fakes["main"].unloads, fakes["fast"].unloads, fakes["big"].loads) == (1, 0, 1)
    assert _post(server, "fast").status_code == 200 and _post(server, "other").status_code == 200  # main back
    assert (fakes["main"].loads, fakes["big"].unloads) == (2, 1)
    with server.http() as http:
        health = http.get("/health").json()
    states = {m["id"]: m["status"] for m in health["models"]}
    assert states == {"main-fake": "ready", "fast": "ready", "big": "unloaded"}


def test_load_and_unload_over_the_api_behind_the_key(several: Callable[..., Any]) -> None:
    server, fakes = several(API_KEY="secret")
    with server.http() as http:
        assert http.post("/v1/models/big/load").status_code == 401
        assert http.delete("/v1/models/big").status_code == 401
        key = {"Authorization": "Bearer secret"}
        loaded = http.post("/v1/models/big/load", headers=key)
        assert loaded.status_code == 200 and loaded.json()["loaded"] is True and fakes["big"].loads == 1
        assert http.delete("/v1/models/big", headers=key).status_code == 200
        assert http.get("/v1/models/big", headers=key).json()["status"] in ("unloading", "unloaded")
        missing = http.post("/v1/models/nope/load", headers=key)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_a_web_page_elsewhere_cannot_manage_models(several: Callable[..., Any]) -> None:
    """Without a key (the local default), management is still closed to other sites' pages (as every POST is)."""
    server, fakes = several()
    page = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    with server.http() as http:
        for method, path in (("POST", "/v1/models/big/load"), ("POST", "/v1/models/big/download"),
                             ("DELETE", "/v1/models/main")):
            refused = http.request(method, path, headers=page)
            assert refused.status_code == 403, (path, refused.text)
            assert refused.json()["error"]["type"] == "invalid_request_error"
    assert fakes["big"].loads == 0 and fakes["main"].loads == 1
    assert server.app.extensions["rapl.models"].pulls == {}


def test_a_failing_model_answers_503_and_the_others_serve(tmp_path: Path) -> None:
    fakes = {"main": FakeBackend("main-fake"), "fast": FakeBackend("tiny-fake", fail_load=RuntimeError("broken")),
             "big": FakeBackend("big-fake")}
    app = create_app({"ENV_FILE": "", "PROGRESS": "false", "VAD": "false", "MODELS_FILE": str(_file(tmp_path, MODELS))},
                     backend=fakes["main"], backends_by_id=fakes)
    server = Server(app, threads=8)
    try:
        server.wait_loaded(timeout=30)
        failed = _post(server, "fast")
        assert failed.status_code == 503 and failed.json()["error"]["code"] == "model_unavailable", failed.text
        assert "Retry-After" in failed.headers
        assert _post(server, "big").status_code == 200 and _post(server, "main-fake").status_code == 200
    finally:
        server.close()


def test_concurrent_requests_across_models_get_their_own_model(several: Callable[..., Any]) -> None:
    server, fakes = several(MAX_LOADED_MODELS="2", MAX_QUEUE="64")
    names = ["fast", "big", "main-fake"] * 11  # 33 requests, 3 models, 2 loaded at most
    answers: list[tuple[str, int, str]] = []
    lock = threading.Lock()

    def one(name: str) -> None:
        response = _post(server, name)
        with lock:
            answers.append((name, response.status_code, response.headers.get("x-rapl-model", "")))

    threads = [threading.Thread(target=one, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == 33 and all(code == 200 for _, code, _ in answers), answers
    assert all(name == model for name, _, model in answers)
    assert sum(len(f.calls) for f in fakes.values()) == 33 and all(f.most_at_once <= 1 for f in fakes.values())


def test_health_tries_a_failed_load_again_after_its_back_off(fake_serve: Callable[..., Server]) -> None:
    """A load balancer's health check (Kubernetes' readiness probe) brings a failed server back: no request
    needs to reach it first."""
    import time

    backend = FakeBackend(fail_load=RuntimeError("hub unreachable"))
    server = fake_serve(backend, MODEL_RETRY_SECONDS="1")
    with server.http() as http:
        assert http.get("/health").status_code == 503
        backend.fail_load = None
        time.sleep(1.2)
        http.get("/health")  # due: the load is queued
        assert server.wait_loaded(timeout=10) == "ready" and http.get("/health").status_code == 200
    assert backend.loads == 2


def test_a_live_session_chooses_its_model_as_rest_does(tmp_path: Path, spoken_sentences: Any) -> None:
    """transcription.model picks the model as a REST request's model does; a change waits for the turn's end."""
    from support.realtime import COMPLETED, open_session, pcm16
    from support.server import LiveServer
    from support.speech import build_recording

    fakes = {"main": FakeBackend("main-fake"), "fast": FakeBackend("tiny-fake"), "big": FakeBackend("big-fake")}
    app = create_app({"ENV_FILE": "", "PROGRESS": "false", "MODELS_FILE": str(_file(tmp_path, MODELS))},
                     backend=fakes["main"], backends_by_id=fakes)
    server = LiveServer(app)
    try:
        server.wait_loaded(timeout=30)
        speech, _ = build_recording(spoken_sentences[:1], [0.3])
        ws, client, _ = open_session(server.ws_url)
        with ws:
            client.configure(format={"type": "audio/pcm", "rate": 16000}, transcription={"model": "whisper-1"},
                             turn_detection=None)
            client.append(pcm16(speech))
            client.commit()
            client.until(COMPLETED)
            assert [c.options.draft for c in fakes["big"].calls][-1] is False  # the final, by whisper-1's model
            assert fakes["main"].calls == [] or all(c.options.draft for c in fakes["main"].calls)
            client.append(pcm16(speech[:16000]))
            client.send("session.update", session={"type": "transcription", "audio": {"input": {
                "transcription": {"model": "fast"}}}})
            refused = client.until(lambda e: e["type"] in ("error", "session.updated"))[-1]
            assert refused["type"] == "error" and refused["error"]["code"] == "model_change_mid_turn", refused
            client.send("input_audio_buffer.clear")
            client.until("input_audio_buffer.cleared")
            client.configure(transcription={"model": "fast"})
            client.append(pcm16(speech))
            client.commit()
            client.until(COMPLETED)
            assert fakes["fast"].calls and fakes["fast"].calls[-1].options.draft is False
    finally:
        server.close()


def test_metrics_show_each_model(several: Callable[..., Any]) -> None:
    server, _ = several()
    assert _post(server, "fast").status_code == 200
    with server.http() as http:
        text = http.get("/metrics").text
    assert 'rapl_model_ready{model="fast"} 1.0' in text and 'rapl_model_ready{model="big"} 0.0' in text
    assert 'rapl_model_requests_total{model="fast"} 1.0' in text
    assert 'rapl_model_load_seconds{model="main-fake"}' in text
