"""The measurements of one backend, run in a process of their own (``python -m bench --child``).

One process per backend keeps their runtimes apart: torch (FunASR) and CTranslate2 each
bring an OpenMP thread pool, and with both loaded Whisper runs up to 2x slower here.

* overhead: the real app under waitress in this process; every request's own model time
  is taken by wrapping ``rapl.pipeline.run`` (the call the API makes), so the overhead of
  each request is its latency minus the model time of that same request. Direct calls of
  ``pipeline.run`` on the same decoded audio check that the model is no slower inside the
  server than outside it.
* start-up, queue, long files: ``python -m rapl`` in a subprocess, measured from outside
  (psutil, /proc), with direct calls of the same model in this process for reference.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import net
from bench.load import LoadMonitor
from bench.media import mime
from bench.stats import summary

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench")
NOISY = 0.25  # other processes' mean CPU (cores) above which a measurement is taken again
RETRIES = 2
MONITOR: LoadMonitor | None = None


def settle(what: str, limit: float = 120.0) -> float:
    """Wait for other processes' load to drop below NOISY (at most ``limit`` s); the seconds waited."""
    return MONITOR.wait_quiet(NOISY, limit, log, what) if MONITOR else 0.0


def quiet(measure: Callable[[], dict[str, Any]], what: str, retries: int = RETRIES) -> dict[str, Any]:
    """Run ``measure``; while other processes kept more than NOISY cores busy during it, run it again
    (up to ``retries`` times) and keep the quietest attempt. Adds ``other_load`` and ``attempts``."""
    best: dict[str, Any] | None = None
    for attempt in range(retries + 1):
        waited = settle(what)
        start = time.time()
        value = measure()
        end = time.time()
        time.sleep(MONITOR.interval * 1.1 if MONITOR else 0)  # let the monitor sample the end of the window
        other = MONITOR.window(start, end)["other"] if MONITOR else float("nan")
        value.update(other_load=other, attempts=attempt + 1, waited_s=waited)
        if best is None or not other >= best["other_load"]:
            best = value
        if not other > NOISY:
            break
        log.info("%s: other processes used %.2f cores meanwhile; measuring again", what, other)
    assert best is not None
    return best

MODEL_TIMES: dict[str, float] = {}  # request id -> pipeline.run seconds inside the server
MODEL_CHUNKS: dict[str, list[Any]] = {}  # request id -> the chunks the server gave pipeline.run
SERVER_CHUNKS: dict[tuple[str, str, bool], list[Any]] = {}  # (clip, format, VAD) -> chunks the server used
LAST: dict[str, float] = {}  # the last decode / VAD plan inside the server (requests run one at a time)
_lock = threading.Lock()
ORIGINAL: dict[str, Callable[..., Any]] = {}  # rapl.audio.decode and pipeline.run before they are wrapped


def decode_direct(data: bytes) -> Any:
    """rapl.audio.decode itself (not the timed wrapper the server calls)."""
    return ORIGINAL["decode"](data)


def _install_model_timer() -> Callable[..., Any]:
    """Wrap rapl.pipeline.run so every request's model time is recorded by its request id, and
    rapl.audio.decode so the last in-request decode time is kept. Returns the original run."""
    from rapl import audio, pipeline

    original = pipeline.run

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            with _lock:
                label = str(kwargs.get("label", ""))
                MODEL_TIMES[label] = time.perf_counter() - started
                MODEL_CHUNKS[label] = list(args[3] if len(args) > 3 else kwargs.get("chunks", []))

    pipeline.run = timed
    ORIGINAL["run"] = original
    ORIGINAL["decode"] = _time_attr(audio, "decode", "decode")
    return original


def _time_attr(owner: Any, name: str, key: str) -> Callable[..., Any]:
    """Replace ``owner.name`` by a wrapper that stores its last duration in LAST[key]."""
    original = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            LAST[key] = time.perf_counter() - started

    setattr(owner, name, timed)
    return original


