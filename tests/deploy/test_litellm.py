"""deploy/litellm/config.yaml for real: the LiteLLM proxy started on loopback in front of two RAPL instances
(`python -m rapl` subprocesses on the real Whisper tiny.en; instance B also serves the tiny SenseVoice by the
id `dictation` from its MODELS_FILE), the official SDK through it.

- whisper-1 spread over both instances, each request's text right; gpt-4o-mini-transcribe only to B.
- Which instance answered: LiteLLM's ``x-litellm-model-api-base`` header, checked against RAPL's own
  ``x-request-id`` (LiteLLM passes RAPL's headers on as ``llm_provider-*``) in that instance's log.
- Response formats as LiteLLM really passes them; translations (the proxy has no such route).
- Live dictation (``/v1/realtime``) through the proxy, to the instances of the model a session names.
- Instance A stopped (SIGTERM): every request after it still answered, with the retries and fallbacks
  LiteLLM needed and the latency they cost measured until the health check leaves A out; then live
  sessions too.

The proxy runs offline: no database, the cost map from its package, telemetry off, and a sitecustomize in
its process refuses and records every connection and name lookup beyond loopback (on the asyncio event
loop, whose connections all go through Python's socket module). Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import base64
import errno
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import openai
import pytest
from websockets.exceptions import ConnectionClosedError

from rapl.settings import SPEC
from support import ROOT, processes
from support.net import free_port
from support.realtime import COMPLETED, FAILED, RATE, pcm16
from support.server import wait_until
from support.speech import JFK_TEXT, wer

PROXY_MISSING = not all(importlib.util.find_spec(name) for name in ("litellm", "fastapi", "uvicorn"))
pytestmark = [pytest.mark.slow,  # RAPL and LiteLLM subprocesses, real models
              pytest.mark.skipif(PROXY_MISSING, reason="the LiteLLM proxy's packages are not installed: "
                                 "pip install -r tests/requirements.txt")]

CONFIG = ROOT / "deploy" / "litellm" / "config.yaml"
MASTER_KEY = "sk-litellm-test-master"
CHECKED_ENDPOINTS = 3  # whisper-1 on A and B, dictation on B: the groups background_health_check_model_groups names
GUARD = '''"""Refuse and record every connection and name lookup beyond loopback (from tests/deploy/test_litellm.py)."""
import ipaddress
import os
import socket

_LOG = os.environ.get("RAPL_TEST_NETWORK_LOG", "")


def _loopback(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    name = str(host).strip("[]").split("%", 1)[0].lower()
    if name in ("", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _refuse(what):
    with open(_LOG, "a", encoding="utf-8") as log:
        log.write(what + "\\n")
    raise OSError(101, "network access is blocked in this test: " + what)


_getaddrinfo, _connect, _connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex


def getaddrinfo(host, *args, **kwargs):
    if not _loopback(host):
        _refuse("getaddrinfo %r" % (host,))
    return _getaddrinfo(host, *args, **kwargs)


def _leaves(sock, address):
    return sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0])


def connect(self, address):
    if _leaves(self, address):
        _refuse("connect %r" % (address,))
    return _connect(self, address)


def connect_ex(self, address):
    if _leaves(self, address):
        _refuse("connect %r" % (address,))
    return _connect_ex(self, address)


if _LOG:
    socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex = getaddrinfo, connect, connect_ex
'''


# --- the processes ------------------------------------------------------------------------------------

class Rapl:
    """One `python -m rapl` on a free port with its own API_KEY, its output in a file."""

    def __init__(self, name: str, tmp: Path, **settings: str) -> None:
        self.name, self.port, self.key = name, free_port(), f"sk-rapl-{name}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = f"{self.url}/v1"  # what the proxy's api_base is, and reports back
        self.log_path = tmp / f"rapl-{name}.log"
        env = processes.environment(PORT=str(self.port), API_KEY=self.key, THREADS="1", **settings)
        with open(self.log_path, "w") as out:
            self.proc = processes.start([sys.executable, "-m", "rapl"], cwd=ROOT, env=env, stdout=out,
                                        stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"RAPL {self.name} exited with {self.proc.returncode}: {self.log()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/health", timeout=5).json()["status"] == "ready"
            except httpx.TransportError:
                return False

        wait_until(ready, timeout, f"RAPL {self.name} to be ready", interval=0.2)

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def model_requests(self, model: str) -> int:
        return next(m["requests"] for m in self.health()["models"] if m["id"] == model)

    def served(self, request_id: str) -> bool:
        """Whether this instance's log has the 200 of RAPL's request ``request_id``."""
        return f"request id={request_id} task=transcribe status=200 " in self.log()

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base, api_key=self.key, max_retries=0)


@dataclass
class Cluster:
    """Instances A and B, the proxy in front of them, and the proxy's startup time."""

    a: Rapl
    b: Rapl
    url: str
    proxy: subprocess.Popen
    proxy_log: Path
    network_log: Path
    startup_s: float
    tiny: str  # RAPL's id of the .env model (tiny.en) on both instances
    figures: dict[str, Any] = field(default_factory=dict)

    def sdk(self, **kwargs: Any) -> openai.OpenAI:
        """The official SDK pointed at the proxy, with the master key."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=kwargs.pop("api_key", MASTER_KEY), max_retries=0,
                             **kwargs)

    def instance(self, api_base: str) -> Rapl:
        return {self.a.base: self.a, self.b.base: self.b}[api_base]

    def proxy_health(self) -> dict[str, Any]:
        """The proxy's /health: the last background health check's verdict per endpoint."""
        return httpx.get(f"{self.url}/health", headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=10).json()

    def attempts(self) -> list[str]:
        return self.network_log.read_text().splitlines() if self.network_log.exists() else []

    def tail(self) -> str:
        return self.proxy_log.read_text(errors="replace")[-3000:]


def proxy_environment(cluster_env: dict[str, str], guard: Path, network_log: Path) -> dict[str, str]:
    """This environment without RAPL's, LiteLLM's or a database's settings, plus the proxy's own."""
    env = {k: v for k, v in os.environ.items()
           if k not in SPEC and not k.startswith(("LITELLM", "DATABASE", "REDIS")) and k != "PYTHONPATH"}
    return {**env, **cluster_env, "PYTHONPATH": str(guard), "RAPL_TEST_NETWORK_LOG": str(network_log),
            "LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY_DISABLED": "true", "LITELLM_EVENT_LOOP": "asyncio"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, whisper_model: str, tiny_sensevoice: Path,
            jfk: Path) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("litellm")
    models = tmp / "models-b.toml"
    models.write_text(f'[models.dictation]\nbackend = "sensevoice"\nmodel = "{tiny_sensevoice}"\nvad = false\n',
                      encoding="utf-8")
    common = {"BACKEND": "whisper", "LOCAL_MODEL": whisper_model}
    a = Rapl("a", tmp, **common)
    b = Rapl("b", tmp, **common, MODELS_FILE=str(models), MAX_LOADED_MODELS="2")
    guard = tmp / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD, encoding="utf-8")
    network_log, proxy_log = tmp / "network.log", tmp / "litellm.log"
    proxy = None
    try:
        a.wait_ready()
        b.wait_ready()
        port = free_port()
        env = proxy_environment({"RAPL_A_URL": a.base, "RAPL_A_KEY": a.key, "RAPL_B_URL": b.base,
                                 "RAPL_B_KEY": b.key}, guard, network_log)
        started = time.monotonic()
        with open(proxy_log, "w") as out:
            proxy = processes.start([sys.executable, "-m", "litellm.proxy.proxy_cli", "--config", CONFIG,
                                     "--host", "127.0.0.1", "--port", str(port)],
                                    cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
        cluster = Cluster(a, b, f"http://127.0.0.1:{port}", proxy, proxy_log, network_log, 0.0,
                          a.health()["model"])

        def listening() -> bool:
            if proxy.poll() is not None:
                pytest.fail(f"the LiteLLM proxy exited with {proxy.returncode}: {cluster.tail()}")
            try:
                return httpx.get(f"{cluster.url}/health/liveliness", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(listening, 90, "the LiteLLM proxy to listen", interval=0.2)
        cluster.startup_s = time.monotonic() - started
        wait_until(lambda: cluster.proxy_health().get("healthy_count") == CHECKED_ENDPOINTS, 60,
                   "the proxy's first health check of every instance", interval=0.5)
        yield cluster
        print("\nLiteLLM in front of two RAPL instances:", json.dumps(
            {"proxy_startup_s": round(cluster.startup_s, 1), **cluster.figures}, indent=1))
        assert cluster.attempts() == [], "the proxy tried the network"
    finally:
        if proxy is not None:
            processes.stop(proxy, signal.SIGTERM, timeout=20)
            processes.kill(proxy)
        for instance in (a, b):
            processes.stop(instance.proc, signal.SIGTERM, timeout=30)
            processes.kill(instance.proc)


# --- helpers ------------------------------------------------------------------------------------------

@dataclass
class Answer:
    """One transcription through the proxy: what LiteLLM and RAPL said about it."""

    text: str
    api_base: str
    rapl_model: str
    request_id: str
    retries: int
    fallbacks: int
    group: str
    seconds: float
    sent_at: float


def transcribe(cluster: Cluster, clip: bytes, model: str = "whisper-1") -> Answer:
    started = time.monotonic()
    raw = cluster.sdk().audio.transcriptions.with_raw_response.create(model=model, file=("jfk.flac", clip))
    seconds = time.monotonic() - started
    assert raw.status_code == 200
    h = raw.headers
    return Answer(raw.parse().text, h["x-litellm-model-api-base"], h["llm_provider-x-rapl-model"],
                  h["llm_provider-x-request-id"], int(h["x-litellm-attempted-retries"]),
                  int(h["x-litellm-attempted-fallbacks"]), h["x-litellm-model-group"], seconds, started)


def jfk24(jfk: Path) -> bytes:
    import soundfile

    data, rate = soundfile.read(str(jfk), dtype="float32", always_2d=True)
    return pcm16(data.mean(axis=1).astype(np.float32), rate)


def dictate(cluster: Cluster, pcm: bytes, **connect: Any) -> tuple[str, str]:
    """One live session through the proxy with the official SDK, as fast as it sends: the transcription
    model RAPL says the session has, and the completed transcript."""
    with cluster.sdk().realtime.connect(extra_query={"intent": "transcription"}, **connect) as conn:
        assert conn.recv().type == "session.created"
        conn.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": RATE}, "turn_detection": None,
            "transcription": {"model": "gpt-4o-transcribe", "language": "en"}}}})
        for at in range(0, len(pcm), RATE // 5 * 2):
            conn.input_audio_buffer.append(audio=base64.b64encode(pcm[at:at + RATE // 5 * 2]).decode())
        conn.input_audio_buffer.commit()
        model = ""
        for event in conn:
            if event.type == "session.updated":
                model = event.session.audio.input.transcription.model
            assert event.type not in ("error", FAILED), event
            if event.type == COMPLETED:
                return model, event.transcript
    raise AssertionError("the session ended before its transcript")


def sessions_opened(cluster: Cluster) -> tuple[int, int]:
    return cluster.a.health()["sessions_opened"], cluster.b.health()["sessions_opened"]


# --- the tests (in this order: the last one stops instance A) ------------------------------------------

def test_proxy_starts_offline_without_a_database(cluster: Cluster) -> None:
    """Started with no DATABASE_URL and the network refused: nothing was tried beyond loopback, and it
    answered soon (no wait on a cost-map download); both instances passed its health check."""
    assert cluster.attempts() == []
    assert cluster.startup_s < 60, cluster.startup_s
    health = cluster.proxy_health()
    assert {e["api_base"] for e in health["healthy_endpoints"]} == {cluster.a.base, cluster.b.base}
    assert health["unhealthy_endpoints"] == []
    listed = {m.id for m in cluster.sdk().models.list()}
    assert {"whisper-1", "gpt-4o-mini-transcribe", "rapl-a", "rapl-b"} <= listed, listed


def test_requests_spread_over_both_instances(cluster: Cluster, jfk: Path) -> None:
    """16 sequential requests (all 16 on one instance by chance: 1 in 32768): both instances answer, each
    request's text is right, and the instance LiteLLM names has RAPL's request id in its own log."""
    clip = jfk.read_bytes()
    answers = [transcribe(cluster, clip) for _ in range(16)]
    counts = {base: sum(a.api_base == base for a in answers) for base in (cluster.a.base, cluster.b.base)}
    cluster.figures["spread_16_requests"] = {"a": counts[cluster.a.base], "b": counts[cluster.b.base]}
    assert all(count > 0 for count in counts.values()), counts
    for answer in answers:
        assert wer(JFK_TEXT, answer.text) < 0.2, answer.text
        assert answer.rapl_model == cluster.tiny and answer.group == "whisper-1"
        assert cluster.instance(answer.api_base).served(answer.request_id), answer
        other = cluster.b if answer.api_base == cluster.a.base else cluster.a
        assert not other.served(answer.request_id)
    cluster.figures["latency_both_up_s"] = round(statistics.median(a.seconds for a in answers), 3)


def test_a_model_goes_only_to_the_instance_that_serves_it(cluster: Cluster, jfk: Path) -> None:
    """gpt-4o-mini-transcribe is listed for B only: every request goes to B, to its `dictation` model (the
    tiny SenseVoice, which says "hello world ..."); a name the proxy does not list never reaches RAPL."""
    clip = jfk.read_bytes()
    before = cluster.b.model_requests("dictation")
    answers = [transcribe(cluster, clip, "gpt-4o-mini-transcribe") for _ in range(6)]
    assert {(a.api_base, a.rapl_model, a.group) for a in answers} == {
        (cluster.b.base, "dictation", "gpt-4o-mini-transcribe")}
    assert all(a.text.startswith("hello world") for a in answers), answers[0].text
    assert cluster.b.model_requests("dictation") - before >= 6  # and the health checks' own
    with pytest.raises(openai.BadRequestError, match="Invalid model name"):
        cluster.sdk().audio.transcriptions.create(model="whisper-2", file=("jfk.flac", clip))


def test_response_formats_through_the_proxy(cluster: Cluster, jfk: Path) -> None:
    """json and verbose_json (words and segments) arrive as RAPL sent them. text, srt and vtt do not:
    LiteLLM wraps RAPL's plain-text body in JSON, ``{"text": <the body>, "usage": null}`` as
    application/json, so the SDK hands back that JSON string instead of the transcript or subtitles."""
    clip = jfk.read_bytes()
    direct, proxy = cluster.a.sdk(), cluster.sdk()
    for fmt in ("json", "verbose_json"):
        extra = {"timestamp_granularities": ["word", "segment"]} if fmt == "verbose_json" else {}
        got = proxy.audio.transcriptions.create(model="whisper-1", file=("jfk.flac", clip), response_format=fmt,
                                                **extra)
        want = direct.audio.transcriptions.create(model="whisper-1", file=("jfk.flac", clip), response_format=fmt,
                                                  **extra)
        assert got.model_dump() == want.model_dump(), fmt
    assert got.words and got.segments
    wrapped = {}
    for fmt in ("text", "srt", "vtt"):
        raw = proxy.audio.transcriptions.with_raw_response.create(model="whisper-1", file=("jfk.flac", clip),
                                                                  response_format=fmt)
        want = direct.audio.transcriptions.with_raw_response.create(model="whisper-1", file=("jfk.flac", clip),
                                                                    response_format=fmt)
        assert want.headers["content-type"].startswith("text/plain")
        assert raw.headers["content-type"] == "application/json", fmt
        assert json.loads(raw.parse()) == {"text": want.parse(), "usage": None}, fmt
        wrapped[fmt] = raw.parse()[:40]
    assert wrapped["srt"].startswith('{"text":"1\\n00:00:00,')


def test_translations_are_not_routed(cluster: Cluster, jfk: Path) -> None:
    """LiteLLM's proxy has no /v1/audio/translations route: 404, where RAPL has the route (tiny.en is
    English-only, so RAPL itself answers 400 model cannot translate)."""
    clip = jfk.read_bytes()
    with pytest.raises(openai.NotFoundError):
        cluster.sdk().audio.translations.create(model="whisper-1", file=("jfk.flac", clip))
    with pytest.raises(openai.BadRequestError, match="cannot translate"):
        cluster.a.sdk().audio.translations.create(model="whisper-1", file=("jfk.flac", clip))


def test_only_the_master_key_passes(cluster: Cluster, jfk: Path) -> None:
    """Without a database there are no other keys: an instance's own key, or any other, is refused."""
    for key in ("sk-wrong", cluster.a.key):
        with pytest.raises(openai.APIStatusError) as info:
            cluster.sdk(api_key=key).audio.transcriptions.create(model="whisper-1", file=("jfk.flac", jfk.read_bytes()))
        assert 400 <= info.value.status_code < 500


