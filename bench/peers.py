"""Other OpenAI-compatible servers on the same model files, measured beside RAPL.

* FunASR's own server (``funasr.bin.server``, FastAPI + uvicorn), shipped inside the
  installed ``funasr`` package, on the tiny SenseVoice model directory.
* ``faster-whisper-server`` from PyPI (FastAPI + uvicorn around faster-whisper) on the
  Whisper tiny.en directory, with the same CTranslate2 settings as RAPL (int8, 2 threads).

Their extra packages (fastapi, uvicorn, python-multipart, faster-whisper-server) go into
``bench/.venv-peers`` (a venv that sees the main environment's packages but changes none
of them), created on the first run.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import net
from bench.media import mime
from bench.servers import server_env
from bench.stats import summary

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "bench" / ".venv-peers"
PEER_PACKAGES = ("faster-whisper-server", "fastapi", "uvicorn", "python-multipart")
log = logging.getLogger("bench")
_ERROR = re.compile(r"^[\w.]*(Error|Exception|Exit|Interrupt)\b[^:]*:")


def last_error(log_path: Path) -> str:
    """The last ``SomeError: ...`` line of a server's log (not the import warnings FunASR lists), or ""."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    found = [line.strip() for line in lines if _ERROR.match(line.strip())]
    return found[-1][:300] if found else ""


def venv_python() -> Path:
    """The peers' venv interpreter."""
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(install: bool) -> tuple[Path | None, str]:
    """The venv's python once it can import the peers, else None and the exact reason."""
    python = venv_python()
    probe = "import fastapi, uvicorn, multipart, faster_whisper_server, funasr.bin.server"

    def works() -> tuple[bool, str]:
        if not python.is_file():
            return False, f"{python} does not exist"
        proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=300)
        return proc.returncode == 0, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""

    ok, why = works()
    if ok or not install:
        return (python if ok else None), ("" if ok else f"peer venv not usable ({why}); run without --no-peer-install")
    log.info("creating %s and installing %s (once)", VENV, ", ".join(PEER_PACKAGES))
    if not python.is_file():
        proc = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(VENV)],
                              capture_output=True, text=True)
        if proc.returncode:
            return None, f"python -m venv failed: {proc.stderr.strip()[-300:]}"
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], capture_output=True,
                          text=True, timeout=1200)
    if proc.returncode:
        return None, f"pip install {' '.join(PEER_PACKAGES)} failed: {proc.stderr.strip()[-400:]}"
    ok, why = works()
    return (python if ok else None), ("" if ok else f"installed, but the import fails: {why}")