def server_env(backend: str, model: str, port: int, **extra: str) -> dict[str, str]:
    """Environment for ``python -m rapl``: defaults except the progress bar, no .env file."""
    return {"ENV_FILE": "", "BACKEND": backend, "LOCAL_MODEL": model, "HOST": net.HOST, "PORT": str(port),
            "PROGRESS": "false", "MAX_UPLOAD_MB": "2048", "REQUEST_TIMEOUT": "3600", **extra}


class InProcessServer:
    """The real app (create_app) under waitress, on a thread of this process, as cli.serve runs it."""

    def __init__(self, backend: str, model: str, vad: bool) -> None:
        from waitress.server import create_server

        from rapl import create_app
        from rapl.server import adjustments

        self.app = create_app({"ENV_FILE": "", "BACKEND": backend, "LOCAL_MODEL": model, "PROGRESS": "false",
                               "VAD": "true" if vad else "false"})
        settings = self.app.config["RAPL_SETTINGS"]
        self.worker = self.app.extensions["rapl"]
        served = {**adjustments(settings), "host": net.HOST, "port": 0}  # as RAPL's launchers serve
        self.server = create_server(self.app, **served)
        self.port = int(self.server.effective_port)
        self.thread = threading.Thread(target=self._serve, daemon=True, name="waitress")
        self.thread.start()
        self.worker.loaded.result()
        if self.worker.state != "ready":
            raise RuntimeError(f"model did not load: {self.worker.error}")

    def _serve(self) -> None:
        try:
            self.server.run()
        except OSError:  # close() pulls the socket from under select(): that is how it stops
            pass

    def close_http(self) -> None:
        """Stop serving HTTP (the model stays loaded for direct calls)."""
        self.server.close()
        self.thread.join(timeout=10)

    def close(self) -> None:
        """Stop serving and stop the model thread."""
        self.close_http()
        self.worker.shutdown()


def _check(reply: net.Reply, what: str) -> net.Reply:
    if reply.status != 200:
        raise RuntimeError(f"{what}: HTTP {reply.status}: {reply.body[:300]!r}")
    return reply


