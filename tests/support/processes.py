"""RAPL as a subprocess (`python -m rapl ...`): its environment, and waiting for it to answer."""

from __future__ import annotations

import os
import subprocess
import time

import httpx2 as httpx
import pytest

from rapl.settings import SPEC
from support import ROOT


def environment(**settings: str) -> dict[str, str]:
    """This environment without any RAPL setting from outside, plus ``settings`` (no .env file)."""
    env = {k: v for k, v in os.environ.items() if k not in SPEC}
    return {**env, "ENV_FILE": "", "PROGRESS": "false", "PYTHONPATH": str(ROOT), **settings}


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
