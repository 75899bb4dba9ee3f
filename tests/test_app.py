"""create_app: settings, model lifecycle, start-up failures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rapl import create_app
from rapl.settings import Settings, SettingsError
from support import ROOT
from support.fake_backend import FakeBackend, say
from support.server import Server
from support.speech import tone, wav_bytes

CLIP = wav_bytes(tone(11.0))  # what the fake model hears: "speech 11.0 s"


def test_offline_first_start_says_what_failed_then_the_fix(serve, jfk: Path) -> None:  # noqa: ANN001
    """The default model cannot be downloaded: one clear message first, the library's detail last."""
    from support.net import network_blocked

    with network_blocked() as attempts:
        server: Server = serve({"BACKEND": "whisper", "LOCAL_MODEL": "rapl-test/no-such-model"})
    assert attempts and server.worker.state == "failed"
    with server.http() as http:
        health = http.get("/health")
        resp = http.post("/v1/audio/transcriptions", files={"file": ("a.flac", jfk.read_bytes())})
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert resp.status_code == 503 and int(resp.headers["retry-after"]) >= 1
    error = resp.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "model_unavailable"
    message = error["message"]
    assert message.startswith("The whisper model rapl-test/no-such-model is not cached here and could not be "
                              "downloaded from Hugging Face. Fix: set LOCAL_MODEL to a local model directory")
    assert message.index("python -m rapl models") < message.index("Detail:")  # the library's words come last
    assert health.json()["error"].startswith("The whisper model rapl-test/no-such-model is not cached here")


@pytest.mark.slow
def test_the_offline_default_fails_at_once_with_one_probe_of_its_hub(serve, jfk: Path, tmp_path: Path,  # noqa: ANN001
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The default (SenseVoice from ModelScope) on a first start offline: the hub's host is probed once and the
    503 comes at once, not after the hub library's retries (22 s before); /health and the page get the words a
    user can act on as ``error``, the library's as ``detail``."""
    pytest.importorskip("funasr", reason="pip install funasr (the sensevoice backend)")
    from support.net import network_blocked

    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "empty-modelscope-cache"))
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with network_blocked() as attempts:
        server: Server = serve({})  # BACKEND and LOCAL_MODEL as a fresh clone has them
        with server.http() as http:
            resp = http.post("/v1/audio/transcriptions", files={"file": ("a.flac", jfk.read_bytes())})
            health = http.get("/health").json()
    assert server.worker.backend.name == "sensevoice" and server.worker.state == "failed"
    assert attempts == [("getaddrinfo", "www.modelscope.cn", 443)]  # the probe alone: no download was tried
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "model_unavailable"
    assert health["error"].startswith("The sensevoice model iic/SenseVoiceSmall is not cached here and could "
                                      "not be downloaded from ModelScope. Fix:")
    assert "Detail:" not in health["error"] and "ConnectionError" in health["detail"]


def test_a_model_that_failed_to_load_is_tried_again_after_its_back_off(fake_serve, tmp_path: Path) -> None:  # noqa: ANN001
    import time

    model = tmp_path / "tiny.en"
    model.mkdir()  # empty for now: the model is not there yet
    backend = FakeBackend(str(model), fail_load=OSError(f"Unable to open file 'model.bin' in model '{model}'"))
    server: Server = fake_serve(backend, MODEL_RETRY_SECONDS="1")
    assert server.worker.state == "failed" and backend.loads == 1
    with server.http() as http:
        first = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", CLIP)})
        assert first.status_code == 503 and "complete model directory" in first.json()["error"]["message"]
        time.sleep(1.1)
        second = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", CLIP)})
        assert second.status_code == 503 and second.headers["retry-after"] == "2"  # tried again; back-off doubled
        assert backend.loads == 2
        backend.fail_load = None  # the model arrives
        early = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", CLIP)})
        assert early.status_code == 503 and backend.loads == 2  # still within the back-off: not tried
        time.sleep(2.1)
        third = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", CLIP)})
        health = http.get("/health").json()
    assert third.status_code == 200 and third.json()["text"] == say(11.0) and backend.loads == 3
    assert health["status"] == "ready" and "error" not in health


def test_requests_during_load_wait_for_the_model(fake_serve) -> None:  # noqa: ANN001
    backend = FakeBackend(load_delay=1.0)
    server: Server = fake_serve(backend, wait=False)
    with server.http() as http:
        first_health = http.get("/health").json()["status"]
        resp = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", CLIP)})
    assert first_health == "loading"
    assert resp.status_code == 200 and resp.json()["text"] == say(11.0)
    assert backend.loads == 1 and len(backend.calls) == 1


