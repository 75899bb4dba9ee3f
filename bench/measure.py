"""Measurement: requests against running servers, timed from outside (latency, throughput, RSS) and
from inside through each answer's ``Server-Timing`` header (decode, VAD plan, queue wait, model).

Nothing here patches or wraps the package: the in-request stages are what the server reports,
and the reference numbers come from calling ``rapl.pipeline.run`` / ``rapl.audio.decode_recording``
directly in this process, outside any request.
"""

from __future__ import annotations

import gc
import io
import logging
import math
import queue as queue_mod
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from bench import net
from bench.load import LoadMonitor
from bench.media import mime
from bench.servers import InProcessServer, merges, planned_chunks
from bench.stats import summary

log = logging.getLogger("bench")
NOISY = 0.25  # other processes' mean CPU (cores) above which a measurement is taken again
RETRIES = 2
MONITOR: LoadMonitor | None = None  # set by the orchestration (bench.run) for the child process
NAN = float("nan")


def settle(what: str, limit: float = 120.0) -> float:
    """Wait for other processes' load to drop below NOISY (at most ``limit`` s); the seconds waited."""
    return MONITOR.wait_quiet(NOISY, limit, log, what) if MONITOR else 0.0


def other_load(start: float) -> float:
    """Other processes' mean load (cores) since ``start`` (a time.time() stamp)."""
    if MONITOR is None:
        return NAN
    time.sleep(MONITOR.interval * 1.1)  # let the monitor sample the end of the window
    return MONITOR.window(start, time.time())["other"]


def quiet(measure: Callable[[], dict[str, Any]], what: str, retries: int = RETRIES) -> dict[str, Any]:
    """Run ``measure``; while other processes kept more than NOISY cores busy during it, run it again
    (up to ``retries`` times) and keep the quietest attempt. Adds ``other_load`` and ``attempts``."""
    best: dict[str, Any] | None = None
    for attempt in range(retries + 1):
        waited = settle(what)
        start = time.time()
        value = measure()
        other = other_load(start)
        value.update(other_load=other, attempts=attempt + 1, waited_s=waited)
        if best is None or not other >= best["other_load"]:
            best = value
        if not other > NOISY:
            break
        log.info("%s: other processes used %.2f cores meanwhile; measuring again", what, other)
    assert best is not None
    return best


def check(reply: net.Reply, what: str) -> net.Reply:
    """``reply`` when it is a 200, else an error naming ``what``."""
    if reply.status != 200:
        raise RuntimeError(f"{what}: HTTP {reply.status}: {reply.body[:300]!r}")
    return reply


