"""The machine that ran the benchmark, and how busy it was with other work meanwhile (it is shared and noisy).

Samples every ``interval`` seconds: the CPU time the whole machine spent busy, and the CPU
time of this process and all its descendants (live ones, plus what reaped ones left in
their parents' children_* counters). The difference is other processes' load, in cores.
"""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

PACKAGES = ("faster-whisper", "ctranslate2", "onnxruntime", "funasr", "torch", "av", "soundfile", "soxr", "waitress",
            "websockets", "flask", "numpy")


def machine(root: Path) -> dict[str, Any]:
    """What ran the benchmark: CPU, memory, versions, the commit of ``root`` (+dirty when rapl/ changed)."""
    cpu, mem = platform.processor() or "unknown", 0
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
        mem = next((int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:")), 0)
    except OSError:
        pass
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "—"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "rapl"], cwd=root, capture_output=True,
                                    text=True).stdout.strip())
    except OSError:
        commit, dirty = "?", False
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions,
            "commit": commit + ("+dirty" if dirty else ""), "ffmpeg": ffmpeg, "loadavg_start": loadavg()}


def loadavg() -> list[str]:
    """The 1/5/15-minute load averages (empty where /proc is missing)."""
    path = Path("/proc/loadavg")
    return path.read_text().split()[:3] if path.exists() else []


def _tree_cpu(root: psutil.Process) -> float:
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def _busy() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


class LoadMonitor:
    """Records (time, our cores, other cores) per interval, from a daemon thread."""

    def __init__(self, interval: float = 1.0, wait_budget: float = 300.0) -> None:
        self.interval = interval
        self.wait_budget = wait_budget  # total seconds wait_quiet may spend, so a busy machine cannot stall us
        self.root = psutil.Process(os.getpid())
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="load-monitor")

    def _run(self) -> None:
        last_t, last_busy, last_ours = time.time(), _busy(), _tree_cpu(self.root)
        while not self._stop.wait(self.interval):
            now, busy, ours = time.time(), _busy(), _tree_cpu(self.root)
            span = max(now - last_t, 1e-6)
            ours_cores = max(0.0, ours - last_ours) / span
            other = max(0.0, (busy - last_busy) / span - ours_cores)
            self.samples.append((now, ours_cores, other))
            last_t, last_busy, last_ours = now, busy, ours

    def start(self) -> LoadMonitor:
        """Start sampling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(timeout=5)

    def recent(self, seconds: float = 3.0) -> float:
        """Other processes' mean load (cores) over the last ``seconds``; NaN before any sample."""
        cutoff = time.time() - seconds
        last = [s[2] for s in self.samples if s[0] >= cutoff]
        return sum(last) / len(last) if last else float("nan")

    def wait_quiet(self, threshold: float, limit: float, log: Any = None, what: str = "") -> float:
        """Wait (at most ``limit`` s) until other processes' load over the last 3 s is at most
        ``threshold`` cores; returns the seconds waited."""
        started = time.time()
        told = False
        limit = min(limit, self.wait_budget)
        while time.time() - started < limit:
            load = self.recent()
            if not load > threshold:
                break
            if log is not None and not told:
                log.info("%s: other processes use %.2f cores; waiting up to %.0f s for them to settle",
                         what, load, limit)
                told = True
            time.sleep(1.0)
        waited = time.time() - started
        self.wait_budget = max(0.0, self.wait_budget - waited)
        return waited

    def window(self, start: float, end: float) -> dict[str, float]:
        """Mean of our and others' cores, and others' max, between two time.time() stamps."""
        inside = [s for s in self.samples if start <= s[0] <= end + self.interval]
        if not inside:
            return {"ours": float("nan"), "other": float("nan"), "other_max": float("nan"), "n": 0}
        return {"ours": sum(s[1] for s in inside) / len(inside), "other": sum(s[2] for s in inside) / len(inside),
                "other_max": max(s[2] for s in inside), "n": len(inside)}
