"""A live dictation session (OpenAI's Realtime transcription protocol), without the WebSocket.

The connection (rapl.http.websocket) hands each client message to :meth:`LiveSession.handle` and
calls :meth:`LiveSession.poll` often; the session answers through ``emit`` (one event, a dict).

Audio is decoded (PCM16 at the declared rate, G.711 μ-law or A-law), resampled to 16 kHz as
uploads are, and judged by Silero as it arrives. A turn is the audio since the last commit
(``turn_detection: null``) or a stretch of speech the VAD found (``server_vad``). While a turn
grows, its audio is decoded again in the model thread's low-priority lane (rapl.core.worker), and
words the recent hypotheses agree on (AGREEMENT; not the newest one's last) go out as
append-only deltas. The turn's final transcription is a REST transcription of the same audio;
what it adds beyond the words already sent goes out as a last delta, so ``completed.transcript``
is always the concatenation of the item's deltas. A turn longer than MAX_CHUNK_SECONDS is
decoded live a window at a time: the window closes at a pause, is decoded whole once, and the
next one starts there.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import queue
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Any

import numpy as np

from ..audio.recording import SAMPLE_RATE, MemoryBudget, Recording, Resampler
from ..audio.vad import StreamingVad
from ..core.params import AudioRequest
from ..core.service import Job, Transcriber
from ..errors import APIError, RaplError, as_api
from ..transcript import formats
from ..transcript.text import UNSPACED, bare_word
from ..transcript.transcription import Transcription
from .live_config import ConfigError, LiveConfig, updated

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]
MIN_COMMIT_SAMPLES = SAMPLE_RATE // 10  # OpenAI refuses a commit of less than 100 ms
STEP_SAMPLES = int(0.2 * SAMPLE_RATE)  # new audio before the next partial decode of a turn
FIRST_SAMPLES = int(0.3 * SAMPLE_RATE)  # speech in a turn before its first partial decode
ANCHOR_PAUSE_WINDOWS = 8  # a pause of 256 ms (8 Silero windows) may close a live window
SETTLE_MARGIN = 5 * SAMPLE_RATE  # a live window closes at least this far before its newest audio
HOLD_BACK = 1  # the newest unit of the latest hypothesis is never sent (the audio may have cut it)
EDGE = 1  # nor the newest unit of an earlier hypothesis it is checked against
# transcription.delay (OpenAI's: how long to wait before emitting text, for accuracy): a unit is sent
# once the latest hypothesis and the earlier ones decoded in the last this many seconds of audio agree on
# it, counting only those that heard past it (a hypothesis of the first 0.3 s has no say on the third word),
# and at least this many of them where there are as many: at a decode every 0.2 s, medium asks at least
# three hypotheses in a row to agree on each word; when the model is busy and decodes come seldom, the one
# before, further back, is enough. Default medium.
AGREEMENT = {"minimal": (0.0, 1), "low": (0.5, 1), "medium": (1.0, 2), "high": (1.5, 2), "xhigh": (2.5, 3)}
_UNITS = re.compile(f"\\s*(?:[{UNSPACED}]|[^\\s{UNSPACED}]+)")
_CLIENT_EVENTS = ("session.update", "transcription_session.update", "input_audio_buffer.append",
                  "input_audio_buffer.commit", "input_audio_buffer.clear")


def units(text: str) -> list[str]:
    """``text`` as the pieces deltas are made of: words with their leading space, or one Han or kana
    character; joined they give the text back (its surrounding whitespace aside)."""
    return _UNITS.findall(text.strip())


def stable_count(previous: list[str], latest: list[str], edge: int = EDGE) -> int:
    """How many leading units an earlier hypothesis and the latest agree on, the newest units of each
    excluded (``edge`` of the earlier, HOLD_BACK of the latest: the audio may have cut them)."""
    count = 0
    for a, b in zip(previous[:max(0, len(previous) - edge)], latest[:max(0, len(latest) - HOLD_BACK)],
                    strict=False):
        if _bare(a) != _bare(b):
            break
        count += 1
    return count


def _bare(unit: str) -> str:
    """A unit as hypotheses are compared: case and surrounding punctuation aside."""
    return bare_word(unit.strip()).lower() or unit.strip()


def agreed(hypotheses: list[tuple[int, list[str]]], latest: list[str], length: int, said: int,
           delay: str = "medium") -> int:
    """How many leading units of ``latest`` (decoded at turn length ``length``) the earlier
    ``hypotheses`` ((length, units), oldest first) agree on by the AGREEMENT rule of ``delay``;
    ``said``: units already sent (0 when there is nothing earlier to agree with)."""
    seconds, voters = AGREEMENT[delay]
    edge = 0 if delay == "minimal" else EDGE
    earlier = [h for n, h in hypotheses if n >= length - seconds * SAMPLE_RATE] or [h for _n, h in hypotheses[-1:]]
    heard = [h for h in earlier if len(h) - edge > said]  # those that heard past the units sent
    earlier = heard if len(heard) >= min(voters, len(earlier)) else earlier
    return min((stable_count(h, latest, edge) for h in earlier), default=0)


def continuation(sent: list[str], final: list[str]) -> int:
    """Where ``final`` goes on after the units already ``sent`` (aligned word by word, case and
    punctuation aside): the index of its first unit not yet said."""
    if not sent:
        return 0
    a, b = [_bare(u) for u in sent], [_bare(u) for u in final]
    blocks = [m for m in SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks() if m.size]
    if not blocks:
        return min(len(sent), len(final))
    last = blocks[-1]
    unmatched = len(a) - (last.a + last.size)  # sent after the last agreement: taken to stand for as many
    return min(len(b), last.b + last.size + unmatched)


def decode_audio(data: bytes, kind: str) -> np.ndarray:
    """Appended bytes as float32 samples: PCM16 little-endian, or G.711 μ-law/A-law (libsndfile)."""
    if kind == "audio/pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    import soundfile

    subtype = "ULAW" if kind == "audio/pcmu" else "ALAW"
    samples, _rate = soundfile.read(io.BytesIO(data), dtype="float32", format="RAW", subtype=subtype,
                                    samplerate=8000, channels=1)
    return samples.reshape(-1)


class _Collect:
    """A Resampler's sink: what it wrote since the last take."""

    max_seconds = math.inf

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def write(self, samples: np.ndarray) -> None:
        self.parts.append(np.asarray(samples, dtype=np.float32))

    def reset(self) -> None:
        self.parts.clear()

    def __len__(self) -> int:
        return 0

    def take(self) -> np.ndarray:
        out = np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=np.float32)
        self.parts = []
        return out