@pytest.mark.parametrize(("name", "value", "hint"), [
    ("BACKEND", "kaldi", "sensevoice, whisper, mlx"),
    ("PORT", "http", "whole number"),
    ("DEVICE", "tpu", "auto, cpu, cuda"),
    ("RICH_TEXT", "html", "plain, emoji, tags"),
    ("USE_ITN", "maybe", "true or false"),
    ("MAX_UPLOAD_MB", "0", "between 1"),
])
def test_invalid_setting_names_it_and_the_valid_values(name: str, value: str, hint: str) -> None:
    with pytest.raises(SettingsError) as info:
        create_app({"ENV_FILE": "", name: value})
    assert name in str(info.value) and hint in str(info.value)


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(SettingsError, match="BAKEND"):
        Settings.load({"BAKEND": "whisper"})


@pytest.mark.slow  # a subprocess
def test_invalid_setting_stops_waitress_serve_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "BACKEND": "nope", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "waitress", "--listen=127.0.0.1:0", "wsgi:app"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("rapl: invalid setting: BACKEND='nope'")
    assert "Traceback" not in proc.stderr


def test_env_file_is_read_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               whisper_model: str) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"BACKEND=whisper\nLOCAL_MODEL={whisper_model}\nMAX_QUEUE=3\n")
    monkeypatch.setenv("MAX_QUEUE", "5")
    monkeypatch.delenv("BACKEND", raising=False)
    monkeypatch.delenv("LOCAL_MODEL", raising=False)
    app = create_app({"ENV_FILE": str(env_file)})
    settings = app.config["RAPL_SETTINGS"]
    app.extensions["rapl"].shutdown()
    assert settings.BACKEND == "whisper" and settings.MAX_QUEUE == 5


def test_env_example_documents_every_setting() -> None:
    from rapl.settings import SPEC, env_example

    assert (ROOT / ".env.example").read_text() == env_example()
    for name, (_default, _parse, doc) in SPEC.items():
        assert f"# {doc}\n{name}=" in env_example()


def test_mlx_choice_without_mlx_fails_clearly_or_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """BACKEND=mlx builds where mlx-audio is installed; elsewhere it names the install command."""
    import importlib.util

    if importlib.util.find_spec("mlx_audio") is not None:
        pytest.skip("mlx-audio is installed here; covered by test_mlx.py")
    with pytest.raises(SettingsError, match="pip install"):
        create_app({"ENV_FILE": "", "BACKEND": "mlx"})


def test_readme_settings_table_matches_config() -> None:
    from rapl.settings import SPEC

    readme = (ROOT / "README.md").read_text()
    for name, (default, _parse, doc) in SPEC.items():
        shown = f"`{default}`" if default else "(empty)"
        assert f"| `{name}` | {shown} | {doc} |" in readme, name


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    command = readme.split("**Run the tests:**", 1)[1].split("```", 2)[1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command == "python -m pytest" and command in ci_lines


@pytest.mark.slow  # `python -m rapl` on the real tiny.en model
def test_client_text_cannot_forge_a_log_line(whisper_model: str) -> None:
    """A %0d%0a in the path once wrote a whole fake line into the log (seen with API_KEY set)."""
    import signal
    import socket

    from support import processes
    from support.net import free_port
    from support.processes import environment, wait_healthy

    port = free_port()
    proc = processes.start([sys.executable, "-m", "rapl"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=environment(BACKEND="whisper", LOCAL_MODEL=whisper_model, PORT=str(port),
                                                      API_KEY="sesame", LOG_LEVEL="INFO"))
    forged = "2026-01-01 00:00:00,000 INFO rapl.http.api: request id=forged task=transcribe status=200"
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}")
        path = "/v1/models%0d%0a" + forged.replace(" ", "%20")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        processes.kill(proc)
    lines = err.splitlines()
    assert not any(line.startswith(forged[:30]) for line in lines), err
    assert any("rejected a request to" in line and "request id=forged" in line for line in lines), err


def test_create_app_leaves_the_environment_alone_and_entry_points_share_env(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from rapl.settings import use_env_file

    env_file = tmp_path / ".env"
    env_file.write_text("BACKEND=whisper\nRAPL_TEST_HUB_HOME=/models\n")
    monkeypatch.delenv("RAPL_TEST_HUB_HOME", raising=False)
    app = create_app({"ENV_FILE": str(env_file)})
    assert app.config["RAPL_SETTINGS"].BACKEND == "whisper"
    assert "RAPL_TEST_HUB_HOME" not in os.environ and "BACKEND" not in os.environ  # create_app changed nothing
    hub_file = tmp_path / "hub.env"
    hub_file.write_text("RAPL_TEST_HUB_HOME=/models\nRAPL_TEST_SET=from-file\n")
    monkeypatch.setenv("RAPL_TEST_SET", "from-process")
    monkeypatch.setenv("RAPL_TEST_HUB_HOME", "placeholder")
    monkeypatch.delenv("RAPL_TEST_HUB_HOME")  # restored (absent) when the test ends
    use_env_file(str(hub_file))  # what `python -m rapl` and waitress-serve do: hub variables reach the libraries
    assert os.environ["RAPL_TEST_HUB_HOME"] == "/models" and os.environ["RAPL_TEST_SET"] == "from-process"
