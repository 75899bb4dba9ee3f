"""Installing as a user does: README's quick start in a fresh virtual environment, and a clean wheel."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx2 as httpx
import pytest

from support import ROOT, processes
from support.net import free_port
from support.speech import JFK_TEXT, wer

pytestmark = pytest.mark.slow  # a fresh virtual environment, pip installs and a real model

SYSTEM_PYTHON = Path("/usr/bin/python3")


def readme_block(after: str, language: str) -> str:
    """The first ```language block after the line containing ``after`` in README.md."""
    readme = (ROOT / "README.md").read_text()
    rest = readme[readme.index(after):]
    return re.search(rf"```{language}\n(.*?)\n```", rest, re.S).group(1).strip()


def working_tree_copy(dst: Path) -> Path:
    """The files a fresh clone has (tracked, plus new files git does not ignore), copied to ``dst``."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file() and "node_modules" not in src.parts:
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


def test_wheel_installs_only_the_rapl_package(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(working_tree_copy(tmp_path / "src"))], check=True)
    (wheel,) = (tmp_path / "dist").glob("rapl-*.whl")
    top = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {n for n in top if not n.endswith(".dist-info")} == {"rapl"}, top  # no top-level `config`
    names = zipfile.ZipFile(wheel).namelist()
    assert "rapl/http/static/index.html" in names and "rapl/settings.py" in names
    assert not any(n.startswith(("config/", "tests/", "bench/", "deploy/")) for n in names)


@pytest.mark.skipif(not SYSTEM_PYTHON.is_file() or sys.platform == "win32",
                    reason="needs the system Python at /usr/bin/python3 (macOS/Linux quick start)")
def test_readme_quick_start_in_a_fresh_virtual_environment(tmp_path: Path, whisper_model: str, jfk: Path) -> None:
    """README's macOS/Linux command, run literally by bash in a copy of the repository, on the system Python.

    README's Linux CPU-torch step runs first, as README orders it; only its index is stood in for:
    README's points at PyTorch's own index, which this machine cannot reach, so torch comes from the
    CPU wheel the machine's pip already has.
    """
    pytorch_index = " --index-url https://download.pytorch.org/whl/cpu"
    cpu_torch = readme_block("NVIDIA GPU, first", "sh")
    assert cpu_torch.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install torch")
    assert cpu_torch.endswith(pytorch_index)
    serve = readme_block("Then, on macOS and Linux alike", "sh")
    assert serve.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt")
    command = f"{cpu_torch.removesuffix(pytorch_index)} && {serve}"
    repo = working_tree_copy(tmp_path / "rapl")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").symlink_to(SYSTEM_PYTHON)  # `python3` is the system's, as on a fresh machine
    constraints = tmp_path / "torch-cpu.txt"
    constraints.write_text("torch==2.13.0\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.update(PATH=f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}", PIP_CONSTRAINT=str(constraints),
               PIP_DISABLE_PIP_VERSION_CHECK="1", BACKEND="whisper", LOCAL_MODEL=whisper_model, PORT=str(port),
               PROGRESS="false")
    started = time.monotonic()
    proc = processes.start(["bash", "-c", command], cwd=repo, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)  # its own process group, SIGTERM at its default
    try:
        status = _wait_for_health(port, proc, deadline=time.monotonic() + 900)
        assert status == 200, proc.stdout.read() if proc.poll() is not None else "no answer"
        installed = time.monotonic() - started
        resp = httpx.post(f"http://127.0.0.1:{port}/v1/audio/transcriptions", timeout=120,
                          files={"file": ("jfk.flac", jfk.read_bytes())})
        assert resp.status_code == 200 and wer(JFK_TEXT, resp.json()["text"]) <= 0.10
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the graceful stop, for bash and the server it started
            output = proc.communicate(timeout=60)[0]
        finally:
            processes.kill(proc)
    venv = repo / ".venv"
    python = venv / "bin" / "python"
    assert python.resolve() == SYSTEM_PYTHON.resolve()  # the system's Python, in its own environment
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"quick start: installed and serving in {installed:.0f} s; .venv {size / 2**20:.0f} MiB")
    assert "RAPL serving whisper model" in output


def _wait_for_health(port: int, proc: subprocess.Popen[str], deadline: float) -> int | None:
    status = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            status = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code
        except httpx.TransportError:
            status = None
        if status == 200:
            return status
        time.sleep(1)
    return status


def test_readme_python_example_prints_the_transcript_and_the_stream(whisper_server, jfk: Path,  # noqa: ANN001
                                                                     tmp_path: Path) -> None:
    """README's Python block, run as written with the official SDK (only the URL and the file are ours):
    both the verbose_json answer and the streamed words reach the terminal."""
    from support.speech import ffmpeg

    code = readme_block("### Python (official `openai` SDK)", "python")
    assert 'base_url="http://127.0.0.1:8000/v1"' in code and code.count('"meeting.m4a"') == 2
    ffmpeg(jfk, tmp_path / "meeting.m4a", "-c:a", "aac", "-b:a", "64k")
    script = tmp_path / "example.py"
    script.write_text(code.replace("http://127.0.0.1:8000/v1", f"{whisper_server.url}/v1"))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    answer, streamed = proc.stdout.split("\n", 1)
    assert wer(JFK_TEXT, answer.split(" english [", 1)[0]) <= 0.10, proc.stdout  # text, language, segments
    assert wer(JFK_TEXT, streamed) <= 0.10, proc.stdout  # the deltas, as they came
