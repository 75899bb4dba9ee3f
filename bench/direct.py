"""The backend library alone, in a clean process of its own: the reference the server is measured against.

    python -m bench.direct --backend whisper --model PATH [--threads N]

It loads the model once with exactly the settings RAPL's backend uses (rapl/backends/whisper.py,
rapl/backends/sensevoice.py: same model, compute type, threads, decoding options, generate
kwargs), warms it up as RAPL does, prints one JSON line ``{"ready": true, ...}`` and then answers
one JSON line per JSON line read on stdin:

    {"op": "dictation", "path": P}            -> {"seconds": s, "text": t, "raw": r}   one call, whole clip
    {"op": "serial", "path": P, "n": 16}      -> {"seconds": [s, ...], "text": t}      n calls back to back
    {"op": "longform", "path": P}             -> {"seconds": s, "text": t} or {"error": "not measurable here: ..."}
    {"op": "chunks", "path": P, "chunks": [[start, end], ...]}  -> {"seconds": s, "text": t}  one call per chunk
    {"op": "rss"}                             -> {"rss": bytes, "hwm": bytes}
    {"op": "forget"} / {"op": "quit"}

``P`` is a ``.npy`` of 16 kHz float32 samples (what the benchmark decoded with rapl.audio, so both
sides get the same samples), a 16 kHz WAV/FLAC (read with soundfile) or anything ffmpeg reads.
Audio is decoded (and cached) outside the timing; ``seconds`` is the library call alone, with the
result fully consumed. Nothing of RAPL is imported here, and torch only by the sensevoice engine.
Whatever the libraries print goes to stderr, so stdout carries only the answers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

RATE = 16000
TAG = re.compile(r"<\|[^|]*\|>")
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # rapl.backends.whisper.temperatures(None)
FSMN_VAD = "iic/speech_fsmn_vad_zh-cn-16k-common-pytorch"  # what FunASR's "fsmn-vad" names
MODELSCOPE_HOST = "www.modelscope.cn"


def clean(text: str) -> str:
    """Text without SenseVoice's ``<|...|>`` tags, its whitespace collapsed (what RICH_TEXT=plain leaves)."""
    return " ".join(TAG.sub(" ", text).split())


def warm_up_noise(seconds: float = 1.0) -> np.ndarray:
    """rapl.backends.warm_up_noise: the audio RAPL warms a freshly loaded model with."""
    return np.random.default_rng(0).normal(0.0, 1e-3, int(seconds * RATE)).astype(np.float32)


def threads_setting() -> int:
    """RAPL's cpu_threads: THREADS, or every core when it is 0 or unset."""
    return int(os.environ.get("THREADS") or 0) or os.cpu_count() or 1


def load_audio(path: str) -> np.ndarray:
    """16 kHz mono float32 samples of ``path`` (not timed)."""
    p = Path(path)
    if p.suffix == ".npy":
        return np.ascontiguousarray(np.load(p), dtype=np.float32).reshape(-1)
    if p.suffix.lower() in (".wav", ".flac"):
        import soundfile as sf

        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
        if rate == RATE:
            return np.ascontiguousarray(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0], dtype=np.float32)
    proc = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(p), "-ac", "1", "-ar", str(RATE),
                           "-f", "f32le", "pipe:1"], capture_output=True, check=True)
    return np.frombuffer(proc.stdout, dtype="<f4").copy()


class Whisper:
    """faster-whisper as rapl.backends.whisper uses it."""

    def __init__(self, model: str, threads: int) -> None:
        from faster_whisper import WhisperModel

        device, index = "cpu", 0
        setting = os.environ.get("DEVICE", "auto")
        if setting in ("auto", "mps"):
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        else:
            device, _, idx = setting.partition(":")
            index = int(idx or 0)
        compute_type = os.environ.get("WHISPER_COMPUTE_TYPE", "default")
        if compute_type == "default":
            compute_type = "int8" if device == "cpu" else "float16"
        self.settings = {"device": device, "device_index": index, "compute_type": compute_type,
                         "cpu_threads": threads}
        self.model = WhisperModel(model, **self.settings)
        # What WhisperBackend.transcribe passes for a request with no language, prompt or keywords
        # (beam size and everything else: faster-whisper's defaults, as there).
        self.options: dict[str, Any] = {"language": None, "task": "transcribe", "initial_prompt": None,
                                        "hotwords": None, "temperature": TEMPERATURES, "word_timestamps": False}
        self.settings["transcribe"] = {k: v for k, v in self.options.items()}

    def warm_up(self) -> None:
        """WhisperBackend._warm_up."""
        segments, _ = self.model.transcribe(warm_up_noise(), language="en", beam_size=1, without_timestamps=True)
        list(segments)

    def _run(self, audio: np.ndarray, vad_filter: bool) -> str:
        segments, _info = self.model.transcribe(audio, vad_filter=vad_filter, **self.options)
        return " ".join(t for t in (s.text.strip() for s in segments) if t)

    def dictation(self, audio: np.ndarray) -> str:
        """One clip, whole, as the server's dictation path gives it to the model (vad_filter=False)."""
        return self._run(audio, vad_filter=False)

    def longform(self, audio: np.ndarray) -> str:
        """The library's own long-form call: its Silero VAD filter, then its 30 s windows."""
        return self._run(audio, vad_filter=True)

    def unavailable(self) -> str | None:
        """Why the long-form call cannot run here (None: it can)."""
        return None