def _specs(backend: str, model: str, work: Path, python: Path | None) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    for vad in ("true", "false"):
        specs.append({"name": f"RAPL (VAD={vad})", "argv": [sys.executable, "-m", "rapl"], "rapl": True,
                      "env": lambda port, vad=vad: server_env(backend, model, port, VAD=vad)})
    if python is None:
        return specs
    if backend == "sensevoice":
        specs.append({"name": "FunASR server (funasr.bin.server)", "rapl": False,
                      "argv": lambda port: [str(python), "-m", "funasr.bin.server", "--host", net.HOST, "--port",
                                            str(port), "--device", "cpu", "--model-path", model],
                      "env": lambda port: {"MODELSCOPE_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
                      "notes": "no VAD for a --model-path model; writes each upload to a temporary file; "
                               "AutoModel's default ncpu=4 torch threads on this 2-core machine"})
    else:
        config = work / "faster-whisper-server.yaml"
        config.write_text("models:\n  - name: whisper-1\n"
                          f"    path: {model}\n"
                          "    model_options: {device: cpu, compute_type: int8, cpu_threads: "
                          f"{os.cpu_count() or 1}}}\n")
        specs.append({"name": "faster-whisper-server 0.0.3 (PyPI)", "rapl": False,
                      "argv": lambda port: [str(python), "-m", "faster_whisper_server", "--config", str(config),
                                            "--host", net.HOST, "--port", str(port), "--log-level", "info"],
                      "env": lambda port: {"HF_HUB_OFFLINE": "1"},
                      "notes": "no VAD; model loads on the first request; transcribes on the event loop"})
    return specs


def run(backend: str, model: str, work: Path, clips: dict[str, dict[str, str]], repeat: int, install: bool,
        throughput_requests: int = 8, clients: int = 4) -> dict[str, Any]:
    """Latency, throughput, start-up and idle RSS of RAPL and each peer, interleaved request by request."""
    python, reason = ensure_venv(install)
    out: dict[str, Any] = {"backend": backend, "model": model, "servers": [], "skipped": []}
    if python is None:
        out["skipped"].append(reason)
    cases = [("3", "wav16"), ("10", "wav16"), ("10", "m4a")]
    cases = [(s, f) for s, f in cases if s in clips]
    bodies = {}
    for seconds, fmt in cases:
        path = Path(clips[seconds][fmt])
        bodies[(seconds, fmt)] = net.multipart(path.read_bytes(), path.name, mime(str(path)))
    running: list[tuple[dict[str, Any], net.ServerProcess, dict[str, Any]]] = []
    try:
        for spec in _specs(backend, model, work, python):
            port = net.free_port()
            argv = spec["argv"](port) if callable(spec["argv"]) else spec["argv"]
            slug = "".join(c if c.isalnum() else "-" for c in spec["name"].lower())
            srv = net.ServerProcess(spec["name"], argv, port, work / f"peer-{backend}-{slug}.log",
                                    spec["env"](port), cwd=ROOT if spec["rapl"] else work)
            row: dict[str, Any] = {"name": spec["name"], "notes": spec.get("notes", ""), "latency": {}}
            try:
                srv.start()
                row["ready_s"] = srv.wait_ready(timeout=300)
                client = net.Client(port)
                body, ctype = bodies[("10", "wav16")]
                first = client.post(body, ctype)
                if first.status != 200:
                    raise RuntimeError(f"HTTP {first.status}: {first.body[:300]!r}")
                row["first_s"] = first.seconds
                row["to_first_result_s"] = time.perf_counter() - srv.started
                row["text"] = str((first.json() or {}).get("text", ""))[:100]
                for key in cases:  # warm every case
                    client.post(*bodies[key])
                client.close()
                time.sleep(0.5)
                row["idle_rss"] = net.rss(srv.pid)
                running.append((spec, srv, row))
            except Exception as exc:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
                srv.stop()
                why = last_error(srv.log_path) or f"{type(exc).__name__}: {str(exc)[:300]}"
                out["skipped"].append(f"{spec['name']}: {why} (log: {srv.log_path.name})")
        samples: dict[tuple[str, tuple[str, str]], list[float]] = {}
        for rep in range(repeat):
            order = running[rep % len(running):] + running[:rep % len(running)] if running else []
            for key in cases:
                for _spec, srv, row in order:
                    client = net.Client(srv.port)
                    reply = client.post(*bodies[key])
                    client.close()
                    if reply.status == 200:
                        samples.setdefault((row["name"], key), []).append(reply.seconds)
        for _spec, srv, row in running:
            for key in cases:
                row["latency"][f"{key[0]}s {key[1]}"] = summary(samples.get((row["name"], key), []))
            with net.HealthPoller(srv.port) as poll:
                wall, replies = net.concurrent_requests(srv.port, [bodies[("10", "wav16")]] * throughput_requests,
                                                        clients)
            ok = sum(1 for r in replies if r.status == 200)
            row["throughput"] = ok / wall
            row["throughput_latency"] = summary([r.seconds for r in replies if r.status == 200])
            row["health_busy"] = summary(poll.samples)
            row["clients"] = clients
            log.info("peers %s: %s %.2f req/s, 10 s WAV %.0f ms", backend, row["name"], row["throughput"],
                     row["latency"].get("10s wav16", {}).get("median", float("nan")) * 1000)
            out["servers"].append(row)
    finally:
        for _spec, srv, _row in running:
            srv.stop()
    return out
