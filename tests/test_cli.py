"""The command line, run as `python -m rapl ...` subprocesses: serve, transcribe, check, models."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import pytest

from support import ROOT, processes
from support.caches import fake_hf_repo
from support.net import free_port
from support.processes import environment, wait_healthy
from support.server import wait_until
from support.speech import JFK_TEXT, ffmpeg, wer

pytestmark = pytest.mark.slow  # `python -m rapl` subprocesses, most on the real tiny.en model


def rapl(*args: str, timeout: float = 300, **settings: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m rapl *args` from the repository with only ``settings`` (no .env file)."""
    return subprocess.run([sys.executable, "-m", "rapl", *args], cwd=ROOT, env=environment(**settings),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def clips(jfk: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """en_jfk.flac, plus MP3 and M4A conversions of it, each in its own directory."""
    out = tmp_path_factory.mktemp("cli-clips")
    (out / "mp3").mkdir()
    (out / "m4a").mkdir()
    return {
        "flac": ffmpeg(jfk, out / "speech.flac", "-c", "copy"),
        "mp3": ffmpeg(jfk, out / "mp3" / "kennedy.mp3", "-c:a", "libmp3lame", "-b:a", "64k"),
        "m4a": ffmpeg(jfk, out / "m4a" / "inaugural.m4a", "-c:a", "aac", "-b:a", "64k"),
    }


def test_transcribe_several_files_to_srt_in_an_output_dir(clips: dict[str, Path], whisper_model: str,
                                                          tmp_path: Path) -> None:
    import srt

    out = tmp_path / "subtitles" / "nested"
    proc = rapl("transcribe", str(clips["flac"]), str(clips["mp3"]), str(clips["m4a"]), "--format", "srt",
                "--output", str(out), BACKEND="whisper", LOCAL_MODEL=whisper_model)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["inaugural.srt", "kennedy.srt", "speech.srt"]
    for path in out.iterdir():
        subtitles = list(srt.parse(path.read_text(encoding="utf-8")))
        assert subtitles, path
        assert all(s.end > s.start for s in subtitles)
        assert wer(JFK_TEXT, " ".join(s.content for s in subtitles)) < 0.25
        assert f"-> {path}" in proc.stdout
    assert "transcribed 3 of 3 files" in proc.stderr


@pytest.mark.parametrize(("fmt", "ext"), [("vtt", "vtt"), ("text", "txt"), ("json", "json"),
                                          ("verbose_json", "json")])
def test_transcribe_writes_each_format_beside_the_input(fmt: str, ext: str, jfk: Path, whisper_model: str,
                                                        tmp_path: Path) -> None:
    src = tmp_path / "clip.flac"
    src.write_bytes(jfk.read_bytes())
    proc = rapl("transcribe", str(src), "--format", fmt, "--language", "english", BACKEND="whisper",
                LOCAL_MODEL=whisper_model)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / f"clip.{ext}"
    assert out.is_file(), proc.stderr
    body = out.read_text(encoding="utf-8")
    if fmt == "vtt":
        import io

        import webvtt

        captions = webvtt.from_buffer(io.StringIO(body)).captions
        assert captions and "country" in " ".join(c.text for c in captions).lower()
    elif fmt == "text":
        assert "country" in body.lower() and wer(JFK_TEXT, body) < 0.25
    else:
        data = json.loads(body)
        assert "country" in data["text"].lower()
        if fmt == "verbose_json":
            assert data["language"] == "english" and data["segments"] and 10 < data["duration"] < 12
        else:
            assert set(data) == {"text", "languages", "usage"} and data["languages"] == [{"code": "en"}]


def test_transcribe_goes_on_after_a_bad_file_and_exits_1(clips: dict[str, Path], whisper_model: str,
                                                        tmp_path: Path) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt this is not audio at all" * 50)
    missing = tmp_path / "missing.mp3"
    proc = rapl("transcribe", str(broken), str(missing), str(clips["flac"]), "--format", "text",
                "--output", str(tmp_path / "out"), BACKEND="whisper", LOCAL_MODEL=whisper_model)
    assert proc.returncode == 1
    assert f"rapl: {broken}: failed: The uploaded file could not be decoded as audio" in proc.stderr  # its own words
    assert f"rapl: {missing}: failed: No such file or directory" in proc.stderr
    assert "transcribed 1 of 3 files; 2 failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["speech.txt"]
    assert "country" in (tmp_path / "out" / "speech.txt").read_text().lower()


def test_transcribe_with_an_unloadable_model_says_what_to_do(jfk: Path) -> None:
    proc = rapl("transcribe", str(jfk), BACKEND="whisper", LOCAL_MODEL="/nonexistent/dir", HF_HUB_OFFLINE="1")
    assert proc.returncode == 1
    assert "rapl: The whisper model /nonexistent/dir could not be loaded: there is no such directory. Fix: set " \
        "LOCAL_MODEL to a model directory" in proc.stderr  # the server's words: what failed, the fix, the detail
    assert proc.stderr.index("Fix:") < proc.stderr.index("Detail:") and "Traceback" not in proc.stderr


def test_invalid_setting_is_one_line_and_status_2(jfk: Path) -> None:
    for args in (("transcribe", str(jfk)), ()):  # () is `python -m rapl`: serve
        proc = rapl(*args, BACKEND="kaldi", timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("rapl: invalid setting: BACKEND='kaldi'")
        assert "Traceback" not in proc.stderr


def test_no_subcommand_serves_on_host_port(whisper_model: str, jfk: Path) -> None:
    port = free_port()
    with processes.started([sys.executable, "-m", "rapl"], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           env=environment(BACKEND="whisper", LOCAL_MODEL=whisper_model, PORT=str(port))) as proc:
        try:
            wait_healthy(proc, f"http://127.0.0.1:{port}")
            resp = httpx.post(f"http://127.0.0.1:{port}/v1/audio/transcriptions", timeout=120,
                              files={"file": ("a.flac", jfk.read_bytes())})
            assert resp.status_code == 200 and "country" in resp.json()["text"].lower()
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
    assert out.splitlines()[0] == (f"RAPL serving whisper model {whisper_model} at http://127.0.0.1:{port} "
                                   f"(OpenAI base URL http://127.0.0.1:{port}/v1)")


def test_check_passes_with_a_local_model_and_a_free_port(whisper_model: str) -> None:
    proc = rapl("check", BACKEND="whisper", LOCAL_MODEL=whisper_model, PORT=str(free_port()), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for what in ("settings", "decoder", "backend", "model", "port"):
        assert any(line.startswith("ok") and f" {what}: " in line for line in lines), (what, proc.stdout)
    assert any(line.startswith("info  ffmpeg:") for line in lines)
    assert "All checks passed" in proc.stdout


def test_check_reports_a_missing_model_directory(tmp_path: Path) -> None:
    proc = rapl("check", BACKEND="whisper", LOCAL_MODEL="/nonexistent/dir", PORT=str(free_port()), timeout=120)
    assert proc.returncode == 1, proc.stdout
    fail = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fail) == 1 and "model" in fail[0] and "LOCAL_MODEL=/nonexistent/dir" in fail[0]
    assert "-> set LOCAL_MODEL to an existing model directory" in proc.stdout
    assert "1 check failed." in proc.stdout


def test_check_reports_an_uncached_hub_model_offline() -> None:
    proc = rapl("check", BACKEND="whisper", LOCAL_MODEL="rapl-test/not-cached", HF_HUB_OFFLINE="1",
                HF_HUB_CACHE=str(ROOT / "no-such-cache"), PORT=str(free_port()), timeout=120)
    assert proc.returncode == 1, proc.stdout
    assert "rapl-test/not-cached (LOCAL_MODEL=rapl-test/not-cached) is not in the local cache" in proc.stdout
    assert "point LOCAL_MODEL at that local directory" in proc.stdout


def test_check_reports_a_busy_port(whisper_model: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = rapl("check", BACKEND="whisper", LOCAL_MODEL=whisper_model, PORT=str(port), timeout=120)
    assert proc.returncode == 1, proc.stdout
    fail = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert fail == [f"FAIL  port: 127.0.0.1:{port} is already in use (another RAPL, or another program, "
                    "listens there)"]
    assert "set PORT to a free port (for example PORT=" in proc.stdout


def test_check_reports_an_invalid_setting() -> None:
    proc = rapl("check", BACKEND="whisper", PORT="eighty", timeout=120)
    assert proc.returncode == 1
    assert "FAIL  settings: PORT='eighty' is invalid: use a whole number" in proc.stdout
    assert "ok    decoder:" in proc.stdout  # the checks that need no settings still run


def test_models_lists_both_caches_per_backend_and_marks_the_configured(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    fake_hf_repo(hf, "Systran/faster-whisper-tiny.en", {"model.bin": b"\0" * 2_000_000, "config.json": b"{}",
                                                        "vocabulary.txt": b"a\nb\n"})
    fake_hf_repo(hf, "mlx-community/whisper-tiny-mlx", {"weights.npz": b"\0" * 3000, "config.json": b"{}"})
    fake_hf_repo(hf, "bert-base-uncased", {"config.json": b"{}"})
    ms = tmp_path / "modelscope"
    classic = ms / "hub" / "iic" / "SenseVoiceSmall"  # the classic SDK layout
    classic.mkdir(parents=True)
    (classic / "configuration.json").write_text("{}")
    (classic / "model.pt").write_bytes(b"\0" * 1_500_000)
    newer = ms / "models" / "iic--punc_ct-transformer_cn-en-common-vocab471067-large" / "snapshots" / "master"
    newer.mkdir(parents=True)  # the modelscope_hub layout
    (newer / "config.yaml").write_text("model: CTTransformer\n")
    (newer / "model.pt").write_bytes(b"\0" * 1000)

    proc = rapl("models", BACKEND="whisper", LOCAL_MODEL="tiny.en", HF_HUB_CACHE=str(hf),
                MODELSCOPE_CACHE=str(ms), timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"Hugging Face cache: {hf}" in out and f"ModelScope cache:   {ms}" in out
    sections = {}
    for block in out.split("\n\n"):
        head, *rows = block.splitlines()
        sections[head.split(" ")[0].rstrip(":")] = rows
    whisper_rows = sections["whisper"]
    assert len(whisper_rows) == 1 and whisper_rows[0].lstrip().startswith("* Systran/faster-whisper-tiny.en")
    assert "2.0 MB" in whisper_rows[0] and "Hugging Face cache" in whisper_rows[0]
    assert any("iic/SenseVoiceSmall" in row and "1.5 MB" in row and "ModelScope cache" in row
               for row in sections["sensevoice"])
    assert any("iic/punc_ct-transformer_cn-en-common-vocab471067-large" in row for row in sections["sensevoice"])
    assert any("mlx-community/whisper-tiny-mlx" in row for row in sections["mlx"])
    assert any("bert-base-uncased" in row for row in sections["other"])
    assert "* = the configured model" in out


def test_models_runs_on_empty_caches_and_names_the_default(tmp_path: Path) -> None:
    proc = rapl("models", HF_HUB_CACHE=str(tmp_path / "none"), MODELSCOPE_CACHE=str(tmp_path / "none2"),
                timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Configured: BACKEND=sensevoice, model iic/SenseVoiceSmall" in proc.stdout
    assert "(none cached; default model Systran/faster-whisper-small)" in proc.stdout
    assert "is not cached here" in proc.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_after_the_running_job_and_answers_it(signum: int, whisper_model: str, spoken_sentences) -> None:
    import threading

    from support.speech import build_recording, wav_bytes

    long_clip = wav_bytes(build_recording(spoken_sentences * 3, [0.5] * 18)[0])
    port = free_port()
    # SIGINT at its default in the server even when pytest runs with it ignored (support.processes)
    proc = processes.start([sys.executable, "-m", "rapl"], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           env=environment(BACKEND="whisper", LOCAL_MODEL=whisper_model, PORT=str(port)))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base)
        answers: list[httpx.Response] = []
        client = threading.Thread(target=lambda: answers.append(httpx.post(
            f"{base}/v1/audio/transcriptions", files={"file": ("long.wav", long_clip)}, timeout=120)))
        client.start()
        wait_until(lambda: httpx.get(f"{base}/health", timeout=5).json()["busy"], timeout=60,
                   what="the model to start on the long clip", interval=0.05)
        proc.send_signal(signum)
        client.join(timeout=120)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
    finally:
        processes.kill(proc)
    assert answers and answers[0].status_code == 200, err[-2000:]
    assert "platform" in answers[0].json()["text"].lower()
    assert "finishing the running transcription" in out


def test_check_and_serve_give_the_same_mlx_advice(tmp_path: Path) -> None:
    """Without mlx-audio, `check` and `serve` name the same install command for this platform."""
    from rapl.backends.mlx import install_command

    shim = tmp_path / "shim"
    shim.mkdir()
    # as on a machine without mlx-audio: `import mlx_audio` fails and find_spec finds nothing
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['mlx_audio'] = None\n")
    env = {"PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}
    check = rapl("check", BACKEND="mlx", PORT=str(free_port()), timeout=60, **env)
    serve = rapl("serve", BACKEND="mlx", PORT=str(free_port()), timeout=60, **env)
    assert check.returncode == 1 and serve.returncode == 2
    assert install_command() in check.stdout, check.stdout
    assert install_command() in serve.stderr, serve.stderr
    assert "BACKEND=whisper" not in check.stdout  # no contradicting advice


def test_check_reports_the_users_own_running_rapl_as_in_use_not_as_a_failure(whisper_model: str) -> None:
    """`rapl check` beside a running RAPL on the same settings: the port is RAPL's, which is no failure."""
    port = free_port()
    settings = {"BACKEND": "whisper", "LOCAL_MODEL": whisper_model, "PORT": str(port)}
    with processes.started([sys.executable, "-m", "rapl"], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=environment(**settings)) as proc:
        wait_healthy(proc, f"http://127.0.0.1:{port}")
        check = rapl("check", timeout=120, **settings)
    assert check.returncode == 0, check.stdout
    assert f"ok    port: RAPL already serves at 127.0.0.1:{port} (whisper model " in check.stdout
    assert "FAIL" not in check.stdout and "All checks passed" in check.stdout


def test_check_still_fails_on_a_port_taken_by_another_http_server(whisper_model: str) -> None:
    """Something that answers HTTP but is not RAPL is still another program on the port."""
    import http.server
    import threading

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        check = rapl("check", BACKEND="whisper", LOCAL_MODEL=whisper_model, PORT=str(other.server_port), timeout=120)
    finally:
        other.shutdown()
        other.server_close()
    assert check.returncode == 1 and f"FAIL  port: 127.0.0.1:{other.server_port} is already in use" in check.stdout


def test_models_lists_the_models_file_and_what_is_cached(tmp_path: Path, tiny_sensevoice: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(f'[models.chinese]\nbackend = "sensevoice"\nmodel = "{tiny_sensevoice}"\naliases = ["x-1"]\n'
                      '[models.big]\nbackend = "whisper"\nmodel = "Systran/faster-whisper-large-v3"\n')
    proc = rapl("models", MODELS_FILE=str(models), HF_HUB_CACHE=str(tmp_path / "none"),
                MODELSCOPE_CACHE=str(tmp_path / "none2"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "chinese (also x-1): sensevoice" in proc.stdout and "[local directory]" in proc.stdout
    assert "big: whisper Systran/faster-whisper-large-v3  [not cached: downloaded on first use]" in proc.stdout
    assert "iic/SenseVoiceSmall: sensevoice iic/SenseVoiceSmall" in proc.stdout  # the .env model, first
    models.write_text('[models.bad]\nbackend = "nope"\n')
    bad = rapl("models", MODELS_FILE=str(models), timeout=120)
    assert bad.returncode == 2 and "backend='nope' is invalid" in bad.stdout