class SenseVoice:
    """FunASR's AutoModel as rapl.backends.sensevoice uses it (SenseVoiceSmall family)."""

    def __init__(self, model: str, threads: int) -> None:
        import torch
        from funasr import AutoModel

        self.torch = torch
        setting = os.environ.get("DEVICE", "auto")
        device = setting
        if setting == "auto":
            mps = getattr(torch.backends, "mps", None)
            device = "cuda" if torch.cuda.is_available() else "mps" if mps is not None and mps.is_available() \
                else "cpu"
        torch.set_num_threads(threads)
        config = Path(model, "config.yaml")
        match = re.search(r"^model:\s*['\"]?([\w./-]+)", config.read_text(), re.MULTILINE) if config.is_file() \
            else None
        model_class = match.group(1) if match else None
        if model_class != "SenseVoiceSmall":
            raise RuntimeError(f"the direct process mirrors RAPL's SenseVoiceSmall settings only, not {model_class}")
        self.path = model
        self.threads = threads
        self.device = device
        self.load_kwargs: dict[str, Any] = {"device": device, "ncpu": threads, "disable_update": True,
                                            "disable_pbar": True, "disable_log": True,
                                            "log_level": os.environ.get("LOG_LEVEL", "INFO")}
        self.auto = AutoModel(model=model, **self.load_kwargs)
        use_itn = os.environ.get("USE_ITN", "true").strip().lower() in ("1", "true", "yes", "on")
        self.kwargs = {"language": "auto", "use_itn": use_itn}  # SenseVoiceBackend.generate_kwargs(Options())
        self.settings = {**self.load_kwargs, "torch_threads": threads, "generate": self.kwargs,
                         "model_class": model_class}
        self._vad_auto: Any = None

    def _generate(self, auto: Any, audio: np.ndarray, **extra: Any) -> str:
        if audio.size == 0:
            return ""
        with self.torch.inference_mode():
            results = auto.generate(input=audio, **self.kwargs, **extra)
        return str(results[0].get("text") or "") if results else ""  # SenseVoiceBackend._generate

    def warm_up(self) -> None:
        """SenseVoiceBackend._warm_up."""
        self._generate(self.auto, warm_up_noise())

    def dictation(self, audio: np.ndarray) -> str:
        """One clip, whole, as the server gives it to the model."""
        return self._generate(self.auto, audio)

    def vad_model(self) -> str | None:
        """fsmn-vad's directory in the ModelScope cache (both of its layouts), or None."""
        root = Path(os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope").expanduser()
        owner, name = FSMN_VAD.split("/")
        for path in (root / "hub" / owner / name, root / "hub" / "models" / owner / name, root / owner / name):
            if (path / "model.pt").is_file():
                return str(path)
        snapshots = root / "models" / f"{owner}--{name}" / "snapshots"
        for path in sorted(snapshots.glob("*")) if snapshots.is_dir() else []:
            if (path / "model.pt").is_file():
                return str(path)
        return None

    def unavailable(self) -> str | None:
        """Why FunASR's own long-form pipeline (AutoModel with vad_model="fsmn-vad") cannot run here."""
        if self.vad_model():
            return None
        root = os.environ.get("MODELSCOPE_CACHE") or "~/.cache/modelscope"
        try:
            with socket.create_connection((MODELSCOPE_HOST, 443), timeout=3):
                hub = f"{MODELSCOPE_HOST} answers, but the benchmark does not download models"
        except OSError as exc:
            hub = f"{MODELSCOPE_HOST} is unreachable ({type(exc).__name__}: {exc})"
        return (f"not measurable here: FunASR's long-form pipeline (AutoModel(vad_model='fsmn-vad')) needs "
                f"{FSMN_VAD}, which is not in the ModelScope cache ({root}), and {hub}; an FSMN-VAD built "
                f"offline would have made-up weights, so the speech spans it finds (and its time) would mean "
                f"nothing")

    def longform(self, audio: np.ndarray) -> str:
        """FunASR's own long-form call (SenseVoice's README: fsmn-vad, 30 s segments, merged up to 15 s)."""
        return self._generate(self._vad_auto, audio, batch_size_s=60, merge_vad=True, merge_length_s=15)

    def prepare_longform(self) -> None:
        """Load AutoModel with the VAD model (outside the timing)."""
        if self._vad_auto is None:
            from funasr import AutoModel

            self._vad_auto = AutoModel(model=self.path, vad_model=self.vad_model(),
                                       vad_kwargs={"max_single_segment_time": 30000}, **self.load_kwargs)
            self._generate(self._vad_auto, warm_up_noise(), batch_size_s=60, merge_vad=True, merge_length_s=15)


ENGINES: dict[str, Callable[[str, int], Any]] = {"whisper": Whisper, "sensevoice": SenseVoice}


def memory() -> dict[str, int]:
    """This process's VmRSS and VmHWM in bytes (Linux; 0 elsewhere)."""
    found = {"rss": 0, "hwm": 0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = {"VmRSS:": "rss", "VmHWM:": "hwm"}.get(line.split(":")[0] + ":")
            if key:
                found[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return found


def serve(engine: Any, lines: IO[str], answer: Callable[[dict[str, Any]], None]) -> None:
    """Answer requests until quit (or end of input)."""
    cache: dict[str, np.ndarray] = {}

    def audio(path: str, keep: bool = True) -> np.ndarray:
        if path in cache:
            return cache[path]
        pcm = load_audio(path)
        if keep:
            cache[path] = pcm
        return pcm

    for line in lines:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.get("op")
        try:
            if op == "quit":
                answer({"ok": True})
                return
            if op == "dictation":
                pcm = audio(req["path"])
                started = time.perf_counter()
                raw = engine.dictation(pcm)
                seconds = time.perf_counter() - started
                answer({"seconds": seconds, "text": clean(raw), "raw": raw[:2000]})
            elif op == "serial":
                pcm = audio(req["path"])
                times, raw = [], ""
                for _ in range(int(req.get("n", 1))):
                    started = time.perf_counter()
                    raw = engine.dictation(pcm)
                    times.append(time.perf_counter() - started)
                answer({"seconds": times, "text": clean(raw)})
            elif op == "longform":
                why = engine.unavailable()
                if why:
                    answer({"error": why, "unavailable": True})
                    continue
                if hasattr(engine, "prepare_longform"):
                    engine.prepare_longform()
                pcm = audio(req["path"], keep=False)
                started = time.perf_counter()
                raw = engine.longform(pcm)
                seconds = time.perf_counter() - started
                del pcm
                answer({"seconds": seconds, "text": clean(raw), **memory()})
            elif op == "chunks":
                pcm = audio(req["path"], keep=False)
                spans = [(int(s), int(e)) for s, e in req["chunks"]]
                started = time.perf_counter()
                texts = [engine.dictation(pcm[s:e]) for s, e in spans]
                seconds = time.perf_counter() - started
                del pcm
                answer({"seconds": seconds, "text": clean(" ".join(texts)), "chunks": len(spans), **memory()})
            elif op == "rss":
                answer(memory())
            elif op == "forget":
                cache.clear()
                answer({"ok": True})
            else:
                answer({"error": f"unknown op {op!r}"})
        except Exception as exc:  # noqa: BLE001 - reported to the caller, the process goes on
            answer({"error": f"{type(exc).__name__}: {exc}"})


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.direct`."""
    p = argparse.ArgumentParser(prog="python -m bench.direct", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=sorted(ENGINES), required=True)
    p.add_argument("--model", required=True, help="the model directory the server loads")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: THREADS, else every core)")
    args = p.parse_args(argv)
    out = os.fdopen(os.dup(1), "w", buffering=1)  # the answers; the libraries' prints go to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def answer(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    threads = args.threads or threads_setting()
    started = time.perf_counter()
    engine = ENGINES[args.backend](args.model, threads)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    engine.warm_up()
    answer({"ready": True, "pid": os.getpid(), "load_s": load_s, "warm_s": time.perf_counter() - started,
            "threads": threads, "settings": engine.settings, "torch_imported": "torch" in sys.modules,
            "rapl_imported": sorted(m for m in sys.modules if m == "rapl" or m.startswith("rapl.")), **memory()})
    serve(engine, sys.stdin, answer)
    return 0


# --------------------------------------------------------------------------- the caller's side


class Direct:
    """The direct process, seen from the benchmark: start it, send ops, stop it."""

    def __init__(self, backend: str, model: str, log_path: Path, threads: int = 0) -> None:
        self.backend = backend
        self.log_path = log_path
        argv = [sys.executable, "-m", "bench.direct", "--backend", backend, "--model", model]
        if threads:
            argv += ["--threads", str(threads)]
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        root = Path(__file__).resolve().parents[1]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, bufsize=1)
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        """The direct process's id."""
        return self.proc.pid

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise RuntimeError(f"direct {self.backend} process exited {self.proc.returncode}: {self.tail()}")
        return json.loads(line)

    def wait_ready(self) -> dict[str, Any]:
        """Block until the model is loaded and warmed up; its ready message (load_s, warm_s, settings...)."""
        self.info = self._read()
        self.info["ready_s"] = time.perf_counter() - self.started
        return self.info

    def call(self, op: str, check: bool = True, **fields: Any) -> dict[str, Any]:
        """Send one op and wait for its answer; an answer with ``error`` raises when ``check``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if check and "error" in reply:
            raise RuntimeError(f"direct {self.backend} {op}: {reply['error']}")
        return reply

    def tail(self, lines: int = 6) -> str:
        """The last lines of its log."""
        from bench.net import log_tail

        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        """Ask it to quit; terminate it if it does not."""
        if self.proc.poll() is None:
            try:
                self.call("quit", check=False)
            except (OSError, RuntimeError, ValueError):
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                self.proc.wait(timeout=15)
        self._log.close()


if __name__ == "__main__":
    sys.exit(main())
