"""Live dictation: OpenAI's Realtime transcription WebSocket (``/v1/realtime?intent=transcription``) on
``python -m rapl``, driven as the dictation apps drive it (TypeWhisper, DictateKeyboard: PCM16 at 24 kHz,
``turn_detection: null``, one commit when the user stops), against REST on the same server and audio.

* ``clips``: en_jfk.flac and espeak-ng sentences of 3–6 s, as 24 kHz PCM16 with a little silence around
  them, and where their speech starts (the first sample above SPEECH_LEVEL of full scale).
* ``Session``: one WebSocket session (the ``websockets`` sync client), its events timestamped as they arrive
  by a reader thread; ``turn`` streams one clip at real-time pace, 100 ms per ``append`` (each sent when its
  last sample would have been recorded), commits and waits for ``completed``.
* ``single``: per clip, one REST request (``/v1/audio/transcriptions``, json, the same samples as a 24 kHz WAV),
  a pause, then the same clip as a live turn; ``concurrent``: N sessions at once, each streaming every clip.

Nothing here imports RAPL: the server is a subprocess (bench/servers.py) and everything is timed by the client.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import queue
import re
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from bench import media, net
from bench.stats import summary, wer

log = logging.getLogger("bench")
RATE = 24000  # what the Realtime API's audio/pcm means unless 'rate' says otherwise, and what the apps send
CHUNK_S = 0.1  # one input_audio_buffer.append per 100 ms of audio
LEAD_S, TAIL_S = 0.5, 0.3  # silence before the speech and after it (the user presses stop a moment later)
SPEECH_LEVEL = 0.02  # |sample| above this (about -34 dBFS) is where speech starts
SENTENCE_S = (3.0, 6.0)  # espeak-ng sentences of this length join the JFK clip
SENTENCES = 4
LEVELS = (1, 2, 4, 6, 8)  # concurrent sessions
STAGGER_S = 0.7  # session k starts k * STAGGER_S after the first (users do not all start on the same 100 ms)
GAP_S = 0.5  # between a turn's completed and the next turn's first sample
KEPT_FIRST_DELTA_S = 3.0  # a session is "kept live" while every turn's first delta comes this soon after speech
KEPT_COMPLETED_S = 2.0  # ... and every commit is answered (completed) this soon
TURN_TIMEOUT_S = 60.0
PAUSE = 0.3
NAN = float("nan")
UPDATE = {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
    "format": {"type": "audio/pcm", "rate": RATE}, "turn_detection": None,
    "transcription": {"model": "whisper-1"}}}}}
DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"


# --------------------------------------------------------------------------- clips


def _pcm24(path: Path) -> np.ndarray:
    """Any audio file as 24 kHz mono int16 (the ffmpeg CLI; building only, not measured)."""
    proc = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-ac", "1",
                           "-ar", str(RATE), "-f", "s16le", "pipe:1"], capture_output=True, check=True)
    return np.frombuffer(proc.stdout, dtype="<i2").copy()


def clips(work: Path) -> list[dict[str, Any]]:
    """en_jfk.flac and the first SENTENCES espeak-ng sentences (bench/media.py) lasting 3–6 s, each as 24 kHz
    PCM16 with LEAD_S of silence before and TAIL_S after; where the speech starts, and the same samples as a
    24 kHz 16-bit WAV (the REST request's file)."""
    pool = media.speech_pool(work)  # writes work/speech/sNN.wav when missing
    sources = [("en_jfk.flac", media.JFK, media.JFK_TEXT)]
    for i, text in enumerate(media.SENTENCES):
        if len(sources) > SENTENCES:
            break
        if SENTENCE_S[0] <= len(pool[i + 1]) / media.RATE <= SENTENCE_S[1]:
            sources.append((f"espeak s{i:02d}", work / "speech" / f"s{i:02d}.wav", text))
    out = []
    for name, path, text in sources:
        speech = _pcm24(path)
        pcm = np.concatenate([np.zeros(int(LEAD_S * RATE), np.int16), speech,
                              np.zeros(int(TAIL_S * RATE), np.int16)])
        loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > SPEECH_LEVEL * 32768)
        buf = io.BytesIO()
        sf.write(buf, pcm, RATE, format="WAV", subtype="PCM_16")
        body, ctype = net.multipart(buf.getvalue(), "clip.wav", "audio/wav")
        out.append({"name": name, "pcm": pcm, "seconds": len(pcm) / RATE,
                    "speech_start": int(loud[0]) / RATE if loud.size else 0.0, "reference": text,
                    "body": body, "ctype": ctype})
    return out


