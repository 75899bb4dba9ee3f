"""Prometheus metrics: the Metrics class, GET /metrics, and a real app's requests counted (on a FakeBackend)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from rapl import create_app
from rapl.http.metrics import Metrics, metrics_of, register
from support.fake_backend import FakeBackend, say
from support.server import Server, wait_until
from support.speech import tone, wav_bytes

parser = pytest.importorskip("prometheus_client.parser", reason="pip install prometheus-client")


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, keyed by (name, sorted labels)."""
    samples = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


CLIP = wav_bytes(tone(11.0))


# --------------------------------------------------------------------------- the class itself


def test_metrics_class_counts_times_and_reads_callbacks() -> None:
    depth = {"n": 0}
    loaded = {"ok": False}
    metrics = Metrics(queue_depth=lambda: depth["n"], model_loaded=lambda: loaded["ok"],
                      info={"backend": "whisper", "model": "tiny.en"})
    metrics.request_done("/v1/audio/transcriptions", 200, 1.5)
    metrics.request_done("/v1/audio/transcriptions", 200, 0.2)
    metrics.request_done("/v1/audio/transcriptions", 429, 0.001)
    metrics.audio_processed(11.0)
    metrics.audio_processed(4.5)
    depth["n"] = 3
    samples = scrape(metrics.render().decode())
    assert value(samples, "rapl_requests_total", endpoint="/v1/audio/transcriptions", status="200") == 2
    assert value(samples, "rapl_requests_total", endpoint="/v1/audio/transcriptions", status="429") == 1
    assert value(samples, "rapl_request_duration_seconds_count", endpoint="/v1/audio/transcriptions") == 3
    assert value(samples, "rapl_request_duration_seconds_sum",
                 endpoint="/v1/audio/transcriptions") == pytest.approx(1.701)
    assert value(samples, "rapl_request_duration_seconds_bucket", endpoint="/v1/audio/transcriptions",
                 le="0.25") == 2
    assert value(samples, "rapl_audio_seconds_total") == pytest.approx(15.5)
    assert value(samples, "rapl_queue_depth") == 3
    assert value(samples, "rapl_model_loaded") == 0
    loaded["ok"] = True
    assert value(scrape(metrics.render().decode()), "rapl_model_loaded") == 1
    assert value(samples, "rapl_info", backend="whisper", model="tiny.en") == 1


def test_each_app_has_its_own_registry() -> None:
    from prometheus_client import REGISTRY

    first, second = Metrics(), Metrics()  # the same metric names twice: no "Duplicated timeseries"
    first.request_done("/health", 200, 0.01)
    assert value(scrape(first.render().decode()), "rapl_requests_total", endpoint="/health", status="200") == 1
    assert value(scrape(second.render().decode()), "rapl_requests_total", endpoint="/health", status="200") == 0
    assert not [name for name in REGISTRY._names_to_collectors if name.startswith("rapl")]


def test_a_failing_callback_does_not_break_the_scrape() -> None:
    def broken() -> int:
        raise RuntimeError("worker gone")

    samples = scrape(Metrics(queue_depth=broken, model_loaded=lambda: True).render().decode())
    assert samples[("rapl_queue_depth", ())] != samples[("rapl_queue_depth", ())]  # NaN
    assert value(samples, "rapl_model_loaded") == 1


def test_metrics_of_an_app_without_metrics_does_nothing() -> None:
    app = Flask("bare")
    metrics_of(app).audio_processed(3.0)
    metrics_of(app).request_done("/x", 200, 0.1)


def test_endpoint_counts_every_request_by_rule_and_status() -> None:
    app = Flask("plain")

    @app.get("/hello/<name>")
    def hello(name: str) -> str:
        return f"hi {name}"

    register(app, Metrics())
    client = app.test_client()
    for name in ("a", "b", "c"):
        assert client.get(f"/hello/{name}").status_code == 200
    assert client.get("/nowhere").status_code == 404
    assert client.post("/hello/a").status_code == 405
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    samples = scrape(resp.get_data(as_text=True))
    assert value(samples, "rapl_requests_total", endpoint="/hello/<name>", status="200") == 3
    assert value(samples, "rapl_requests_total", endpoint="unmatched", status="404") == 1
    assert value(samples, "rapl_requests_total", endpoint="unmatched", status="405") == 1  # no rule matched
    assert not [key for key in samples if ("endpoint", "/metrics") in key[1]]  # scrapes are not counted


# --------------------------------------------------------------------------- a real RAPL app


