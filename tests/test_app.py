"""create_app: settings, model lifecycle, start-up failures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config import Settings, SettingsError
from conftest import ROOT, Server
from rapl import create_app


def test_model_that_cannot_load_keeps_server_up_and_answers_503(serve, jfk: Path) -> None:  # noqa: ANN001
    server: Server = serve({"BACKEND": "whisper", "LOCAL_MODEL": "rapl-test/no-such-model"})
    assert server.worker.state == "failed"
    with server.http() as http:
        health = http.get("/health")
        resp = http.post("/v1/audio/transcriptions", files={"file": ("a.flac", jfk.read_bytes())})
    assert health.status_code == 503
    assert health.json()["status"] == "failed"
    assert "no-such-model" in health.json()["error"] or "Hub" in health.json()["error"]
    assert resp.status_code == 503
    error = resp.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "model_unavailable"
    assert "LOCAL_MODEL" in error["message"]


def test_requests_during_load_wait_for_the_model(serve, whisper_model: str, jfk: Path) -> None:  # noqa: ANN001
    server: Server = serve({"BACKEND": "whisper", "LOCAL_MODEL": whisper_model}, wait=False)
    with server.http() as http:
        first_health = http.get("/health").json()["status"]
        resp = http.post("/v1/audio/transcriptions", files={"file": ("a.flac", jfk.read_bytes())})
    assert first_health in ("loading", "ready")
    assert resp.status_code == 200 and "country" in resp.json()["text"].lower()


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
    from config import SPEC, env_example

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
    from config import SPEC

    readme = (ROOT / "README.md").read_text()
    for name, (default, _parse, doc) in SPEC.items():
        shown = f"`{default}`" if default else "(empty)"
        assert f"| `{name}` | {shown} | {doc} |" in readme, name


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    command = readme.split("**Run the tests:**", 1)[1].split("```", 2)[1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command == "python -m pytest" and command in ci_lines
