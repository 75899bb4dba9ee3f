"""Measurement: requests against ``python -m rapl`` in a subprocess, timed from outside (latency,
throughput, RSS) and from inside through each answer's ``Server-Timing`` header (decode, VAD plan,
queue wait, model), against the backend library called alone in a separate, clean process
(bench/direct.py) on the same samples, one at a time, interleaved with the requests.

Nothing here patches or wraps the package: the in-request stages are what the server reports.
"""

from __future__ import annotations

import gc
import io
import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from bench import net
from bench.direct import Direct
from bench.load import LoadMonitor
from bench.media import mime
from bench.stats import summary, wer

log = logging.getLogger("bench")
NOISY = 0.25  # other processes' mean CPU (cores) above which a measurement is taken again
RETRIES = 2
MONITOR: LoadMonitor | None = None  # set by the orchestration (bench.run) for the child process
NAN = float("nan")
MB = 2**20
PAUSE = 0.3  # seconds between a server request and a direct call: OpenMP threads spin a while after work


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


# --------------------------------------------------------------------------- dictation vs the library alone


def decoded(work: Path, items: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], str]:
    """Each clip decoded once as the server decodes it (``rapl.audio.decode``; the ffmpeg CLI when that is
    missing), saved as ``.npy`` for the direct process, so both sides get the very same samples."""
    out_dir = work / "direct-audio"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for (seconds, fmt), item in items.items():
        try:
            from rapl import audio

            pcm = np.asarray(audio.decode(item["data"]), dtype=np.float32)
        except ImportError:
            from bench.media import decode_file

            pcm = decode_file(Path(item["path"]))
        path = out_dir / f"clip{seconds}s-{fmt}.npy"
        np.save(path, pcm)
        paths[(seconds, fmt)] = str(path)
    return paths


def same_text(a: str, b: str) -> bool:
    """The same words, whitespace aside."""
    return " ".join(a.split()) == " ".join(b.split())


def dictation(srv: net.ServerProcess, direct: Direct, items: dict[tuple[str, str], dict[str, Any]],
              npys: dict[tuple[str, str], str], repeat: int, pause: float = PAUSE) -> list[dict[str, Any]]:
    """Per clip and format: the server's latency (``python -m rapl``, timed by the client, one request at a
    time on a keep-alive connection) against the library called directly in its own process (bench/direct.py)
    on the same decoded samples. Interleaved: for each repeat (a round), for each case, one request, a pause,
    one direct call, a pause (neither process's spinning OpenMP threads then take CPU from the other).

    A round during which other processes kept more than NOISY cores busy is run again, up to ``repeat``
    extra rounds in all; the ``repeat`` quietest rounds are kept."""
    client = net.Client(srv.port)
    failed: dict[tuple[str, str], str] = {}
    for key, item in items.items():  # warm every path on both sides once (first requests: see start-up)
        reply = client.post(item["body"], item["ctype"])
        if reply.status != 200:  # a request the server cannot answer is a finding, not the end of the run
            failed[key] = f"HTTP {reply.status}: {reply.body[:200].decode(errors='replace')}"
            log.error("dictation %s: %s", key, failed[key])
        time.sleep(pause)
        direct.call("dictation", path=npys[key])
        time.sleep(pause)
    settle("dictation")
    rounds: list[tuple[float, dict[tuple[str, str], tuple[net.Reply, dict[str, Any]]]]] = []
    while len(rounds) < 2 * repeat:
        if sum(1 for other, _ in rounds if not other > NOISY) >= repeat or \
                (len(rounds) >= repeat and MONITOR is None):
            break
        if len(rounds) >= repeat:
            log.info("dictation: %d of %d rounds had other processes busy; one more round",
                     sum(1 for other, _ in rounds if other > NOISY), len(rounds))
            settle("dictation, extra round", 30)
        start = time.time()
        pairs: dict[tuple[str, str], tuple[net.Reply, dict[str, Any]]] = {}
        for key, item in items.items():
            if key in failed:
                continue
            reply = client.post(item["body"], item["ctype"])
            time.sleep(pause)
            got = direct.call("dictation", path=npys[key])
            time.sleep(pause)
            if reply.status != 200:
                failed[key] = f"HTTP {reply.status}: {reply.body[:200].decode(errors='replace')}"
                continue
            pairs[key] = (reply, got)
        other = other_load(start)
        rounds.append((0.0 if math.isnan(other) else other, pairs))
    client.close()
    kept = sorted(rounds, key=lambda r: r[0])[:repeat]
    names = ("latency", "model", "overhead", "http", "decode", "vad_plan", "wait", "direct", "pair_ratio")
    acc: dict[tuple[str, str], dict[str, list[float]]] = {key: {k: [] for k in names} for key in items}
    texts: dict[tuple[str, str], dict[str, str]] = {}
    same: dict[tuple[str, str], list[bool]] = {key: [] for key in items}
    for _other, pairs in kept:
        for key, (reply, got) in pairs.items():
            a = acc[key]
            for name, value in stages(reply).items():
                if name in a:
                    a[name].append(value)
            a["direct"].append(got["seconds"])
            a["pair_ratio"].append(reply.seconds / got["seconds"])
            server_text = str((reply.json() or {}).get("text", ""))
            texts.setdefault(key, {"server": server_text[:200], "direct": got["text"][:200]})
            same[key].append(same_text(server_text, got["text"]))
    other = statistics.mean(r[0] for r in kept) if kept else NAN
    rows = []
    for (seconds, fmt), a in acc.items():
        key = (seconds, fmt)
        lat, dir_ = summary(a["latency"]), summary(a["direct"])
        rows.append({"clip_s": int(seconds), "format": fmt, "error": failed.get(key),
                     "ratio": lat["median"] / dir_["median"] if lat["n"] and dir_["n"] else NAN,
                     "same_text": bool(same[key]) and all(same[key]),
                     "same_text_n": f"{sum(same[key])}/{len(same[key])}",
                     "text": texts.get(key, {}), "other_load": other, "rounds": len(rounds),
                     "round_loads": [round(r[0], 3) for r in rounds],
                     **{k: summary(_finite(v)) for k, v in a.items()}})
    return rows


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