# --------------------------------------------------------------------------- one session


class Session:
    """One Realtime transcription session; a reader thread timestamps every server event as it arrives."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        from websockets.sync.client import connect

        self.url = f"ws://{net.HOST}:{port}/v1/realtime?intent=transcription"
        self.ws = connect(self.url, open_timeout=timeout, close_timeout=5, max_size=None, compression=None)
        self.events: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.log: list[tuple[float, dict[str, Any]]] = []  # every event, in arrival order
        self.problems: list[str] = []  # protocol findings: error events, wrong order, deltas != transcript
        self._reader = threading.Thread(target=self._read, daemon=True, name="live-reader")
        self._reader.start()
        created = self._next(timeout)
        if created.get("type") != "session.created":
            raise RuntimeError(f"first event was {created.get('type')!r}, not session.created")
        self.ws.send(json.dumps(UPDATE))
        updated = self._next(timeout)
        if updated.get("type") != "session.updated":
            raise RuntimeError(f"session.update answered with {json.dumps(updated)[:300]}")
        shown = updated["session"]["audio"]["input"]
        if shown.get("turn_detection") is not None or shown["format"].get("rate") != RATE:
            raise RuntimeError(f"session.updated does not show the update: {json.dumps(shown)[:300]}")

    def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                message = self.ws.recv()
            except (ConnectionClosed, OSError, RuntimeError):
                self.events.put((time.perf_counter(), {"type": "_closed"}))
                return
            at = time.perf_counter()
            event = json.loads(message)
            self.log.append((at, event))
            self.events.put((at, event))

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            return self.events.get(timeout=timeout)[1]
        except queue.Empty:
            raise TimeoutError(f"no event from {self.url} in {timeout:.0f} s") from None

    def turn(self, clip: dict[str, Any], chunk_s: float = CHUNK_S) -> dict[str, Any]:
        """Stream ``clip`` at real-time pace (append k, holding samples [k·n, (k+1)·n), goes out when its last
        sample would have been recorded: t0 + (k+1)·n/RATE), commit, and wait for completed (or failed).
        Times are from speech start (t0 + speech_start) or from the commit."""
        while not self.events.empty():  # anything left from an earlier turn
            self._check_stray(self.events.get_nowait()[1])
        pcm, n = clip["pcm"], int(chunk_s * RATE)
        t0 = time.perf_counter()
        speech_at = t0 + clip["speech_start"]
        late = 0.0
        for start in range(0, len(pcm), n):
            due = t0 + min(start + n, len(pcm)) / RATE
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            late = max(late, time.perf_counter() - due)
            self.ws.send(json.dumps({"type": "input_audio_buffer.append",
                                     "audio": base64.b64encode(pcm[start:start + n].tobytes()).decode()}))
        committed_at = time.perf_counter()
        self.ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        deltas: list[tuple[float, str]] = []
        item = None
        seen: list[str] = []
        done: dict[str, Any] | None = None
        done_at = NAN
        deadline = committed_at + TURN_TIMEOUT_S
        while done is None:
            try:
                at, event = self.events.get(timeout=max(0.01, deadline - time.perf_counter()))
            except queue.Empty:
                self.problems.append(f"{clip['name']}: no completed/failed {TURN_TIMEOUT_S:.0f} s after the commit")
                break
            kind = event.get("type", "?")
            seen.append(kind)
            if kind == "_closed":
                self.problems.append(f"{clip['name']}: the server closed the session mid-turn")
                break
            if kind == "error":
                self.problems.append(f"{clip['name']}: error event {json.dumps(event.get('error'))[:200]}")
            elif kind == "input_audio_buffer.committed":
                item = event.get("item_id")
            elif kind == DELTA:
                deltas.append((at, str(event.get("delta", ""))))
                if item is not None and event.get("item_id") != item:
                    self.problems.append(f"{clip['name']}: delta for {event.get('item_id')}, committed {item}")
            elif kind in (COMPLETED, FAILED):
                done, done_at = event, at
        transcript = str(done.get("transcript", "")) if done and done.get("type") == COMPLETED else None
        joined = "".join(d for _, d in deltas)
        if done is not None and done.get("type") == FAILED:
            self.problems.append(f"{clip['name']}: failed {json.dumps(done.get('error'))[:200]}")
        if transcript is not None and joined != transcript:
            self.problems.append(f"{clip['name']}: completed.transcript {transcript[:80]!r} != concatenated deltas "
                                 f"{joined[:80]!r}")
        if transcript is not None and "input_audio_buffer.committed" not in seen:
            self.problems.append(f"{clip['name']}: completed without input_audio_buffer.committed")
        first = deltas[0][0] if deltas else NAN
        return {"clip": clip["name"], "item": item, "seconds": clip["seconds"], "speech_start": clip["speech_start"],
                "first_delta": first - speech_at, "delta_while_speaking": bool(deltas) and first < committed_at,
                "deltas": len(deltas), "deltas_before_commit": sum(1 for at, _ in deltas if at < committed_at),
                "completed": done_at - committed_at, "transcript": transcript, "failed": transcript is None,
                "send_late_max": late, "events": sorted(set(seen))}

    def _check_stray(self, event: dict[str, Any]) -> None:
        if event.get("type") == "error":
            self.problems.append(f"between turns: error event {json.dumps(event.get('error'))[:200]}")
        elif event.get("type") == "_closed":
            self.problems.append("the server closed the session between turns")

    def close(self) -> None:
        """Close the WebSocket."""
        try:
            self.ws.close()
        finally:
            self._reader.join(timeout=5)


def kept_live(turns: list[dict[str, Any]]) -> bool:
    """Every turn answered, its first delta within KEPT_FIRST_DELTA_S of speech start and its commit answered
    within KEPT_COMPLETED_S."""
    return bool(turns) and all(not t["failed"] and (t["first_delta"] <= KEPT_FIRST_DELTA_S or
                                                    (t["deltas"] == 0 and not t["transcript"]))
                               and t["completed"] <= KEPT_COMPLETED_S for t in turns)


# --------------------------------------------------------------------------- measurements


_FINAL = re.compile(r"rapl\.core\.pipeline: (item_\w+): [\d.]+ s of audio \(\d+ chunks?\) in ([\d.]+) s")


def final_model_times(log_path: Path | None) -> dict[str, float]:
    """item id -> seconds the model took for that turn's final transcription, from the server's log line
    (``rapl.core.pipeline: item_…: X s of audio (1 chunks) in Y s``); empty when the log says nothing of it."""
    try:
        text = log_path.read_text(errors="replace") if log_path else ""
    except OSError:
        return {}
    return {m.group(1): float(m.group(2)) for m in _FINAL.finditer(text)}


def single(port: int, items: list[dict[str, Any]], passes: int, log_path: Path | None = None) -> dict[str, Any]:
    """One session at a time: per pass, per clip, one REST request of the clip (a 24 kHz WAV, json) on an idle
    server, a pause, the same clip as a live turn, a pause. Per clip: first delta after speech start,
    commit → completed against the REST request (and its Server-Timing model stage), WER of completed.transcript
    against the REST text. The final's own model time comes from the server's log (``log_path``)."""
    client = net.Client(port)
    acc: dict[str, dict[str, list[Any]]] = {c["name"]: {k: [] for k in (
        "first_delta", "completed", "rest", "rest_model", "pair_ratio", "wer", "while_speaking", "deltas",
        "items")}
        for c in items}
    texts: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    shortest = min(items, key=lambda c: c["seconds"])
    warm = Session(port)  # one untimed turn: the live path's first use (and REST's) is not measured
    client.post(shortest["body"], shortest["ctype"])
    warm.turn(shortest)
    warm.close()
    problems += warm.problems
    for _ in range(passes):
        session = Session(port)
        for clip in items:
            time.sleep(PAUSE)
            reply = client.post(clip["body"], clip["ctype"])
            if reply.status != 200:
                raise RuntimeError(f"REST {clip['name']}: HTTP {reply.status}: {reply.body[:200]!r}")
            rest_text = str((reply.json() or {}).get("text", ""))
            time.sleep(PAUSE)
            t = session.turn(clip)
            a = acc[clip["name"]]
            a["first_delta"].append(t["first_delta"])
            a["completed"].append(t["completed"])
            a["rest"].append(reply.seconds)
            a["rest_model"].append(reply.timing.get("model", NAN))
            a["pair_ratio"].append(t["completed"] / reply.seconds)
            a["while_speaking"].append(t["delta_while_speaking"])
            a["deltas"].append(t["deltas_before_commit"])
            a["items"].append(t["item"])
            a["wer"].append(wer(rest_text, t["transcript"] or "")["wer"] if rest_text.strip() else NAN)
            texts.setdefault(clip["name"], {"rest": rest_text[:200], "live": (t["transcript"] or "")[:200],
                                            "reference": clip["reference"][:200]})
        session.close()
        problems += session.problems
    client.close()
    time.sleep(0.5)  # the server's last log lines
    finals = final_model_times(log_path)
    rows = []
    for clip in items:
        a = acc[clip["name"]]
        live_model = [finals.get(i, NAN) for i in a["items"]]
        rows.append({"live_model": summary(_finite(live_model)),
                     "live_wait": summary(_finite([c - m for c, m in zip(a["completed"], live_model, strict=True)])),
                     "clip": clip["name"], "seconds": clip["seconds"], "speech_start": clip["speech_start"],
                     "first_delta": summary(_finite(a["first_delta"])), "completed": summary(_finite(a["completed"])),
                     "rest": summary(a["rest"]), "rest_model": summary(_finite(a["rest_model"])),
                     "pair_ratio": summary(_finite(a["pair_ratio"])),
                     "wer": statistics.mean(_finite(a["wer"])) if _finite(a["wer"]) else NAN,
                     "while_speaking": f"{sum(a['while_speaking'])}/{len(a['while_speaking'])}",
                     "deltas_before_commit": statistics.median(a["deltas"]) if a["deltas"] else 0,
                     "text": texts.get(clip["name"], {})})
    first = [r["first_delta"]["median"] for r in rows if r["first_delta"]["n"]]
    pairs = [r["pair_ratio"]["median"] for r in rows if r["pair_ratio"]["n"]]
    wers = [r["wer"] for r in rows if not math.isnan(r["wer"])]
    every = [x for c in items for x in zip(acc[c["name"]]["completed"], acc[c["name"]]["rest"],
                                           acc[c["name"]]["rest_model"], acc[c["name"]]["items"], strict=True)]
    return {"passes": passes, "rows": rows, "problems": problems,
            "live_wait": summary(_finite([done - finals.get(i, NAN) for done, _r, _m, i in every])),
            "rest_overhead": summary(_finite([r - m for _d, r, m, _i in every])),
            "first_delta": statistics.median(first) if first else NAN,
            "ratio": statistics.median(pairs) if pairs else NAN,
            "wer": statistics.mean(wers) if wers else NAN}


def _health(port: int) -> dict[str, Any]:
    client = net.Client(port, timeout=30)
    try:
        return client.get("/health").json() or {}
    finally:
        client.close()


def concurrent(port: int, items: list[dict[str, Any]], n: int, stagger: float = STAGGER_S) -> dict[str, Any]:
    """``n`` sessions at once, opened first, then started STAGGER_S apart; session k streams every clip at
    real-time pace, starting with clip k (rotated, so turns end at different moments), GAP_S after each
    completed. Kept live: ``kept_live`` of its turns."""
    before = _health(port)
    sessions = [Session(port) for _ in range(n)]
    results: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    errors: list[str] = []
    gate = threading.Barrier(n + 1)

    def stream(k: int) -> None:
        gate.wait()
        time.sleep(k * stagger)
        try:
            for j in range(len(items)):
                results[k].append(sessions[k].turn(items[(k + j) % len(items)]))
                time.sleep(GAP_S)
        except Exception as exc:  # noqa: BLE001 - reported
            errors.append(f"session {k}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=stream, args=(k,), daemon=True) for k in range(n)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    gate.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    for session in sessions:
        session.close()
    after = _health(port)
    turns = [t for r in results for t in r]
    kept = [kept_live(r) and not errors for r in results]
    first = _finite([t["first_delta"] for t in turns])
    done = _finite([t["completed"] for t in turns])
    problems = errors + [p for s in sessions for p in s.problems]
    return {"sessions": n, "wall": wall, "kept": sum(kept), "all_kept": all(kept), "turns": len(turns),
            "first_delta": summary(first), "completed": summary(done),
            "while_speaking": f"{sum(t['delta_while_speaking'] for t in turns)}/{len(turns)}",
            "failed": sum(t["failed"] for t in turns), "send_late_max": max((t["send_late_max"] for t in turns),
                                                                          default=NAN),
            "partials": after.get("partials", 0) - before.get("partials", 0),
            "partials_skipped": after.get("partials_skipped", 0) - before.get("partials_skipped", 0),
            "problems": problems[:20]}


def _finite(xs: list[float]) -> list[float]:
    return [float(x) for x in xs if x is not None and not math.isnan(x)]


def run(srv: net.ServerProcess, work: Path, passes: int, levels: tuple[int, ...] = LEVELS) -> dict[str, Any]:
    """The live section: ``single`` (``passes`` passes over the clips), then ``concurrent`` at each level until
    one keeps not every session live."""
    from bench import measure

    port = srv.port
    items = clips(work)
    out: dict[str, Any] = {"clips": [{k: c[k] for k in ("name", "seconds", "speech_start")} for c in items],
                           "chunk_s": CHUNK_S, "rate": RATE, "stagger_s": STAGGER_S, "gap_s": GAP_S,
                           "kept_first_delta_s": KEPT_FIRST_DELTA_S, "kept_completed_s": KEPT_COMPLETED_S}
    out["single"] = measure.quiet(lambda: single(port, items, passes, srv.log_path), "live, one session", retries=1)
    s = out["single"]
    log.info("live: first delta %.2f s after speech (median), commit -> completed / REST %.2fx, WER vs REST %.1f%%"
             "%s", s["first_delta"], s["ratio"], s["wer"] * 100,
             f"; {len(s['problems'])} protocol problems" if s["problems"] else "")
    out["levels"] = []
    out["max_kept"] = 0
    for n in levels:
        lv = measure.quiet(lambda n=n: concurrent(port, items, n), f"live, {n} sessions", retries=1)
        out["levels"].append(lv)
        log.info("live: %d sessions: %d kept live; first delta p50 %.2f / max %.2f s, completed p50 %.2f / max "
                 "%.2f s (other load %.2f)", n, lv["kept"], lv["first_delta"]["median"], lv["first_delta"]["max"],
                 lv["completed"]["median"], lv["completed"]["max"], lv["other_load"])
        if not lv["all_kept"]:
            break
        out["max_kept"] = n
        time.sleep(1.0)
    return out
