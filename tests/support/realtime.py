"""A client for RAPL's Realtime transcription WebSocket (OpenAI's wire format), on the ``websockets``
library's sync client: JSON events out, events in (each kept), audio as base64 PCM16 or G.711."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

PATH = "/v1/realtime?intent=transcription"
RATE = 24000  # OpenAI's audio/pcm rate
DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"

Match = Callable[[dict[str, Any]], bool]


def pcm16(audio: np.ndarray, rate: int = 16000, to: int = RATE) -> bytes:
    """PCM16 little-endian of float ``audio`` at ``rate``, resampled to ``to`` (soxr)."""
    samples = np.asarray(audio, dtype=np.float32)
    if rate != to:
        import soxr

        samples = soxr.resample(samples, rate, to).astype(np.float32)
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def g711(audio: np.ndarray, law: str, rate: int = 16000) -> bytes:
    """G.711 μ-law (``law`` "ULAW") or A-law ("ALAW") bytes of ``audio`` at 8 kHz, encoded by libsndfile."""
    import soundfile
    import soxr

    samples = soxr.resample(np.asarray(audio, dtype=np.float32), rate, 8000).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 8000, format="RAW", subtype=law)
    return buffer.getvalue()


def of_type(*names: str) -> Match:
    """A match for events of one of ``names``."""
    return lambda event: event.get("type") in names


class Client:
    """One live session seen from the client: what was sent, every event received (``got``)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.got: list[dict[str, Any]] = []

    # -- out ------------------------------------------------------------------------------------

    def send(self, kind: str, **fields: Any) -> None:
        """One client event."""
        self.ws.send(json.dumps({"type": kind, **fields}))

    def raw(self, message: str | bytes) -> None:
        """One WebSocket message as it is (text for str, binary for bytes)."""
        self.ws.send(message)

    def append(self, data: bytes) -> None:
        self.send("input_audio_buffer.append", audio=base64.b64encode(data).decode("ascii"))

    def stream(self, data: bytes, bytes_per_second: int = RATE * 2, pace: float = 0.0,
               before_last: Callable[[], None] | None = None) -> None:
        """``data`` in 100 ms appends; ``pace`` 1.0 sends in real time (0: as fast as it goes);
        ``before_last`` is called just before the last append."""
        step = max(1, bytes_per_second // 10)
        starts = list(range(0, len(data), step))
        began = time.monotonic()
        for index, at in enumerate(starts):
            if pace:
                due = began + at / bytes_per_second / pace
                time.sleep(max(0.0, due - time.monotonic()))
            if index == len(starts) - 1 and before_last is not None:
                before_last()
            self.append(data[at:at + step])

    def commit(self) -> None:
        self.send("input_audio_buffer.commit")

    def update(self, beta: bool = False, **session: Any) -> dict[str, Any]:
        """A session.update (``beta``: transcription_session.update) of ``session``; returns the answer."""
        kind = "transcription_session.update" if beta else "session.update"
        self.send(kind, session=session)
        answer = self.recv()
        assert answer["type"] == ("transcription_session.updated" if beta else "session.updated"), answer
        return answer["session"]

    def configure(self, **audio_input: Any) -> dict[str, Any]:
        """A GA session.update with ``audio.input`` = ``audio_input``; returns the effective session."""
        return self.update(type="transcription", audio={"input": audio_input})

    # -- in -------------------------------------------------------------------------------------

    def recv(self, timeout: float = 10) -> dict[str, Any]:
        """The next event (a TimeoutError if none comes within ``timeout`` s)."""
        event = json.loads(self.ws.recv(timeout=timeout))
        assert isinstance(event, dict) and isinstance(event.get("type"), str), event
        self.got.append(event)
        return event

    def until(self, match: Match | str, timeout: float = 30) -> list[dict[str, Any]]:
        """Events received until one matches ``match`` (an event type, or a predicate), that one included."""
        test = of_type(match) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while True:
            event = self.recv(timeout=max(0.05, deadline - time.monotonic()))
            seen.append(event)
            if test(event):
                return seen

    def deltas(self, item_id: str) -> str:
        """The item's deltas received so far, concatenated (as clients show live text)."""
        return "".join(e["delta"] for e in self.got if e["type"] == DELTA and e["item_id"] == item_id)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.got if e["type"] == kind]


def open_session(url: str, path: str = PATH, **connect_options: Any) -> tuple[Any, Client, dict[str, Any]]:
    """Connect (``websockets.sync.client.connect``) and read ``session.created``; returns the connection
    (a context manager), its Client and the created event."""
    from websockets.sync.client import connect

    ws = connect(url + path, open_timeout=10, **connect_options)
    client = Client(ws)
    try:
        created = client.recv()
    except BaseException:
        ws.close()
        raise
    assert created["type"] == "session.created", created
    return ws, client, created