@dataclass(eq=False)
class Turn:
    """One item's audio as it grows, and what has been said of it."""

    item_id: str
    recording: Recording
    started: int  # the session's audio clock (16 kHz samples) at the turn's first sample
    speech: int = 0  # samples of speech the VAD has heard in it
    spoken_to: int = 0  # turn length at the last window of speech
    quiet: int = 0  # windows since the last speech (for a window's close at a pause)
    pauses: list[int] = field(default_factory=list)  # turn samples where a pause of ANCHOR_PAUSE_WINDOWS ended
    sent: list[str] = field(default_factory=list)  # units sent as deltas
    window: int = 0  # turn sample where the live window starts
    window_sent: int = 0  # units of ``sent`` before the window
    hypotheses: list[tuple[int, list[str]]] = field(default_factory=list)  # recent decodes: (length, units)
    partial_at: int = 0  # turn length at the last partial decode
    partial: Future[Any] | None = None
    final: Future[Transcription] | None = None
    committed: bool = False
    cleared: bool = False
    overflowed: bool = False  # audio was dropped (MAX_AUDIO_SECONDS, or the decode memory was full)

    def __len__(self) -> int:
        return len(self.recording)


class LiveSession:
    """One client's session: its configuration, its input buffer and its turns."""

    def __init__(self, service: Transcriber, budget: MemoryBudget, max_seconds: float, emit: Emit,
                 max_chunk: int, expires_at: int, pick: Callable[[str], Any] | None = None) -> None:
        self.service = service
        self.worker = service.worker
        self.pick = pick  # transcription.model -> the model (rapl.core.models.Models.pick), as a REST request's
        self.budget = budget
        self.max_seconds = max_seconds
        self.emit_event = emit
        self.max_chunk = max_chunk  # samples a live window may hold (MAX_CHUNK_SECONDS)
        self.expires_at = expires_at
        self.id = "sess_" + uuid.uuid4().hex[:20]
        self.config = LiveConfig()
        self.request: AudioRequest = service.prepare(self.config.request())
        self.inbox: queue.Queue[tuple[str, Turn, Future[Any]]] = queue.Queue()
        self.turn: Turn | None = None
        self.finals: list[Turn] = []  # committed turns whose transcription has not been told yet
        self.previous_item: str | None = None
        self.clock = 0  # 16 kHz samples of audio judged so far (the session's audio clock)
        self.vad = StreamingVad()
        self.pre_roll: list[np.ndarray] = []  # server VAD: the last prefix_padding of audio before speech
        self._unjudged = np.zeros(0, dtype=np.float32)
        self._resampler: Resampler | None = None
        self._collect = _Collect()
        self._odd = b""  # a PCM16 byte split from its sample by the client
        self._items = 0
        self._events = 0
        self.closed = False

    # ------------------------------------------------------------------ events out

    def emit(self, kind: str, **fields: Any) -> None:
        """Send one server event."""
        self._events += 1
        self.emit_event({"type": kind, "event_id": f"event_{self.id[5:13]}{self._events:06d}", **fields})

    def error(self, message: str, code: str | None = None, param: str | None = None,
              kind: str = "invalid_request_error", event_id: str | None = None) -> None:
        """An ``error`` event in OpenAI's shape; the session goes on."""
        self.emit("error", error={"type": kind, "code": code, "message": message, "param": param,
                                  "event_id": event_id})

    def start(self) -> None:
        """``session.created``, with the defaults."""
        self.emit("session.created", session=self._shown())

    def _shown(self) -> dict[str, Any]:
        from ..backends import public_name

        return self.config.shown(self.id, self.expires_at, public_name(self.worker.backend.model))

    # ------------------------------------------------------------------ events in

    def handle(self, message: str | bytes) -> None:
        """One client message (a JSON event); anything wrong with it is an ``error`` event."""
        try:
            event = json.loads(message)
        except (ValueError, RecursionError):
            self.error("The message is not valid JSON: send one JSON event per WebSocket text message.",
                       code="invalid_json")
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self.error("Each event must be a JSON object with a string 'type'.", code="invalid_event", param="type")
            return
        kind, event_id = event["type"], event.get("event_id")
        event_id = event_id if isinstance(event_id, str) else None
        handler = {"session.update": self._update, "transcription_session.update": self._update,
                   "input_audio_buffer.append": self._append, "input_audio_buffer.commit": self._commit,
                   "input_audio_buffer.clear": self._clear}.get(kind)
        if handler is None:
            self.error(f"Invalid value: {kind[:60]!r}. A transcription session takes {', '.join(_CLIENT_EVENTS)}.",
                       code="invalid_value", param="type", event_id=event_id)
            return
        try:
            handler(event)
        except ConfigError as exc:
            self.error(exc.message, code=exc.code, param=exc.param, event_id=event_id)
        except (RaplError, APIError) as exc:
            api = as_api(exc) if isinstance(exc, RaplError) else exc
            self.error(api.message, code=api.code, param=api.param, kind=api.type, event_id=event_id)
        except Exception:  # noqa: BLE001 - a bug: the client is told, the session goes on
            log.exception("live session: %s failed", kind[:60])
            self.error(f"Internal error while handling {kind[:60]}. See the server log.", code="internal_error",
                       kind="server_error", event_id=event_id)

    def _update(self, event: dict[str, Any]) -> None:
        beta = event["type"] == "transcription_session.update"
        config, request = updated(self.config, event.get("session"), beta)
        if self.pick is not None and config.model != self.config.model:
            self._choose(config.model)
        request = self.service.prepare(request)  # what the loaded model cannot do: refused now, naming it
        if (config.format, config.input_rate) != (self.config.format, self.config.input_rate):
            self._resampler = None
        self.config, self.request = config, request
        self.emit("transcription_session.updated" if beta else "session.updated", session=self._shown())

    def _choose(self, name: str) -> None:
        """Transcribe with the model ``name`` chooses (an id or alias; else the default), from the next turn:
        between turns only, since a turn's drafts and final belong to one model."""
        assert self.pick is not None
        slot = self.pick(name)
        if slot.service is self.service:
            return
        if self.turn is not None or self.finals:
            raise ConfigError("The model of a live session can change only between turns: commit or clear the "
                              "audio buffer, and wait for its transcript, first.", "session.audio.input.transcription"
                              ".model", "model_change_mid_turn")
        slot.worker.ensure_loaded()  # as a REST request does: a loading model is waited for, a failed one is 503
        self.worker.withdraw_partial(self)
        self.service, self.worker = slot.service, slot.worker

    def _append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise ConfigError("input_audio_buffer.append needs 'audio': base64 of the audio.", "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("'audio' is not valid base64.", "audio", "invalid_base64") from None
        if self.config.format == "audio/pcm":
            data, self._odd = self._odd + data, b""
            if len(data) % 2:
                data, self._odd = data[:-1], data[-1:]
        if not data:
            return
        samples = decode_audio(data, self.config.format)
        if self._resampler is None:
            self._resampler = Resampler(self.config.input_rate, self._collect)
        self._resampler.write(samples)
        self._judge(self._collect.take())

    def _judge(self, samples: np.ndarray) -> None:
        """Run the VAD over new 16 kHz audio and route it, window by window, into the turn."""
        pending = np.concatenate([self._unjudged, samples]) if self._unjudged.size else samples
        probs = self.vad.feed(samples)
        size = self.vad.WINDOW
        for index, prob in enumerate(probs):
            self._window(pending[index * size:(index + 1) * size], float(prob))
        self._unjudged = pending[len(probs) * size:].copy()

    def _window(self, window: np.ndarray, prob: float) -> None:
        turns = self.config.turns
        threshold = turns.threshold if turns else 0.5
        speaking = prob >= threshold
        silent = prob < max(threshold - 0.15, 0.01)
        turn = self.turn
        if turns is None:
            if turn is None:
                turn = self._open_turn()
            self._write(turn, window, speaking, silent)
        elif turn is None:
            self.pre_roll.append(window)
            keep = max(1, turns.prefix_padding_ms * SAMPLE_RATE // 1000 // len(window) + 1)
            del self.pre_roll[:-keep]
            if speaking:
                turn = self._open_turn(sum(len(w) for w in self.pre_roll) - len(window))
                padding = np.concatenate(self.pre_roll)
                self.pre_roll = []
                self.emit("input_audio_buffer.speech_started", audio_start_ms=_ms(turn.started),
                          item_id=turn.item_id)
                self._write(turn, padding, True, False)
        else:
            self._write(turn, window, speaking, silent)
            if turn.quiet * len(window) >= turns.silence_duration_ms * SAMPLE_RATE // 1000:
                self.emit("input_audio_buffer.speech_stopped", audio_end_ms=_ms(self.clock),
                          item_id=turn.item_id)
                self._commit_turn(turn)
        self.clock += len(window)

    def _open_turn(self, back: int = 0) -> Turn:
        self._items += 1
        item_id = f"item_{self.id[5:13]}{self._items:04d}"
        self.turn = Turn(item_id, Recording(self.max_seconds, self.budget), started=max(0, self.clock - back))
        return self.turn

    def _write(self, turn: Turn, samples: np.ndarray, speaking: bool, silent: bool) -> None:
        if turn.overflowed:
            return
        try:
            turn.recording.write(samples)
        except RaplError as exc:  # past MAX_AUDIO_SECONDS, or the server's decode memory is full
            if not turn.overflowed:  # told once a turn, not once a window
                api = as_api(exc)
                self.error(f"{api.message} The audio from here on was dropped: commit the turn.", code=api.code,
                           param="audio", kind=api.type)
            turn.overflowed = True
            return
        if speaking:
            turn.speech += len(samples)
            turn.quiet = 0
            turn.spoken_to = len(turn)
        elif silent:
            turn.quiet += 1
            if turn.quiet == ANCHOR_PAUSE_WINDOWS:
                turn.pauses.append(len(turn))

    def _commit(self, event: dict[str, Any]) -> None:
        self._flush()
        turn = self.turn
        if turn is None or len(turn) < MIN_COMMIT_SAMPLES:
            have = len(turn) / SAMPLE_RATE * 1000 if turn else 0.0
            self.error("Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                       f"but buffer only has {have:.2f}ms of audio.", code="input_audio_buffer_commit_empty",
                       event_id=event.get("event_id") if isinstance(event.get("event_id"), str) else None)
            return
        self._commit_turn(turn)

    def _flush(self) -> None:
        """Everything appended so far into the turn: the resampler's tail, and the last few ms the VAD
        has not judged (a fresh resampler and VAD state start after a commit)."""
        if self._resampler is not None:
            self._resampler.write(np.zeros(0, dtype=np.float32), last=True)
            self._resampler = None
            self._judge(self._collect.take())
        if self.turn is not None and self._unjudged.size:
            self._write(self.turn, self._unjudged, False, False)
            self.clock += self._unjudged.size
        self._unjudged = np.zeros(0, dtype=np.float32)
        self.vad = StreamingVad()

    def _clear(self, event: dict[str, Any]) -> None:
        if self.turn is not None:
            self._drop(self.turn)
        self.turn = None
        self.pre_roll = []
        self.emit("input_audio_buffer.cleared")

    def _drop(self, turn: Turn) -> None:
        turn.cleared = True
        self.worker.withdraw_partial(self)
        turn.recording.release()

    # ------------------------------------------------------------------ turns

    def _commit_turn(self, turn: Turn) -> None:
        self.turn = None
        turn.committed = True
        turn.recording.close()  # its last, partial page counts (peak: a short turn is not "silence")
        self.worker.withdraw_partial(self)  # the final never waits behind this session's stale partial
        self.emit("input_audio_buffer.committed", previous_item_id=self.previous_item, item_id=turn.item_id)
        item = {"id": turn.item_id, "type": "message", "role": "user", "object": "realtime.item",
                "status": "completed", "content": [{"type": "input_audio", "transcript": None}]}
        if self.config.beta:
            self.emit("conversation.item.created", previous_item_id=self.previous_item, item=item)
        else:
            self.emit("conversation.item.added", previous_item_id=self.previous_item, item=item)
            self.emit("conversation.item.done", previous_item_id=self.previous_item, item=item)
        self.previous_item = turn.item_id
        self.finals.append(turn)
        try:
            future = self.service.start(Job(turn.recording, self.request, label=turn.item_id))
        except (RaplError, APIError) as exc:  # the queue is full, the server is stopping
            future = Future()
            future.set_exception(exc)
        turn.final = future
        future.add_done_callback(lambda f: self._done(turn, f))

    def _done(self, turn: Turn, future: Future[Transcription]) -> None:
        """On the model thread: the turn's audio goes back to the budget at once (the session may be gone)."""
        turn.recording.release()
        self.inbox.put(("final", turn, future))

    def poll(self) -> None:
        """Tell what the model has finished, and start the next partial decode where one is due."""
        while True:
            try:
                kind, turn, future = self.inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "final":
                self._finished(turn, future)
            else:
                self._heard(turn, future)
        self._maybe_partial()

    def _maybe_partial(self) -> None:
        turn = self.turn
        if turn is None or turn.partial is not None or self.closed:
            return
        length = len(turn)
        if turn.speech < FIRST_SAMPLES or length - turn.partial_at < STEP_SAMPLES:
            return
        if turn.partial_at >= turn.spoken_to:  # only silence since the last decode: nothing new to hear
            return
        turn.partial_at = length
        settle = self._anchor(turn, length)
        audio = np.array(turn.recording[turn.window:length], dtype=np.float32)  # a copy: the turn goes on
        pieces = [audio] if settle is None else [audio[:settle - turn.window], audio[settle - turn.window:]]
        turn.partial = self.service.partial(self, pieces, self.request)
        tag = settle if settle is not None else -1
        turn.partial.add_done_callback(lambda f: self.inbox.put(("partial", turn, _Tagged(f, tag, length))))

    def _anchor(self, turn: Turn, length: int) -> int | None:
        """Where the live window closes, once it would hold more than MAX_CHUNK_SECONDS: the last pause
        well before the newest audio, or (no pause) a fixed length before it."""
        if length - turn.window <= self.max_chunk:
            return None
        latest = length - SETTLE_MARGIN
        pauses = [p for p in turn.pauses if turn.window + SAMPLE_RATE < p <= latest]
        return pauses[-1] if pauses else max(turn.window + SAMPLE_RATE, length - self.max_chunk + SETTLE_MARGIN)

    def _heard(self, turn: Turn, tagged: Any) -> None:
        turn.partial = None
        future, settle = tagged.future, tagged.tag
        if turn.committed or turn.cleared or future.cancelled() or future.exception() is not None:
            if not future.cancelled() and future.exception() is not None:
                log.debug("partial decode failed: %s", future.exception())
            return
        texts: list[str] = future.result()
        if settle >= 0:  # the window closed: its whole decode says the rest of it
            piece = units(texts[0])
            said = turn.sent[turn.window_sent:]
            self._say(turn, piece[continuation(said, piece):])
            turn.window, turn.window_sent, turn.hypotheses = settle, len(turn.sent), []
        latest = units(texts[-1])
        length = tagged.length
        log.debug("%s partial at %.2f s: %r", turn.item_id, length / SAMPLE_RATE, texts[-1])
        said = len(turn.sent) - turn.window_sent
        settled = agreed(turn.hypotheses, latest, length, said, self.config.delay or "medium")
        if settled > said:
            self._say(turn, latest[said:settled])
        turn.hypotheses = [(n, h) for n, h in turn.hypotheses if n >= length - 3 * SAMPLE_RATE][-8:] + \
            [(length, latest)]

    def _say(self, turn: Turn, new: list[str]) -> None:
        if not new:
            return
        text = "".join(new)
        if not turn.sent:
            text = text.lstrip()
        turn.sent.extend(new)
        self.emit("conversation.item.input_audio_transcription.delta", item_id=turn.item_id, content_index=0,
                  delta=text)

    def _finished(self, turn: Turn, future: Future[Transcription]) -> None:
        if turn in self.finals:
            self.finals.remove(turn)
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            api = _failure(error)
            self.emit("conversation.item.input_audio_transcription.failed", item_id=turn.item_id, content_index=0,
                      error={"type": api.type, "code": api.code, "message": api.message, "param": api.param})
            return
        result = future.result()
        final = units(result.text)
        self._say(turn, final[continuation(turn.sent, final):])
        transcript = "".join(turn.sent).lstrip()
        body: dict[str, Any] = {"item_id": turn.item_id, "content_index": 0, "transcript": transcript}
        if self.request.logprobs:
            body["logprobs"] = formats.token_logprobs(result.logprobs)
        prompt = self.request.options.prompt
        body["usage"] = (formats.token_usage(result, prompt) if formats.by_tokens(self.config.model)
                         else {"type": "duration", "seconds": formats.ms(result.duration)})
        body["languages"] = formats.languages(result)
        self.emit("conversation.item.input_audio_transcription.completed", **body)

    # ------------------------------------------------------------------ the end

    @property
    def busy(self) -> bool:
        """A committed turn's transcription has not been told yet."""
        return bool(self.finals)

    def close(self) -> None:
        """The client went away or the session ends: its queued work is withdrawn, its audio freed."""
        self.closed = True
        self.worker.withdraw_partial(self)
        if self.turn is not None:
            self._drop(self.turn)
            self.turn = None
        for turn in list(self.finals):
            if turn.final is not None:
                self.worker.withdraw(turn.final)  # if it has not started (its callback frees the audio)


@dataclass(frozen=True)
class _Tagged:
    future: Future[Any]
    tag: int
    length: int


def _failure(error: BaseException | None) -> APIError:
    if error is None:  # cancelled: the server is stopping
        return APIError("The server is shutting down; the turn was not transcribed.", 503, code="shutting_down")
    if isinstance(error, RaplError):
        return as_api(error)
    if isinstance(error, APIError):
        return error
    log.error("live transcription failed", exc_info=error)
    return APIError(f"Internal error: {type(error).__name__}. See the server log.", 500, code="internal_error")


def _ms(samples: int) -> int:
    return round(samples * 1000 / SAMPLE_RATE)


def now() -> float:
    """Seconds since the epoch (expiry times)."""
    return time.time()