def queue(port: int, item: dict[str, Any], direct: Direct, npy: str, requests: int,
          levels: tuple[int, ...] = (1, 4, 16)) -> dict[str, Any]:
    """Throughput and latency with 1/4/16 concurrent clients, /health while busy; each level against as many
    serial calls of the library in the direct process, made just before it (then a pause)."""
    with net.HealthPoller(port) as idle_poll:
        time.sleep(1.5)
    out: dict[str, Any] = {"requests": requests, "idle_health": summary(idle_poll.samples), "levels": []}
    for clients in levels:
        def level(clients: int = clients) -> dict[str, Any]:
            direct_times = direct.call("serial", path=npy, n=requests)["seconds"]  # just before, same machine load
            time.sleep(PAUSE)
            with net.HealthPoller(port) as poll:
                wall, replies = net.concurrent_requests(port, [(item["body"], item["ctype"])] * requests, clients)
            time.sleep(PAUSE)
            ok = [r for r in replies if r.status == 200]
            return {"clients": clients, "wall": wall, "throughput": len(ok) / wall,
                    "direct": summary(direct_times), "direct_throughput": requests / sum(direct_times),
                    "latency": summary([r.seconds for r in ok]),
                    "wait": summary([r.timing.get("wait", 0.0) for r in ok]),
                    "model": summary(_finite([r.timing.get("model", NAN) for r in ok])),
                    "status": {str(s): sum(1 for r in replies if r.status == s)
                               for s in sorted({r.status for r in replies})},
                    "health": summary(poll.samples), "health_failures": poll.failures}

        lv = quiet(level, f"queue, {clients} clients")
        out["levels"].append(lv)
        log.info("queue: %d clients: %.2f req/s (serial direct %.2f), /health p95 %.1f ms (other load %.2f)",
                 clients, lv["throughput"], lv["direct_throughput"], lv["health"]["p95"] * 1000, lv["other_load"])
    return out


# --------------------------------------------------------------------------- long files


def idle_rss(pid: int, seconds: int, baseline: float | None = None) -> dict[str, Any]:
    """The process's RSS once it has been idle: sampled once a second for up to ``seconds`` s, the lowest
    kept (the server trims freed heap after about a second idle). Stops early once three samples in a
    row agree within 1 MB and, given a ``baseline``, the lowest is within 10% of it."""
    samples: list[int] = []
    for _ in range(seconds):
        time.sleep(1.0)
        samples.append(net.rss(pid))
        last = samples[-3:]
        if len(last) == 3 and max(last) - min(last) < MB and (baseline is None or min(samples) <= 1.1 * baseline):
            break
    return {"rss": min(samples), "samples": samples, "waited_s": len(samples)}


