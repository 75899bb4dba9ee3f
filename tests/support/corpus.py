"""A long-form corpus for the transcript tests and `python -m bench.longform`: recordings of 1 to 5 minutes in
English and German, with the truth of what is said where, and how to score a transcript against it.

Each recording is sentences one after another with pauses of 0.15 to 2.5 s: English from
several espeak-ng voices and JFK's real speech (../shared/audio/en_jfk.flac), German from
espeak-ng's German voices, in blocks of a few sentences per language, as a meeting that
switches language does. (espeak-ng's Mandarin, French and Spanish are not understood by
Whisper base at all, its German is; the real Mandarin clip is in tests/core/test_longform.py.)
Sentences hold no numbers, so a transcript is never wrong for writing "7" for "seven".
"""

from __future__ import annotations

import re
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 16000
PAUSES = (0.15, 0.3, 0.5, 0.8, 1.2, 2.0, 2.5)
ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "Please remember to water the plants on Tuesday morning.",
    "She sells fresh bread at the market every weekend.",
    "The museum opens its new gallery next spring.",
    "Turn left at the bakery and walk two blocks north.",
    "We moved the launch to March because the tests are not finished yet.",
    "Could you send me the report before Friday, so that I can read it over the weekend?",
    "The new office opens in April, and the team from the north building will move there first.",
    "I talked to the suppliers this morning and they promised the parts by the end of next week.",
    "Our customers asked for a darker colour and a smaller box.",
    "The library will stay open late during the exams.",
    "My brother bought a small boat and sails it every summer.",
    "The weather was cold and windy, so we stayed inside and played cards.",
    "After lunch the children walked down to the river to feed the ducks.",
    "Nobody expected the old bridge to be repaired so quickly.",
    "He forgot his umbrella on the train again.",
]
GERMAN = [
    "Morgen fahren wir mit dem Zug nach Berlin, um unsere Freunde zu besuchen.",
    "Das Wetter ist heute sehr schön, deshalb gehen wir im Park spazieren.",
    "Meine Schwester arbeitet in einem großen Krankenhaus in der Stadt.",
    "Wir müssen den Bericht bis Freitag fertig schreiben.",
    "Der Bäcker an der Ecke verkauft das beste Brot im ganzen Viertel.",
    "Im Sommer fahren viele Familien an die Küste.",
    "Kannst du mir bitte sagen, wo der Bahnhof ist?",
    "Die Besprechung beginnt nach der Mittagspause im großen Saal.",
    "Unser Nachbar hat einen neuen Hund, der jeden Morgen bellt.",
    "Das Museum zeigt im Frühling eine neue Ausstellung.",
    "Ich habe meinen Schlüssel im Büro vergessen.",
    "Die Kinder spielen nach der Schule gern Fußball.",
]
EN_VOICES = (["-v", "en-us"], ["-v", "en-gb"], ["-v", "en-us+f3"], ["-v", "en+m3"])
DE_VOICES = (["-v", "de"], ["-v", "de+f2"])
JFK_TEXT = ("And so, my fellow Americans, ask not what your country can do for you, "
            "ask what you can do for your country.")


@dataclass(frozen=True)
class Sentence:
    """One sentence of a recording: its language, words, and where its voice is, in seconds."""

    language: str
    text: str
    start: float
    end: float


def _espeak(text: str, voice: list[str], work: Path) -> np.ndarray:
    from rapl import audio

    path = work / f"{'_'.join(voice)}-{zlib.crc32(text.encode()):08x}.wav"
    if not path.exists():
        subprocess.run(["espeak-ng", *voice, "-s", "165", "-w", str(path), text], check=True, timeout=60)
    return _trimmed(audio.decode(path.read_bytes()))


def _trimmed(pcm: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(pcm) > 0.01)
    return pcm[loud[0]:loud[-1] + 1] if len(loud) else pcm[:0]


def recording(minutes: float, seed: int, shared_audio: Path, work: Path,
              german: bool = True) -> tuple[np.ndarray, list[Sentence]]:
    """About ``minutes`` of English and German in blocks of 2 to 5 sentences (JFK once in three blocks);
    English only when not ``german``."""
    from rapl import audio

    rng = np.random.default_rng(seed)
    jfk = _trimmed(audio.decode((shared_audio / "en_jfk.flac").read_bytes()))
    pieces, truth, at = [np.zeros(RATE // 2, dtype=np.float32)], [], RATE // 2
    language, block, n = "en", 0, 0
    while at < minutes * 60 * RATE:
        for _ in range(int(rng.integers(2, 6))):
            if language == "en" and block % 3 == 0 and n % 5 == 0:
                pcm, text = jfk, JFK_TEXT
            elif language == "en":
                text = ENGLISH[int(rng.integers(len(ENGLISH)))]
                pcm = _espeak(text, EN_VOICES[int(rng.integers(len(EN_VOICES)))], work)
            else:
                text = GERMAN[int(rng.integers(len(GERMAN)))]
                pcm = _espeak(text, DE_VOICES[int(rng.integers(len(DE_VOICES)))], work)
            truth.append(Sentence(language, text, at / RATE, (at + len(pcm)) / RATE))
            pieces.append(pcm)
            at += len(pcm)
            gap = int(float(rng.choice(PAUSES)) * RATE)
            pieces.append(np.zeros(gap, dtype=np.float32))
            at += gap
            n += 1
        language, block = ("de" if language == "en" and german else "en"), block + 1
    return np.concatenate(pieces), truth


def words(text: str) -> list[str]:
    """Lower-case words without punctuation (umlauts and ß kept)."""
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


@dataclass(frozen=True)
class Score:
    """How a transcript of one recording fares against its truth."""

    wer: float  # word error rate over the whole recording
    lost: int  # sentences of which fewer than half the words are heard in their time (±1 s)
    mistimed: int  # segments that start or end more than 0.5 s away from where the speech is
    segments: int


def score(truth: list[Sentence], segments: list[tuple[float, float, str]]) -> Score:
    """Score ``segments`` ((start, end, text), in order) against ``truth``."""
    import jiwer

    reference = " ".join(" ".join(words(s.text)) for s in truth)
    hypothesis = " ".join(" ".join(words(text)) for _, _, text in segments)
    wer = jiwer.wer(reference, hypothesis) if hypothesis else 1.0
    lost = 0
    for sentence in truth:
        heard = [w for a, b, text in segments if a < sentence.end + 1.0 and b > sentence.start - 1.0
                 for w in words(text)]
        said = words(sentence.text)
        found = sum(1 for w in set(said) if w in heard)
        lost += found < len(set(said)) / 2
    mistimed = 0
    for start, end, _ in segments:
        inside = [s for s in truth if s.start < end and s.end > start]
        if not inside or start < inside[0].start - 0.5 or end > inside[-1].end + 0.5:
            mistimed += 1
    return Score(wer, lost, mistimed, len(segments))
