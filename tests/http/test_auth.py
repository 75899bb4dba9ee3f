"""The optional API key, on a real waitress server (FakeBackend) through raw HTTP and the official SDK."""

from __future__ import annotations

import logging

import openai
import pytest

from support.fake_backend import FakeBackend, say
from support.server import Server
from support.speech import tone, wav_bytes

KEY = "sk-local-test-key-123"
CLIP = wav_bytes(tone(3.0))


@pytest.fixture(scope="module")
def keyed(serve) -> Server:  # noqa: ANN001
    return serve({"API_KEY": KEY, "VAD": "false"}, backend=FakeBackend())


def test_right_key_works(keyed: Server) -> None:
    text = keyed.client(api_key=KEY).audio.transcriptions.create(model="whisper-1", file=("a.wav", CLIP)).text
    assert text == say(3.0)


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic " + KEY, "Bearer " + KEY[:-1], KEY])
def test_wrong_or_missing_key_is_401(keyed: Server, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    with keyed.http() as http:
        for path in ("/v1/models", "/v1/audio/transcriptions"):
            resp = http.request("GET" if path.endswith("models") else "POST", path, headers=headers)
            assert resp.status_code == 401
            assert resp.json()["error"]["code"] == "invalid_api_key"


def test_sdk_sees_authentication_error(keyed: Server) -> None:
    calls = len(keyed.backend.calls)
    with pytest.raises(openai.AuthenticationError):
        keyed.client(api_key="nope").audio.transcriptions.create(model="whisper-1", file=("a.wav", CLIP))
    assert len(keyed.backend.calls) == calls  # refused before the model


def test_health_stays_open(keyed: Server) -> None:
    with keyed.http() as http:
        assert http.get("/health").status_code == 200


def test_key_never_logged(keyed: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with keyed.http() as http:
        http.get("/v1/models", headers={"Authorization": "Bearer " + KEY})
        http.get("/v1/models", headers={"Authorization": "Bearer wrong-" + KEY})
    assert KEY not in caplog.text


def test_no_key_means_open(fake_server: Server) -> None:
    with fake_server.http() as http:
        assert http.get("/v1/models").status_code == 200


def test_exposed_without_key_warns(caplog: pytest.LogCaptureFixture) -> None:
    from rapl import create_app

    caplog.set_level(logging.WARNING)
    app = create_app({"ENV_FILE": "", "HOST": "0.0.0.0"}, backend=FakeBackend())
    app.extensions["rapl"].shutdown()
    assert "API_KEY" in caplog.text