def bodies(clips: dict[str, dict[str, str]], formats: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """(clip seconds, format) -> the file's bytes and the multipart body a client sends."""
    items = {}
    for seconds, by_format in clips.items():
        for fmt in formats:
            path = Path(by_format[fmt])
            data = path.read_bytes()
            body, ctype = net.multipart(data, path.name, mime(str(path)))
            items[(seconds, fmt)] = {"data": data, "body": body, "ctype": ctype, "path": str(path)}
    return items


def direct_run(worker: Any, pcm: Any, chunks: list[Any], label: str = "direct") -> tuple[float, Any]:
    """``rapl.pipeline.run`` on the loaded model, outside any request: (seconds, result)."""
    from rapl import pipeline
    from rapl.transcription import Options

    started = time.perf_counter()
    result = pipeline.run(worker.backend, pcm, Options(), chunks, label=label, progress=False)
    return time.perf_counter() - started, result


def stages(reply: net.Reply) -> dict[str, float]:
    """One answer's in-request stages, in seconds: latency (outside), the ``Server-Timing`` stages, and what
    they leave: HTTP+Flask (latency − ``openai-processing-ms``, the view's own time) and other (processing −
    the sum of the header's stages, which follow one another: form fields, hand-back, rendering)."""
    t = reply.timing
    processing = reply.processing
    model = t.get("model", NAN)
    return {"latency": reply.seconds, "model": model, "overhead": reply.seconds - model,
            "http": reply.seconds - processing, "decode": t.get("decode", NAN), "vad_plan": t.get("vad", NAN),
            "wait": t.get("wait", NAN), "other": processing - sum(t.values()) if "model" in t else NAN}


def _finite(xs: list[float]) -> list[float]:
    return [x for x in xs if not math.isnan(x)]


# --------------------------------------------------------------------------- overhead


def overhead(backend: str, model: str, clips: dict[str, dict[str, str]], formats: list[str], repeat: int,
             direct_formats: tuple[str, ...] = ("wav16",)) -> tuple[list[dict[str, Any]], InProcessServer]:
    """Per clip, format and VAD setting: request latency through the in-process server, split by its
    Server-Timing header, and ``pipeline.run`` called directly on the same audio and chunks right after.
    Returns the rows and the VAD=true server (HTTP closed, model kept for direct calls)."""
    from rapl import audio

    items = bodies(clips, formats)
    decoded = {key: audio.decode_recording(item["data"]) for key, item in items.items()}
    rows: list[dict[str, Any]] = []
    kept: InProcessServer | None = None
    for vad in (False, True):
        log.info("overhead: %s, VAD=%s", backend, vad)
        settle(f"overhead, VAD={vad}")
        srv = InProcessServer(backend, model, vad)
        chunks = {key: planned_chunks(srv.worker, pcm) for key, pcm in decoded.items()}
        client = net.Client(srv.port)
        failed: dict[tuple[str, str], str] = {}
        for key, item in items.items():  # warm every path once (first requests: see start-up)
            reply = client.post(item["body"], item["ctype"])
            if reply.status != 200:  # a request the server cannot answer is a finding, not the end of the run
                failed[key] = f"HTTP {reply.status}: {reply.body[:200].decode(errors='replace')}"
            elif "model" not in reply.timing:
                failed[key] = f"no model stage in Server-Timing: {reply.headers.get('server-timing')!r}"
            if key in failed:
                log.error("overhead %s, VAD=%s: %s", key, vad, failed[key])
        names = ("latency", "model", "overhead", "http", "decode", "vad_plan", "wait", "other", "vad_alone", "direct")
        acc: dict[tuple[str, str], dict[str, list[float]]] = {key: {k: [] for k in names} for key in items}
        texts: dict[tuple[str, str], str] = {}
        for _rep in range(repeat):
            for key, item in items.items():
                if key in failed:
                    continue
                reply = client.post(item["body"], item["ctype"])
                if reply.status != 200:
                    failed[key] = f"HTTP {reply.status}: {reply.body[:200].decode(errors='replace')}"
                    continue
                a = acc[key]
                for name, value in stages(reply).items():
                    a[name].append(value)
                texts.setdefault(key, str((reply.json() or {}).get("text", ""))[:80])
                if vad and "vad" not in reply.timing:  # the dictation path: Silero ran beside the model,
                    fresh = audio.decode_recording(item["data"])  # so time it alone, on a fresh recording
                    started = time.perf_counter()  # (a Recording keeps its speech probabilities)
                    srv.worker.segmenter.speech(fresh)
                    a["vad_alone"].append(time.perf_counter() - started)
                if key[1] in direct_formats:
                    a["direct"].append(direct_run(srv.worker, decoded[key], chunks[key])[0])
        client.close()
        for (seconds, fmt), a in acc.items():
            key = (seconds, fmt)
            rows.append({"backend": backend, "clip_s": int(seconds), "format": fmt, "vad": vad,
                         "chunks": len(chunks[key]), "text": texts.get(key, ""), "samples": len(decoded[key]),
                         "chunk_samples": [c.end - c.start for c in chunks[key]][:8], "error": failed.get(key),
                         **{k: summary(_finite(v)) for k, v in a.items()}})
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


def startup(start: Callable[[int], net.ServerProcess], wav: dict[str, Any], m4a: dict[str, Any], runs: int,
            steady: int = 5) -> tuple[list[dict[str, Any]], net.ServerProcess]:
    """Start a server (``start(run)``) ``runs`` times: time to /health 200, idle RSS, first vs steady
    requests (latency from outside, model time from the header). Returns them and the last server, running."""
    results = []
    srv: net.ServerProcess | None = None
    for i in range(runs):
        if srv is not None:
            srv.stop()
        settle(f"start-up #{i + 1}")
        window_start = time.time()
        srv = start(i)
        ready = srv.wait_ready()
        time.sleep(1.0)
        idle = net.rss(srv.pid)
        client = net.Client(srv.port)
        first = check(client.post(wav["body"], wav["ctype"]), "first request")
        first_m4a = check(client.post(m4a["body"], m4a["ctype"]), "first m4a")
        steady_wav = [check(client.post(wav["body"], wav["ctype"]), "steady") for _ in range(steady)]
        steady_m4a = [check(client.post(m4a["body"], m4a["ctype"]), "steady m4a") for _ in range(max(2, steady // 2))]
        client.close()
        results.append({"other_load": other_load(window_start), "open_s": srv.open_s, "ready_s": ready,
                        "idle_rss": idle, "first_wav": first.seconds, "first_m4a": first_m4a.seconds,
                        "first_wav_model": first.timing.get("model", NAN),
                        "steady_wav": summary([r.seconds for r in steady_wav]),
                        "steady_wav_model": summary(_finite([r.timing.get("model", NAN) for r in steady_wav])),
                        "steady_m4a": summary([r.seconds for r in steady_m4a])})
        log.info("start-up #%d: ready in %.2f s, first %.0f ms, steady %.0f ms", i, ready, first.seconds * 1000,
                 results[-1]["steady_wav"]["median"] * 1000)
    assert srv is not None
    return results, srv


# --------------------------------------------------------------------------- queue


def queue(port: int, item: dict[str, Any], worker: Any, pcm: Any, chunks: list[Any], requests: int,
          levels: tuple[int, ...] = (1, 4, 16),
          variants: dict[str, Callable[[], net.ServerProcess]] | None = None) -> dict[str, Any]:
    """Throughput and latency with 1/4/16 concurrent clients, /health while busy, each level against serial
    direct calls of the model run just before it; ``variants`` (name -> a started server) run the top level."""
    def serial() -> list[float]:
        times = [direct_run(worker, pcm, chunks)[0] for _ in range(requests)]
        time.sleep(0.3)
        return times

    with net.HealthPoller(port) as idle_poll:
        time.sleep(1.5)
    out: dict[str, Any] = {"requests": requests, "idle_health": summary(idle_poll.samples), "levels": []}
    runs: list[tuple[str, int, int]] = [("", port, c) for c in levels]
    runs += [(name, 0, max(levels)) for name in (variants or {})]
    for name, level_port, clients in runs:
        other_srv: net.ServerProcess | None = None
        if name:
            other_srv = (variants or {})[name]()
            other_srv.wait_ready()
            warm = net.Client(other_srv.port)
            check(warm.post(item["body"], item["ctype"]), f"variant {name}")
            warm.close()
            level_port = other_srv.port

        def level(clients: int = clients, port: int = level_port) -> dict[str, Any]:
            direct = serial()  # the model alone, just before this level, so both see the same machine load
            with net.HealthPoller(port) as poll:
                wall, replies = net.concurrent_requests(port, [(item["body"], item["ctype"])] * requests, clients)
            ok = [r for r in replies if r.status == 200]
            return {"clients": clients, "wall": wall, "throughput": len(ok) / wall,
                    "direct": summary(direct), "direct_throughput": requests / sum(direct),
                    "latency": summary([r.seconds for r in ok]),
                    "wait": summary([r.timing.get("wait", 0.0) for r in ok]),
                    "model": summary(_finite([r.timing.get("model", NAN) for r in ok])),
                    "status": {str(s): sum(1 for r in replies if r.status == s)
                               for s in sorted({r.status for r in replies})},
                    "health": summary(poll.samples), "health_failures": poll.failures}

        try:
            lv = quiet(level, f"queue, {clients} clients {name}")
        finally:
            if other_srv is not None:
                other_srv.stop()
        lv["variant"] = name
        out["levels"].append(lv)
        log.info("queue: %d clients %s: %.2f req/s (serial direct %.2f), /health p95 %.1f ms (other load %.2f)",
                 clients, name, lv["throughput"], lv["direct_throughput"], lv["health"]["p95"] * 1000,
                 lv["other_load"])
    return out


# --------------------------------------------------------------------------- long files


def long_files(srv: net.ServerProcess, long: dict[str, dict[str, Any]], minutes: list[str],
               worker: Any) -> list[dict[str, Any]]:
    """RTF through the server (outside, and its stages from the header) vs direct with the same
    segmentation; decode speed; the server's peak RSS."""
    from rapl import audio

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
                reply = check(client.post(body, ctype), f"long {key} min")
            client.close()
            hwm = net.peak_rss(srv.pid) if hwm_ok else None
            peak = max(hwm or 0, sampler.peak)
            del body
            server_text = str((reply.json() or {}).get("text", ""))
            started = time.perf_counter()
            pcm = audio.decode_recording(data)
            decode_s = time.perf_counter() - started
            started = time.perf_counter()
            chunks = planned_chunks(worker, pcm)  # the server's rule: Segmenter.plan past one chunk
            vad_s = time.perf_counter() - started
            direct_s, result = direct_run(worker, pcm, chunks)
            return {"overlap_s": overlapped(worker, pcm), "minutes": float(key), "seconds": len(pcm) / 16000,
                    "speech_fraction": spec["speech_fraction"], "upload_bytes": len(data),
                    "server_s": reply.seconds, "server_stages": reply.timing, "direct_s": direct_s,
                    "vad_s": vad_s, "decode_s": decode_s, "chunks": len(chunks), "idle_rss": idle,
                    "peak_rss": peak, "peak_source": "VmHWM+sampling" if hwm else "sampling",
                    "audio_bytes": len(pcm) * 4, "stored_bytes": pcm.stored_bytes(),
                    "same_text": server_text == result.text, "words": len(result.text.split())}

        row = quiet(measure, f"long {key} min", retries=RETRIES if float(key) <= 10 else 0)
        rows.append(row)
        log.info("long %s min: server %.1f s, direct %.1f s, VAD %.1f s, decode %.2f s, peak RSS +%.0f MB "
                 "(other load %.2f)", key, row["server_s"], row["direct_s"], row["vad_s"], row["decode_s"],
                 (row["peak_rss"] - row["idle_rss"]) / 2**20, row["other_load"])
        gc.collect()
    return rows


def overlapped(worker: Any, pcm: Any, block_seconds: int = 60) -> float:
    """A proposed long-file pipeline, measured with direct calls: VAD plans block k+1 (a thread, as the
    request thread would) while the model transcribes block k. Returns the wall time of both together."""
    from rapl.vad import Chunk

    seg, merge = worker.segmenter, merges(worker)
    block = block_seconds * 16000
    planned: queue_mod.Queue[list[Any] | None] = queue_mod.Queue()

    def plan() -> None:
        for start in range(0, len(pcm), block):
            chunks = seg.plan(pcm[start:start + block], merge=merge)
            planned.put([Chunk(c.start + start, c.end + start) for c in chunks])
        planned.put(None)

    started = time.perf_counter()
    producer = threading.Thread(target=plan, daemon=True)
    producer.start()
    while (chunks := planned.get()) is not None:
        if chunks:
            direct_run(worker, pcm, chunks, label="overlap")
    producer.join()
    return time.perf_counter() - started


def speakers(port: int, repeat: int) -> dict[str, Any] | None:
    """Speaker labels' cost: the same real three-turn meeting (JFK, the Mandarin speaker of zh_sample.wav,
    JFK) as verbose_json and as diarized_json, alternated; the ratio of their medians, and the header's
    ``speakers`` stage. None when the real clips or the speaker encoder are missing."""
    import importlib.util

    from bench.media import SHARED_AUDIO
    from rapl import audio
    from rapl.recording import SAMPLE_RATE

    if importlib.util.find_spec("resemblyzer") is None or not (SHARED_AUDIO / "zh_sample.wav").is_file():
        return None
    jfk = audio.decode((SHARED_AUDIO / "en_jfk.flac").read_bytes())
    mandarin = audio.decode((SHARED_AUDIO / "zh_sample.wav").read_bytes())
    gap, cut = np.zeros(SAMPLE_RATE, np.float32), int(5.3 * SAMPLE_RATE)
    meeting = np.concatenate([gap, jfk[:cut], gap, mandarin, gap, jfk[cut:], gap])
    buf = io.BytesIO()
    sf.write(buf, meeting, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    plain = net.multipart(buf.getvalue(), "meeting.wav", "audio/wav", {"response_format": "verbose_json"})
    labelled = net.multipart(buf.getvalue(), "meeting.wav", "audio/wav", {"response_format": "diarized_json"})
    client = net.Client(port)
    try:
        check(client.post(*labelled), "speakers warm-up")  # the encoder loads on first use
        times: dict[str, list[float]] = {"transcription": [], "with speakers": [], "speakers stage": []}
        for _ in range(max(repeat, 3)):
            times["transcription"].append(check(client.post(*plain), "verbose_json").seconds)
            reply = check(client.post(*labelled), "diarized_json")
            times["with speakers"].append(reply.seconds)
            times["speakers stage"].append(reply.timing.get("speakers", NAN))
    finally:
        client.close()
    labels = [s["speaker"] for s in reply.json()["segments"]]
    return {"seconds": len(meeting) / SAMPLE_RATE, "times": times, "labels": labels,
            "ratio": statistics.median(times["with speakers"]) / statistics.median(times["transcription"])}
