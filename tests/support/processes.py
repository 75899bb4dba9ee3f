"""RAPL as a subprocess (`python -m rapl ...`): starting it, always killing it, and waiting for it to answer.

Every test that starts a server process does it through :func:`start` (or :func:`started`) and
ends it with :func:`kill`, even when the test fails or a wait times out. On POSIX each process
gets a process group of its own (so what it starts goes too) and SIGINT and SIGTERM at their
defaults: a pytest started with SIGINT ignored (``nohup``, ``trap '' INT``, some CI runners)
would pass that on, and RAPL, as Python does, keeps an ignored SIGINT ignored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx2 as httpx
import pytest

from rapl.settings import SPEC
from support import ROOT

POSIX = os.name == "posix"
# Run by this Python before the command: SIGINT and SIGTERM back to their defaults, then exec the
# command (same process id). Python itself then installs its Ctrl+C handler, as in a terminal.
_DEFAULT_SIGNALS = ("import os, signal, sys\n"
                    "for signum in (signal.SIGINT, signal.SIGTERM):\n"
                    "    signal.signal(signum, signal.SIG_DFL)\n"
                    "os.execvp(sys.argv[1], sys.argv[1:])\n")


def environment(**settings: str) -> dict[str, str]:
    """This environment without any RAPL setting from outside, plus ``settings`` (no .env file)."""
    env = {k: v for k, v in os.environ.items() if k not in SPEC}
    return {**env, "ENV_FILE": "", "PROGRESS": "false", "PYTHONPATH": str(ROOT), **settings}


def start(args: Sequence[str], **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen(args, **popen)``; on POSIX in a new session, with SIGINT and SIGTERM at their defaults.

    Pair it with :func:`kill` in a ``finally`` (or use :func:`started`).
    """
    command = [str(a) for a in args]
    if POSIX:
        command = [sys.executable, "-c", _DEFAULT_SIGNALS, *command]
        popen.setdefault("start_new_session", True)
    return subprocess.Popen(command, **popen)


def kill(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and, on POSIX, what is left of its process group; reap it and close its pipes.
    Safe to call twice, and after it exited."""
    if POSIX:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    elif proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


@contextlib.contextmanager
def started(args: Sequence[str], **popen: Any) -> Iterator[subprocess.Popen]:
    """:func:`start` as a context manager: the process and its group are killed on the way out, whatever happens."""
    proc = start(args, **popen)
    try:
        yield proc
    finally:
        kill(proc)


def stop(proc: subprocess.Popen, signum: int = signal.SIGTERM, timeout: float = 60) -> int | None:
    """Send ``signum`` (SIGTERM: a graceful stop) and wait up to ``timeout`` s; the exit status, None if it
    did not exit in time (then it is killed)."""
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        return None


def wait_healthy(proc: subprocess.Popen, base: str, timeout: float = 120) -> None:
    """Wait until ``base``/health answers 200; fail the test if ``proc`` exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr is not None else ""
            pytest.fail(f"the server exited with {proc.returncode} before it answered: {err[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{base}/health did not answer 200 within {timeout} s")
