"""Models downloaded ahead of first use and deleted again: `rapl models pull/rm` and
``POST /v1/models/{id}/download``, through the real huggingface_hub and faster-whisper download code,
from a Hugging Face hub on loopback (tests/support/hub.py: the real hub is unreachable here) that
serves the real Whisper tiny.en model. RAPL runs as a user runs it: `python -m rapl` subprocesses."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from support import ROOT, processes
from support.hub import LocalHub
from support.net import free_port
from support.speech import JFK_TEXT, wer

pytestmark = pytest.mark.slow  # subprocesses on a real model
REPO = "Systran/faster-whisper-tiny.en"  # the hub id faster-whisper's own short name tiny.en stands for
KEY = "sk-pull-key"


@pytest.fixture
def hub(whisper_model: str) -> Iterator[LocalHub]:
    served = LocalHub({REPO: Path(whisper_model)}, delay=0.05)  # 4 MB every 50 ms: progress can be watched
    yield served
    served.close()


def _env(tmp_path: Path, hub_url: str, **settings: str) -> dict[str, str]:
    """A user's environment: no RAPL settings from outside, the hub cache in tmp_path, the local hub."""
    return processes.environment(HF_ENDPOINT=hub_url, HF_HUB_CACHE=str(tmp_path / "hf"),
                                 HF_HUB_DISABLE_TELEMETRY="1", MODELSCOPE_CACHE=str(tmp_path / "ms"), **settings)


def _rapl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rapl", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_pull_then_rm_from_the_command_line(tmp_path: Path, hub: LocalHub) -> None:
    env = _env(tmp_path, hub.url, BACKEND="whisper", LOCAL_MODEL="tiny.en")
    pulled = _rapl(env, "models", "pull", "tiny.en")
    assert pulled.returncode == 0, pulled.stderr
    assert "Downloading whisper model tiny.en from Hugging Face" in pulled.stdout
    assert f"models--{REPO.replace('/', '--')}" in pulled.stdout and "78.1 MB" in pulled.stdout
    assert "MB/s" in pulled.stderr or "MB [" in pulled.stderr, pulled.stderr  # tqdm's bar, in bytes
    assert any(r.startswith("GET /Systran/faster-whisper-tiny.en/resolve/") for r in hub.requests)
    snapshot = next((tmp_path / "hf").glob("models--*/snapshots/*"))
    assert {p.name for p in snapshot.iterdir()} >= {"model.bin", "config.json", "tokenizer.json"}

    again = _rapl(env, "models", "pull", "tiny.en")  # cached: nothing is fetched
    asked = len(hub.requests)
    assert again.returncode == 0 and "is already here" in again.stdout and len(hub.requests) == asked

    listed = _rapl(env, "models")
    assert listed.returncode == 0 and f"* {REPO}" in listed.stdout, listed.stdout

    refused = _rapl(env, "models", "rm", "tiny.en")  # no terminal to ask on: --yes needed
    assert refused.returncode == 1 and "add --yes" in refused.stderr
    assert snapshot.is_dir()
    removed = _rapl(env, "models", "rm", "tiny.en", "--yes")
    assert removed.returncode == 0 and "Deleted Systran/faster-whisper-tiny.en" in removed.stdout, removed.stderr
    assert not list((tmp_path / "hf").glob("models--*"))
    gone = _rapl(env, "models", "rm", "tiny.en", "--yes")
    assert gone.returncode == 1 and "nothing to delete" in gone.stderr


def test_pull_offline_fails_with_the_clear_message(tmp_path: Path) -> None:
    env = _env(tmp_path, f"http://127.0.0.1:{free_port()}", BACKEND="whisper", LOCAL_MODEL="tiny.en")
    started = time.monotonic()
    failed = _rapl(env, "models", "pull", "tiny.en")
    assert failed.returncode == 1, failed.stdout
    assert "is not cached here and could not be downloaded from Hugging Face" in failed.stderr, failed.stderr
    assert "cannot be reached" in failed.stderr and "Traceback" not in failed.stderr
    assert time.monotonic() - started < 60


def test_a_local_directory_is_never_deleted(tmp_path: Path, whisper_model: str) -> None:
    env = _env(tmp_path, "http://127.0.0.1:9", BACKEND="whisper", LOCAL_MODEL=whisper_model)
    refused = _rapl(env, "models", "rm", whisper_model, "--yes")
    assert refused.returncode == 1 and "local directory" in refused.stderr
    assert (Path(whisper_model) / "model.bin").is_file()


def test_download_over_the_api_behind_the_key_then_serve(tmp_path: Path, hub: LocalHub, whisper_model: str,
                                                         jfk: Path) -> None:
    """A configured hub model that is not cached: downloaded on request (202, progress in GET /v1/models/{id}),
    then served offline from the cache; the key guards the download."""
    models = tmp_path / "models.toml"
    models.write_text(f'[models.small]\nbackend = "whisper"\nmodel = "{REPO}"\naliases = ["whisper-1"]\n')
    port = free_port()
    env = _env(tmp_path, hub.url, BACKEND="whisper", LOCAL_MODEL=whisper_model, MODELS_FILE=str(models),
               MAX_LOADED_MODELS="2", API_KEY=KEY, PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    with processes.started([sys.executable, "-m", "rapl"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True) as proc:
        processes.wait_healthy(proc, url)
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.post("/v1/models/small/download").status_code == 401
            assert http.post("/v1/models/nope/download", headers=headers).json()["error"]["code"] == "model_not_found"
            started = http.post("/v1/models/small/download", headers=headers)
            assert started.status_code == 202, started.text
            assert started.json()["download"]["status"] == "downloading"
            seen = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                card = http.get("/v1/models/small", headers=headers).json()
                seen.append(card["download"]["bytes"])
                if card["download"]["status"] != "downloading":
                    break
                time.sleep(0.1)
            assert card["download"]["status"] == "done", card
            assert card["download"]["bytes"] > 70e6 and any(0 < b < 70e6 for b in seen), seen  # it grew
            assert card["loaded"] is False  # downloading is not loading: the model thread was left alone
            done = http.post("/v1/models/small/download", headers=headers)
            assert done.status_code == 200 and done.json()["download"]["status"] == "done"
        hub.close()  # from here on, nothing can come from the hub: the cache must serve
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        raw = sdk.audio.transcriptions.with_raw_response.create(model="whisper-1", file=("jfk.flac", jfk.read_bytes()))
        assert raw.headers["x-rapl-model"] == "small" and wer(JFK_TEXT, raw.parse().text) < 0.2
        memory = {m["id"]: m["memory_mb"] for m in httpx.get(f"{url}/health").json()["models"]}
        assert memory["small"] is not None and memory["small"] > 0, memory


def test_download_offline_answers_503_with_the_clear_message(tmp_path: Path, whisper_model: str) -> None:
    models = tmp_path / "models.toml"
    models.write_text(f'[models.small]\nbackend = "whisper"\nmodel = "{REPO}"\n')
    port = free_port()
    env = _env(tmp_path, f"http://127.0.0.1:{free_port()}", BACKEND="whisper", LOCAL_MODEL=whisper_model,
               MODELS_FILE=str(models), PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    with processes.started([sys.executable, "-m", "rapl"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True) as proc:
        processes.wait_healthy(proc, url)
        failed = httpx.post(f"{url}/v1/models/small/download", timeout=60)
        assert failed.status_code == 503, failed.text
        error = failed.json()["error"]
        assert error["code"] == "model_download_failed" and failed.headers["retry-after"]
        assert "could not be downloaded from Hugging Face" in error["message"]
        assert httpx.get(f"{url}/health").status_code == 200  # the default model serves on