def long_files(srv: net.ServerProcess, direct: Direct, backend: str, model: str, long: dict[str, dict[str, Any]],
               minutes: list[str]) -> dict[str, Any]:
    """Per long recording: the server (client timing, its Server-Timing stages, peak RSS, idle RSS after)
    against the library's own long-form call in the direct process (faster-whisper ``vad_filter=True``;
    FunASR's fsmn-vad pipeline where its model is there), and for SenseVoice the model over RAPL's own chunks;
    word error rates of each against the recording's known words."""
    from bench.servers import long_chunks, segmenter
    from rapl import audio

    seg = segmenter(backend, model)
    gc.collect()
    before = idle_rss(srv.pid, 10)
    out: dict[str, Any] = {"idle_before": before["rss"], "idle_before_samples": before["samples"], "rows": []}
    for key in minutes:
        spec = long[key]
        path = Path(spec["path"])
        data = path.read_bytes()
        started = time.perf_counter()  # outside any measurement: decode speed, and RAPL's chunks
        pcm = audio.decode_recording(data)
        decode_s = time.perf_counter() - started
        seconds, audio_bytes = len(pcm) / 16000, len(pcm) * 4
        started = time.perf_counter()
        chunks = long_chunks(seg, backend, pcm) if backend == "sensevoice" else []
        vad_s = time.perf_counter() - started if chunks else NAN
        del pcm
        gc.collect()
        time.sleep(PAUSE)
        ref = spec.get("reference", "")

        def measure(data: bytes = data, path: Path = path, key: str = key, chunks: list[Any] = chunks,
                    ref: str = ref) -> dict[str, Any]:
            body, ctype = net.multipart(data, path.name, "audio/flac")
            idle = net.rss(srv.pid)
            hwm_ok = net.reset_peak_rss(srv.pid)
            client = net.Client(srv.port)
            with net.RSSSampler(srv.pid) as sampler:
                reply = check(client.post(body, ctype), f"long {key} min")
            client.close()
            hwm = net.peak_rss(srv.pid) if hwm_ok else None
            peak = max(hwm or 0, sampler.peak)
            del body
            after = idle_rss(srv.pid, 10, out["idle_before"])  # also the pause before the direct process runs
            server_text = str((reply.json() or {}).get("text", ""))
            row: dict[str, Any] = {"server_s": reply.seconds, "server_stages": reply.timing, "idle_rss": idle,
                                   "peak_rss": peak, "peak_source": "VmHWM+sampling" if hwm else "sampling",
                                   "idle_after": after["rss"], "idle_after_samples": after["samples"],
                                   "server_wer": wer(ref, server_text) if ref else None,
                                   "server_words": len(server_text.split())}
            lib_idle = net.rss(direct.pid)
            with net.RSSSampler(direct.pid) as lib_sampler:
                lib = direct.call("longform", check=False, path=str(path))
            time.sleep(PAUSE)
            row["library"] = {"seconds": lib.get("seconds", NAN), "error": lib.get("error"),
                              "unavailable": bool(lib.get("unavailable")), "idle_rss": lib_idle,
                              "peak_rss": max(lib.get("hwm") or 0, lib_sampler.peak),
                              "wer": wer(ref, lib["text"]) if ref and "text" in lib else None,
                              "same_text": same_text(server_text, lib["text"]) if "text" in lib else None}
            if chunks:  # SenseVoice: the model alone over RAPL's own chunks, in the direct process
                fb_idle = net.rss(direct.pid)
                with net.RSSSampler(direct.pid) as fb_sampler:
                    fb = direct.call("chunks", path=str(path), chunks=chunks)
                time.sleep(PAUSE)
                row["chunks_direct"] = {"seconds": fb["seconds"], "idle_rss": fb_idle,
                                        "peak_rss": max(fb.get("hwm") or 0, fb_sampler.peak),
                                        "wer": wer(ref, fb["text"]) if ref else None,
                                        "same_text": same_text(server_text, fb["text"])}
            return row

        row = quiet(measure, f"long {key} min", retries=RETRIES if float(key) <= 10 else 0)
        row.update(minutes=float(key), seconds=seconds, speech_fraction=spec["speech_fraction"],
                   upload_bytes=len(data), decode_s=decode_s, vad_s=vad_s, chunks=len(chunks) or None,
                   audio_bytes=audio_bytes, ref_words=len(ref.split()))
        out["rows"].append(row)
        lib = row["library"]
        log.info("long %s min: server %.1f s, library long-form %s, idle RSS %.0f -> %.0f MB (other load %.2f)",
                 key, row["server_s"], "not measurable" if lib["unavailable"] else f"{lib['seconds']:.1f} s",
                 out["idle_before"] / MB, row["idle_after"] / MB, row["other_load"])
        gc.collect()
    return out

def speakers(port: int, repeat: int) -> dict[str, Any] | None:
    """Speaker labels' cost: the same real three-turn meeting (JFK, the Mandarin speaker of zh_sample.wav,
    JFK) as verbose_json and as diarized_json, alternated; the ratio of their medians, and the header's
    ``speakers`` stage. None when the real clips or the speaker encoder are missing."""
    import importlib.util

    from bench.media import SHARED_AUDIO
    from rapl import audio
    from rapl.audio.recording import SAMPLE_RATE

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