@pytest.fixture(scope="module")
def metrics_server() -> Iterator[Server]:
    """A real waitress server on a FakeBackend (0.22 s per 11 s clip); create_app registers the metrics."""
    app = create_app({"ENV_FILE": "", "PROGRESS": "false", "VAD": "false"}, backend=FakeBackend(delay=0.02))
    assert isinstance(metrics_of(app), Metrics)
    server = Server(app)
    assert server.wait_loaded() == "ready", server.worker.error
    yield server
    server.close()


def test_rapl_app_metrics_move_with_requests(metrics_server: Server) -> None:
    with metrics_server.http() as http:
        before = scrape(http.get("/metrics").text)
        assert http.get("/health").status_code == 200
        resp = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", CLIP)})
        assert resp.status_code == 200 and resp.json()["text"] == say(11.0)
        assert http.post("/v1/audio/transcriptions", files={"file": ("a.txt", b"not audio")}).status_code == 400
        assert http.get("/v1/nowhere").status_code == 404
        after = scrape(http.get("/metrics").text)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("rapl_requests_total", endpoint="/health", status="200") == 1
    assert moved("rapl_requests_total", endpoint="/v1/audio/transcriptions", status="200") == 1
    assert moved("rapl_requests_total", endpoint="/v1/audio/transcriptions", status="400") == 1
    assert moved("rapl_requests_total", endpoint="unmatched", status="404") == 1
    assert moved("rapl_request_duration_seconds_count", endpoint="/v1/audio/transcriptions") == 2
    assert moved("rapl_request_duration_seconds_sum", endpoint="/v1/audio/transcriptions") > 0.05
    assert value(after, "rapl_model_loaded") == 1
    assert value(after, "rapl_queue_depth") == 0


def test_transcribed_audio_seconds_are_counted(metrics_server: Server) -> None:
    """rapl.http.api reports each transcription's audio (metrics_of(current_app).audio_processed); a 400 adds none."""
    with metrics_server.http() as http:
        before = value(scrape(http.get("/metrics").text), "rapl_audio_seconds_total")
        resp = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", CLIP)})
        assert resp.status_code == 200
        assert http.post("/v1/audio/transcriptions", files={"file": ("a.txt", b"not audio")}).status_code == 400
        middle = value(scrape(http.get("/metrics").text), "rapl_audio_seconds_total")
        short = http.post("/v1/audio/translations", files={"file": ("b.wav", wav_bytes(tone(2.5)))})
        assert short.status_code == 200
        after = value(scrape(http.get("/metrics").text), "rapl_audio_seconds_total")
    assert middle - before == pytest.approx(11.0, abs=0.01)
    assert after - middle == pytest.approx(2.5, abs=0.01)


def test_streamed_transcription_is_timed_to_its_end(metrics_server: Server) -> None:
    with metrics_server.http() as http:
        before = scrape(http.get("/metrics").text)
        with http.stream("POST", "/v1/audio/transcriptions", data={"stream": "true"},
                         files={"file": ("a.wav", CLIP)}) as resp:
            assert resp.status_code == 200
            events = [line for line in resp.iter_lines() if line.startswith("data: ")]
        assert '"transcript.text.done"' in events[-1]

        def counted() -> dict:
            samples = scrape(http.get("/metrics").text)
            done = value(samples, "rapl_request_duration_seconds_count", endpoint="/v1/audio/transcriptions")
            return samples if done > value(before, "rapl_request_duration_seconds_count",
                                           endpoint="/v1/audio/transcriptions") else {}

        after = wait_until(counted, timeout=5, what="the streamed request to be recorded", interval=0.05)
    seconds = value(after, "rapl_request_duration_seconds_sum", endpoint="/v1/audio/transcriptions") - \
        value(before, "rapl_request_duration_seconds_sum", endpoint="/v1/audio/transcriptions")
    assert seconds > 0.1  # the whole transcription, not just the response headers
    assert value(after, "rapl_audio_seconds_total") - value(before, "rapl_audio_seconds_total") \
        == pytest.approx(11.0, abs=0.01)


def test_metrics_need_the_api_key_when_one_is_set() -> None:
    app = create_app({"ENV_FILE": "", "PROGRESS": "false", "API_KEY": "s3cret"}, backend=FakeBackend())
    try:
        client = app.test_client()
        denied = client.get("/metrics")
        assert denied.status_code == 401 and denied.get_json()["error"]["code"] == "invalid_api_key"
        allowed = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert allowed.status_code == 200
        samples = scrape(allowed.get_data(as_text=True))
        assert value(samples, "rapl_requests_total", endpoint="/metrics", status="401") == 0
        client.get("/v1/models")  # refused before any view runs, but still counted
        samples = scrape(client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).get_data(as_text=True))
        assert value(samples, "rapl_requests_total", endpoint="/v1/models", status="401") == 1
    finally:
        app.extensions["rapl"].shutdown()