def test_live_dictation_through_the_proxy(cluster: Cluster, jfk: Path) -> None:
    """The official SDK's `realtime.connect(extra_query={"intent": "transcription"})` through the proxy:
    LiteLLM opens the session on an instance of the group (the SDK names no model: gpt-realtime-whisper,
    an alias of whisper-1) and sets the session's transcription model to the deployment's; a session
    naming gpt-4o-mini-transcribe goes to B's `dictation`."""
    pcm = jfk24(jfk)
    before = sessions_opened(cluster)
    results = [dictate(cluster, pcm) for _ in range(4)]
    after = sessions_opened(cluster)
    assert all(model == "whisper-1" and wer(JFK_TEXT, text) < 0.2 for model, text in results), results
    assert sum(after) - sum(before) == 4
    cluster.figures["live_sessions_spread"] = {"a": after[0] - before[0], "b": after[1] - before[1]}
    model, text = dictate(cluster, pcm, model="gpt-4o-mini-transcribe")
    assert model == "dictation" and text.startswith("hello world"), (model, text)
    assert sessions_opened(cluster)[1] == after[1] + 1


def test_one_instance_stopped_every_request_still_answered(cluster: Cluster, jfk: Path) -> None:
    """SIGTERM to A (it exits), then sequential requests until the proxy's health check has marked A down
    and six more: every one answered by B with the right text. Until the mark, a request that drew A is
    retried at once on a random instance (it may draw A again) and, when its retries all drew A, goes on
    through the fallbacks; after it, none needs either. Live sessions then open on B; one LiteLLM opens on
    the stopped instance fails."""
    clip = jfk.read_bytes()
    before = [transcribe(cluster, clip) for _ in range(4)]
    stopped = time.monotonic()
    assert processes.stop(cluster.a.proc, signal.SIGTERM, timeout=30) is not None, "A did not exit on SIGTERM"
    exited_s = time.monotonic() - stopped
    answers: list[Answer] = []
    marked_at: float | None = None
    after_mark = 0
    while after_mark < 6:
        assert time.monotonic() - stopped < 90, "the proxy's health check never marked A down"
        answer = transcribe(cluster, clip)
        answers.append(answer)
        assert answer.api_base == cluster.b.base and wer(JFK_TEXT, answer.text) < 0.2, answer
        assert cluster.b.served(answer.request_id)
        if marked_at is not None:
            after_mark += 1
        elif cluster.a.base in {e["api_base"] for e in cluster.proxy_health()["unhealthy_endpoints"]}:
            marked_at = time.monotonic()
    window = [a for a in answers if a.sent_at < marked_at]
    settled = [a for a in answers if a.sent_at >= marked_at]
    assert all(a.retries == 0 and a.fallbacks == 0 and a.group == "whisper-1" for a in settled), settled
    retried = [a for a in window if a.retries or a.fallbacks]
    cluster.figures["failover"] = {
        "a_exited_after_sigterm_s": round(exited_s, 2),
        "health_check_marked_a_down_after_s": round(marked_at - stopped, 1),
        "requests_until_marked": len(window),
        # x-litellm-attempted-retries counts the retries in the group that answered: a request that went
        # through the fallbacks (after its 2 retries in whisper-1) reads 0 there.
        "of_them_retried_in_whisper_1": {n: sum(1 for a in window if a.retries == n and not a.fallbacks)
                                         for n in (1, 2)},
        "of_them_through_fallbacks": sum(1 for a in window if a.fallbacks),
        "latency_median_s": {"before_stop": round(statistics.median(a.seconds for a in before), 3),
                             "until_marked": round(statistics.median(a.seconds for a in window), 3) if window else None,
                             "after_marked": round(statistics.median(a.seconds for a in settled), 3)},
        "latency_retried_or_fallback_s": [round(a.seconds, 3) for a in retried],
    }
    opened, pcm = cluster.b.health()["sessions_opened"], jfk24(jfk)
    for _ in range(3):
        model, text = dictate(cluster, pcm)
        assert model == "whisper-1" and wer(JFK_TEXT, text) < 0.2, text
    assert cluster.b.health()["sessions_opened"] == opened + 3
    # A live session is neither retried nor sent to a fallback: one LiteLLM opens on a stopped instance
    # (here rapl-a, which names only A and is not health-checked) is accepted, then closed 1011.
    with pytest.raises(ConnectionClosedError) as closed:
        dictate(cluster, pcm, model="rapl-a")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011, closed.value
    assert f"[Errno {errno.ECONNREFUSED}]" in closed.value.rcvd.reason, closed.value.rcvd.reason