def _load_bodies(clips: dict[str, dict[str, str]], formats: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    items = {}
    for seconds, by_format in clips.items():
        for fmt in formats:
            path = Path(by_format[fmt])
            data = path.read_bytes()
            body, ctype = net.multipart(data, path.name, mime(str(path)))
            items[(seconds, fmt)] = {"data": data, "body": body, "ctype": ctype, "path": str(path)}
    return items


# --------------------------------------------------------------------------- overhead


def overhead(backend: str, model: str, clips: dict[str, dict[str, str]], formats: list[str], repeat: int,
             original_run: Callable[..., Any], direct_formats: tuple[str, ...] = ("wav16",),
             ) -> tuple[list[dict[str, Any]], InProcessServer]:
    """Request latency through the in-process server minus the model time, per clip, format and VAD
    setting. Returns the rows and the VAD=true server (HTTP closed, model kept for direct calls)."""
    from rapl.transcription import Options

    items = _load_bodies(clips, formats)
    decoded = {key: decode_direct(item["data"]) for key, item in items.items()}
    rows: list[dict[str, Any]] = []
    kept: InProcessServer | None = None
    for vad in (False, True):
        log.info("overhead: %s, VAD=%s", backend, vad)
        settle(f"overhead, VAD={vad}")
        srv = InProcessServer(backend, model, vad)
        worker = srv.worker
        seg, be = worker.segmenter, worker.backend
        _time_attr(seg, "speech", "vad")  # Silero, wherever the server calls it from (plan or the fast path)
        client = net.Client(srv.port)
        failed: dict[tuple[str, str], str] = {}
        chunks: dict[tuple[str, str], list[Any]] = {}
        for key, item in items.items():  # warm every path once (first requests: see start-up)
            reply = client.post(item["body"], item["ctype"])
            if reply.status != 200:  # a request the server cannot answer is a finding, not the end of the run
                failed[key] = f"HTTP {reply.status}: {reply.body[:200].decode(errors='replace')}"
                log.error("overhead %s, VAD=%s: %s", key, vad, failed[key])
            with _lock:  # direct calls get exactly the chunks the server used
                chunks[key] = MODEL_CHUNKS.pop(reply.headers.get("x-request-id", ""), [])
                MODEL_TIMES.pop(reply.headers.get("x-request-id", ""), None)
        SERVER_CHUNKS.update({(*key, vad): c for key, c in chunks.items()})
        names = ("latency", "model", "overhead", "http", "decode", "vad_plan", "other", "direct")
        acc: dict[tuple[str, str], dict[str, list[float]]] = {key: {k: [] for k in names} for key in items}
        texts: dict[tuple[str, str], str] = {}
        for _rep in range(repeat):
            for key, item in items.items():
                if key in failed:
                    continue
                LAST.clear()
                reply = client.post(item["body"], item["ctype"])
                if reply.status != 200:
                    failed[key] = f"HTTP {reply.status}: {reply.body[:200].decode(errors='replace')}"
                    continue
                rid = reply.headers.get("x-request-id", "")
                with _lock:
                    model_s = MODEL_TIMES.pop(rid, 0.0)
                    MODEL_CHUNKS.pop(rid, None)
                processing = float(reply.headers.get("openai-processing-ms", "nan")) / 1000
                a = acc[key]
                a["latency"].append(reply.seconds)
                a["model"].append(model_s)
                a["overhead"].append(reply.seconds - model_s)
                a["http"].append(reply.seconds - processing)
                a["decode"].append(LAST.get("decode", 0.0))
                a["vad_plan"].append(LAST.get("vad", 0.0))
                a["other"].append(processing - model_s - LAST.get("decode", 0.0) - LAST.get("vad", 0.0))
                texts.setdefault(key, str((reply.json() or {}).get("text", ""))[:80])
                if key[1] in direct_formats:
                    started = time.perf_counter()
                    original_run(be, decoded[key], Options(), chunks[key], label="direct", progress=False)
                    a["direct"].append(time.perf_counter() - started)
        client.close()
        for (seconds, fmt), a in acc.items():
            rows.append({"backend": backend, "clip_s": int(seconds), "format": fmt, "vad": vad,
                         "chunks": len(chunks[(seconds, fmt)]), "text": texts.get((seconds, fmt), ""),
                         "samples": int(decoded[(seconds, fmt)].size),
                         "chunk_samples": [c.end - c.start for c in chunks[(seconds, fmt)]][:8],
                         "error": failed.get((seconds, fmt)), **{k: summary(v) for k, v in a.items()}})
        if vad:
            srv.close_http()
            kept = srv
        else:
            srv.close()
            del srv
            gc.collect()
    assert kept is not None
    return rows, kept


# --------------------------------------------------------------------------- start-up


def startup(backend: str, model: str, work: Path, wav: dict[str, Any], m4a: dict[str, Any], runs: int,
            steady: int = 5) -> tuple[list[dict[str, Any]], net.ServerProcess]:
    """Start ``python -m rapl`` ``runs`` times: time to /health 200, idle RSS, first vs steady requests.
    Returns the measurements and the last server, still running."""
    results = []
    srv: net.ServerProcess | None = None
    for i in range(runs):
        if srv is not None:
            srv.stop()
        settle(f"start-up #{i + 1}")
        window_start = time.time()
        port = net.free_port()
        srv = net.ServerProcess(f"rapl-{backend}", [sys.executable, "-m", "rapl"], port,
                                work / f"server-{backend}-{i}.log", server_env(backend, model, port), cwd=ROOT)
        srv.start()
        ready = srv.wait_ready()
        time.sleep(1.0)
        idle = net.rss(srv.pid)
        client = net.Client(port)
        first = _check(client.post(wav["body"], wav["ctype"]), "first request").seconds
        first_m4a = _check(client.post(m4a["body"], m4a["ctype"]), "first m4a").seconds
        steady_wav = [_check(client.post(wav["body"], wav["ctype"]), "steady").seconds for _ in range(steady)]
        steady_m4a = [_check(client.post(m4a["body"], m4a["ctype"]), "steady m4a").seconds
                      for _ in range(max(2, steady // 2))]
        client.close()
        time.sleep(MONITOR.interval * 1.1 if MONITOR else 0)
        other = MONITOR.window(window_start, time.time())["other"] if MONITOR else float("nan")
        results.append({"other_load": other, "open_s": srv.open_s, "ready_s": ready, "idle_rss": idle,
                        "first_wav": first, "first_m4a": first_m4a, "steady_wav": summary(steady_wav),
                        "steady_m4a": summary(steady_m4a)})
        log.info("start-up %s #%d: ready in %.2f s, first %.0f ms, steady %.0f ms", backend, i, ready,
                 first * 1000, results[-1]["steady_wav"]["median"] * 1000)
    assert srv is not None
    return results, srv


# --------------------------------------------------------------------------- queue


def queue(port: int, item: dict[str, Any], pcm: Any, chunks: list[Any], be: Any, original_run: Callable[..., Any],
          requests: int, levels: tuple[int, ...] = (1, 4, 16),
          whatif: dict[str, Callable[[], net.ServerProcess]] | None = None) -> dict[str, Any]:
    """Throughput and latency with 1/4/16 concurrent clients, /health while busy, each level against serial
    direct calls of the model run just before it."""
    from rapl.transcription import Options

    def serial() -> list[float]:
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            original_run(be, pcm, Options(), chunks, label="direct", progress=False)
            times.append(time.perf_counter() - started)
        time.sleep(0.3)
        return times

    with net.HealthPoller(port) as idle_poll:
        time.sleep(1.5)
    out: dict[str, Any] = {"requests": requests, "idle_health": summary(idle_poll.samples), "levels": []}
    runs: list[tuple[str, int, int]] = [("", port, c) for c in levels]
    runs += [(name, 0, max(levels)) for name in (whatif or {})]
    for name, level_port, clients in runs:
        what_srv: net.ServerProcess | None = None
        if name:
            what_srv = (whatif or {})[name]()
            what_srv.wait_ready()
            warm = net.Client(what_srv.port)
            _check(warm.post(item["body"], item["ctype"]), f"what-if {name}")
            warm.close()
            level_port = what_srv.port

        def level(clients: int = clients, port: int = level_port) -> dict[str, Any]:
            direct = serial()  # the model alone, just before this level, so both see the same machine load
            with net.HealthPoller(port) as poll:
                wall, replies = net.concurrent_requests(port, [(item["body"], item["ctype"])] * requests, clients)
            ok = [r for r in replies if r.status == 200]
            return {"clients": clients, "wall": wall, "throughput": len(ok) / wall,
                    "direct": summary(direct), "direct_throughput": requests / sum(direct),
                    "latency": summary([r.seconds for r in ok]),
                    "status": {str(s): sum(1 for r in replies if r.status == s)
                               for s in sorted({r.status for r in replies})},
                    "health": summary(poll.samples), "health_failures": poll.failures}

        try:
            lv = quiet(level, f"queue, {clients} clients {name}")
        finally:
            if what_srv is not None:
                what_srv.stop()
        lv["what_if"] = name
        out["levels"].append(lv)
        log.info("queue: %d clients, %.2f req/s (serial direct %.2f), /health p95 %.1f ms (other load %.2f)",
                 clients, lv["throughput"], lv["direct_throughput"], lv["health"]["p95"] * 1000, lv["other_load"])
    return out


# Servers for the proposals measured beside the current code (rapl/ itself is not changed):
SWITCH_1MS = "import sys; sys.setswitchinterval(0.001); from rapl.cli import main; sys.exit(main())"
PLAIN = "import sys; from rapl.cli import main; sys.exit(main())"
GATED_PREPROCESSING = """
import sys, threading
from rapl import audio, vad
gate = threading.BoundedSemaphore(1)

def gated(fn):
    def call(*args, **kwargs):
        with gate:
            return fn(*args, **kwargs)
    return call

audio.decode = gated(audio.decode)
vad.Segmenter.speech = gated(vad.Segmenter.speech)
from rapl.cli import main
sys.exit(main())
"""


# --------------------------------------------------------------------------- long files


def long_files(srv: net.ServerProcess, long: dict[str, dict[str, Any]], minutes: list[str], be: Any, seg: Any,
               original_run: Callable[..., Any]) -> list[dict[str, Any]]:
    """RTF through the server vs direct with the same segmentation; decode speed; the server's peak RSS."""
    from rapl.transcription import Options

    rows = []
    for key in minutes:
        spec = long[key]
        path = Path(spec["path"])
        data = path.read_bytes()

        def measure(data: bytes = data, path: Path = path, spec: dict[str, Any] = spec,
                    key: str = key) -> dict[str, Any]:
            body, ctype = net.multipart(data, path.name, "audio/flac")
            gc.collect()
            time.sleep(0.5)
            idle = net.rss(srv.pid)
            hwm_ok = net.reset_peak_rss(srv.pid)
            client = net.Client(srv.port)
            with net.RSSSampler(srv.pid) as sampler:
                reply = _check(client.post(body, ctype), f"long {key} min")
            client.close()
            hwm = net.peak_rss(srv.pid) if hwm_ok else None
            peak = max(hwm or 0, sampler.peak)
            del body
            server_text = str((reply.json() or {}).get("text", ""))
            started = time.perf_counter()
            pcm = decode_direct(data)
            decode_s = time.perf_counter() - started
            started = time.perf_counter()
            chunks = seg.plan(pcm, merge=be.segments_audio)
            vad_s = time.perf_counter() - started
            started = time.perf_counter()
            result = original_run(be, pcm, Options(), chunks, label="direct", progress=False)
            direct_s = time.perf_counter() - started
            overlap_s = overlapped(be, seg, pcm, original_run)
            return {"overlap_s": overlap_s, "minutes": float(key), "seconds": len(pcm) / 16000,
                    "speech_fraction": spec["speech_fraction"],
                    "upload_bytes": len(data), "server_s": reply.seconds, "direct_s": direct_s, "vad_s": vad_s,
                    "decode_s": decode_s, "chunks": len(chunks), "idle_rss": idle, "peak_rss": peak,
                    "peak_source": "VmHWM+sampling" if hwm else "sampling", "audio_bytes": int(pcm.nbytes),
                    "same_text": server_text == result.text, "words": len(result.text.split())}

        row = quiet(measure, f"long {key} min", retries=RETRIES if float(key) <= 10 else 0)
        rows.append(row)
        log.info("long %s min: server %.1f s, direct %.1f s, VAD %.1f s, decode %.2f s, peak RSS +%.0f MB "
                 "(other load %.2f)", key, row["server_s"], row["direct_s"], row["vad_s"], row["decode_s"],
                 (row["peak_rss"] - row["idle_rss"]) / 2**20, row["other_load"])
        gc.collect()
    return rows


def overlapped(be: Any, seg: Any, pcm: Any, original_run: Callable[..., Any], block_seconds: int = 60) -> float:
    """The proposed long-file pipeline, measured: VAD plans block k+1 (a thread, as the request thread
    would) while the model transcribes block k. Returns the wall time of VAD + model together."""
    import queue as queue_mod

    from rapl.transcription import Options
    from rapl.vad import Chunk

    block = block_seconds * 16000
    planned: queue_mod.Queue[list[Any] | None] = queue_mod.Queue()

    def plan() -> None:
        for start in range(0, len(pcm), block):
            chunks = seg.plan(pcm[start:start + block], merge=be.segments_audio)
            planned.put([Chunk(c.start + start, c.end + start) for c in chunks])
        planned.put(None)

    started = time.perf_counter()
    producer = threading.Thread(target=plan, daemon=True)
    producer.start()
    while (chunks := planned.get()) is not None:
        if chunks:
            original_run(be, pcm, Options(), chunks, label="overlap", progress=False)
    producer.join()
    return time.perf_counter() - started


# --------------------------------------------------------------------------- entry


def run(args: Any) -> int:
    """Entry point of the child process: measure one backend, write JSON to ``args.child_out``."""
    work = Path(args.work)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        handlers=[logging.FileHandler(work / f"child-{args.backend}.log")])
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("  [bench] %(message)s"))
    log.addHandler(console)
    manifest = json.loads((work / "media.json").read_text())
    clips = {k: v for k, v in manifest["clips"].items() if int(k) in args.clip_list}
    formats = args.format_list
    out: dict[str, Any] = {"backend": args.backend, "model": args.model, "errors": []}
    global MONITOR
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below: stop the servers
    MONITOR = LoadMonitor().start()
    original_run = _install_model_timer()
    kept: InProcessServer | None = None
    srv: net.ServerProcess | None = None

    def section(name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        out.setdefault("windows", {})[name] = [time.time(), None]
        try:
            value = fn()
            out[name] = value
            return value
        except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
            out["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
            log.error("%s failed:\n%s", name, traceback.format_exc())
            return None
        finally:
            out.setdefault("section_s", {})[name] = time.perf_counter() - started
            out["windows"][name][1] = time.time()

    try:
        got = section("overhead", lambda: overhead(args.backend, args.model, clips, formats, args.repeat,
                                                   original_run))
        if got is not None:
            out["overhead"], kept = got
        ref = _load_bodies({"10": manifest["clips"]["10"]}, ["wav16", "m4a"])
        wav, m4a = ref[("10", "wav16")], ref[("10", "m4a")]
        got = section("startup", lambda: startup(args.backend, args.model, work, wav, m4a, args.startup_runs))
        if got is not None:
            out["startup"], srv = got
        if kept is not None and srv is not None:
            be, seg = kept.worker.backend, kept.worker.segmenter
            pcm = decode_direct(wav["data"])
            chunks = SERVER_CHUNKS.get(("10", "wav16", True)) or seg.plan(pcm, merge=be.segments_audio)
            server = srv
            def variant(name: str, code: str, **env: str) -> Callable[[], net.ServerProcess]:
                def start() -> net.ServerProcess:
                    port = net.free_port()
                    return net.ServerProcess(f"rapl-{name}", [sys.executable, "-c", code], port,
                                             work / f"server-{args.backend}-{name}.log",
                                             server_env(args.backend, args.model, port, **env), cwd=ROOT).start()
                return start

            spare = str(max(1, (os.cpu_count() or 1) - 1))
            whatif = {"proposed: sys.setswitchinterval(0.001)": variant("switch", SWITCH_1MS),
                      "proposed: one decode/VAD at a time": variant("gate", GATED_PREPROCESSING),
                      f"proposed: THREADS={spare}": variant("threads", PLAIN, THREADS=spare)}
            section("queue", lambda: queue(server.port, wav, pcm, chunks, be, original_run, args.queue_requests,
                                           whatif=whatif))
            minutes = [m for m in (f"{x:g}" for x in args.long_list) if m in manifest["long"]]
            section("long", lambda: long_files(server, manifest["long"], minutes, be, seg, original_run))
    finally:
        if srv is not None:
            srv.stop()
        if kept is not None:
            kept.worker.shutdown()
        MONITOR.stop()
        Path(args.child_out).write_text(json.dumps(out, indent=1, default=str))
    return 0
