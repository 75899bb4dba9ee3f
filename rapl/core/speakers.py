"""Who spoke when: one speaker label per transcript segment, on any backend.

A speaker encoder (rapl.core.encoders, chosen by the ``SPEAKER_MODEL`` setting) turns a stretch of
16 kHz speech into a unit vector (a voice "embedding"); two stretches by one voice give vectors
pointing the same way. A :class:`Diarizer` owns one encoder and labels a transcript's segments:

1. Each segment's speech (inside ``speech_spans`` where those are known) is embedded.
2. Segments with at least :data:`MIN_EMBED_SECONDS` of speech are grouped by agglomerative
   clustering (average linkage, cosine similarity): two groups join while their voices are
   more alike than the encoder's ``same_speaker`` threshold, so the number of speakers is
   found, not asked for (``num_speakers`` fixes it instead).
3. Shorter segments ("Yes.", "OK") give unreliable embeddings on their own (measured in
   rapl.core.encoders), so they are embedded with the audio around them, widened to
   :data:`MIN_EMBED_SECONDS`, and take the label of the closest group; they never start a
   group of their own unless every segment is short.
4. Groups whose voice matches a known speaker's reference clip (``known_speaker``
   threshold) carry that name; the others get letters ``A``, ``B``, ... in order of first
   appearance.

A change of speaker inside one segment (SenseVoice and most MLX models give one segment per
stretch of speech, and turns after a short pause share a stretch) is found from the audio,
not from the model's segments (:meth:`Diarizer.split`, what diarized_json uses): windows of
1.6 s every :data:`TURN_HOP` s of the speech are embedded and clustered into voices; each
moment goes to the voice its windows score highest, runs under :data:`MIN_TURN` are
smoothed away, and a segment that spans a turn is cut there (between words where the
backend timed them, else where the time falls in its text); the pieces are then labelled as
above. Measured with ``python -m bench.meetings`` (README, "Speaker labels").

Out of scope: overlapping speech.

The thresholds, and the 2 s floor for clustering, were measured on real voices: see rapl.core.encoders.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from ..audio.recording import SAMPLE_RATE
from ..settings import Settings
from ..transcript.transcription import Segment, cut_at
from .encoders import WINDOW, SpeakerEncoder, create_encoder, unit_vector, windows

log = logging.getLogger(__name__)

MIN_EMBED_SECONDS = 2.0  # less speech than this: the segment joins the closest group, never starts one
MAX_KNOWN = 4  # known speakers per request
MIN_REFERENCE_SECONDS = 2.0  # a known speaker's reference clip
MAX_REFERENCE_SECONDS = 10.0
TURN_HOP = 0.25  # seconds between the window embeddings that find turns inside segments
FRAME = 0.05  # seconds: the resolution of who-speaks-when
MIN_TURN = 1.0  # seconds: a shorter run of one voice inside a stretch of speech is not a turn of its own
MAX_WINDOWS = 1500  # windows clustered at most (evenly spread over the speech): bounds time and memory
SNAP = 0.4  # seconds: how far a turn may move to the quietest moment near it
MIN_SPAN = 0.5  # seconds: a stretch of speech shorter than this gets no say of its own in the turns


class SpeakerError(ValueError):
    """Invalid speaker input (known speakers, reference clips, num_speakers); safe to show the client."""



def letters() -> Iterator[str]:
    """Speaker letters: A ... Z, then AA, AB, ... (as spreadsheet columns)."""
    width = 1
    while True:
        for n in range(26**width):
            label = ""
            for _ in range(width):
                n, digit = divmod(n, 26)
                label = chr(ord("A") + digit) + label
            yield label
        width += 1


class Diarizer:
    """Labels the segments of one transcript by voice; owns (and lazily loads) a speaker encoder."""

    def __init__(self, encoder: SpeakerEncoder, same_speaker: float | None = None,
                 known_speaker: float | None = None) -> None:
        self.encoder = encoder
        self.same_speaker = encoder.same_speaker if same_speaker is None else same_speaker
        self.known_speaker = encoder.known_speaker if known_speaker is None else known_speaker

    @classmethod
    def from_settings(cls, settings: Settings) -> Diarizer:
        """The diarizer SPEAKER_MODEL names, on DEVICE; its model loads on first use (or :meth:`load`)."""
        return cls(create_encoder(settings.SPEAKER_MODEL, settings.DEVICE))

    def load(self) -> None:
        """Load the encoder now, e.g. at start-up in the background (else the first :meth:`assign` does)."""
        self.encoder.load()

    def split(self, audio: np.ndarray, segments: Sequence[Segment],
              speech_spans: Sequence[tuple[float, float]] | None = None,
              known: Mapping[str, np.ndarray] | None = None,
              num_speakers: int | None = None) -> tuple[list[Segment], list[str]]:
        """The segments cut where the speaker changes inside one, and one label per resulting segment.

        Who speaks when comes from the audio, not from the model's segments (:meth:`turns`); a
        segment that spans a turn is cut there (:func:`rapl.transcript.transcription.cut_at`: between words where the
        backend timed them), and the pieces, each now one voice, are labelled as
        :meth:`assign` does. Arguments as :meth:`assign`.
        """
        references = self._check(known or {}, num_speakers)
        if not segments:
            return [], []
        started = time.perf_counter()
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        spans = sorted(speech_spans) if speech_spans is not None else None
        timeline = self.turns(audio, spans or [(s.start, s.end) for s in segments], num_speakers)
        pieces = [piece for segment in segments for piece in cut_at(segment, timeline)]
        labels = self._assign(audio, pieces, spans, references, num_speakers)
        log.info("speaker turns: %d segments became %d in %.2f s", len(segments), len(pieces),
                 time.perf_counter() - started)
        return pieces, labels

    def turns(self, audio: np.ndarray, spans: Sequence[tuple[float, float]],
              num_speakers: int | None = None) -> list[tuple[float, float, int]]:
        """Who speaks when: (start, end, voice) runs over the speech ``spans`` (seconds); [] for one voice.

        Windows of :data:`rapl.core.encoders.WINDOW` s every :data:`TURN_HOP` s of each span are
        embedded and clustered as segments are (:meth:`_cluster`; at most :data:`MAX_WINDOWS`
        of them, evenly spread); a voice heard for less than :data:`MIN_TURN` s of windows is
        noise and dropped. Each :data:`FRAME` of a span then goes to the voice its covering
        windows score highest on average, and runs shorter than :data:`MIN_TURN` join the
        neighbour that fits them better. Spans shorter than :data:`MIN_SPAN` are left out.
        """
        total = len(audio) / SAMPLE_RATE
        found = []
        for start, end in spans:
            start, end = max(start, 0.0), min(end, total)
            if end - start >= MIN_SPAN:
                starts, vectors = windows(self.encoder, audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)],
                                          TURN_HOP)
                found.append((start, end, starts, vectors))
        if not found:
            return []
        every = np.concatenate([v for *_, v in found])
        every = every[np.linalg.norm(every, axis=1) > 0.5]
        stride = max(1, int(np.ceil(len(every) / MAX_WINDOWS)))
        chosen = every[::stride]
        if len(chosen) < 2:
            return []
        groups = self._cluster(chosen, num_speakers)
        heard = np.bincount(groups) * TURN_HOP * stride
        centroids = np.stack([unit_vector(chosen[groups == g].mean(axis=0))
                              for g in range(len(heard)) if heard[g] >= MIN_TURN] or [np.zeros(chosen.shape[1])])
        if len(centroids) < 2:
            return []
        timeline: list[tuple[float, float, int]] = []
        for start, end, starts, vectors in found:
            frames = max(int(round((end - start) / FRAME)), 1)
            votes, counts = np.zeros((frames, len(centroids))), np.zeros(frames)
            for at, score in zip(starts, vectors @ centroids.T, strict=True):
                a, b = int(at / FRAME), min(int(np.ceil((at + WINDOW) / FRAME)), frames)
                votes[a:b] += score
                counts[a:b] += 1
            votes[counts > 0] /= counts[counts > 0, None]
            runs = _smoothed(_runs(votes.argmax(axis=1)), votes, int(round(MIN_TURN / FRAME)))
            piece = audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)]
            for a, b, voice in _at_quiet(runs, piece):
                timeline.append((start + a * FRAME, min(start + b * FRAME, end), voice))
        return timeline

    def assign(self, audio: np.ndarray, segments: Sequence[Segment],
               speech_spans: Sequence[tuple[float, float]] | None = None,
               known: Mapping[str, np.ndarray] | None = None, num_speakers: int | None = None) -> list[str]:
        """One speaker label per segment, in the segments' order (a segment is taken to be one voice).

        ``audio``: the whole 16 kHz recording the segments' times refer to. ``speech_spans``:
        where voice-activity detection heard speech, in seconds (silence inside a segment is
        then left out of its embedding). ``known``: up to :data:`MAX_KNOWN` names, each with
        a 2 to 10 s reference clip of that voice; groups that match one carry its name.
        ``num_speakers``: how many voices there are, if the caller knows (else found).
        Raises SpeakerError for invalid ``known`` or ``num_speakers``.
        """
        references = self._check(known or {}, num_speakers)
        if not segments:
            return []
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        spans = sorted(speech_spans) if speech_spans is not None else None
        return self._assign(audio, segments, spans, references, num_speakers)

    def _assign(self, audio: np.ndarray, segments: Sequence[Segment], spans: list[tuple[float, float]] | None,
                references: dict[str, np.ndarray], num_speakers: int | None) -> list[str]:
        started = time.perf_counter()
        grouped = self._grouped(audio, segments, spans, num_speakers)
        if grouped is None:
            log.info("speaker labels: no voice found in %d segments", len(segments))
            return ["A"] * len(segments)
        cluster, centroids = grouped
        names = self._names(centroids, references)
        labels = self._labels(cluster, names, set(references))
        log.info("speaker labels: %d segments, %d voices (%s) in %.2f s", len(segments), len(centroids),
                 ", ".join(sorted(set(labels))), time.perf_counter() - started)
        return labels

    def _grouped(self, audio: np.ndarray, segments: Sequence[Segment], spans: list[tuple[float, float]] | None,
                 num_speakers: int | None) -> tuple[np.ndarray, np.ndarray] | None:
        """A voice number per segment and each voice's centroid; None when no segment has a voice."""
        embeddings, weights, long = [], [], []
        for segment in segments:
            speech = self._speech(audio, segment, spans)
            seconds = len(speech) / SAMPLE_RATE
            if seconds < MIN_EMBED_SECONDS:
                speech = self._widened(audio, segment)
            embeddings.append(self.encoder.embed(speech))
            weights.append(max(seconds, 0.1))
            long.append(seconds >= MIN_EMBED_SECONDS)
        vectors = np.stack(embeddings)
        usable = np.linalg.norm(vectors, axis=1) > 0.5  # all zeros: no voice in it
        core = [i for i in range(len(segments)) if usable[i] and long[i]]
        core = core or [i for i in range(len(segments)) if usable[i]]  # only short segments: cluster those
        if not core:
            return None
        groups = self._cluster(vectors[core], num_speakers)
        cluster = np.full(len(segments), -1)
        cluster[core] = groups
        centroids = np.stack([unit_vector(np.average(vectors[core][groups == g], axis=0,
                                               weights=np.asarray(weights)[core][groups == g]))
                              for g in range(groups.max() + 1)])
        for i in range(len(segments)):
            if cluster[i] < 0 and usable[i]:
                cluster[i] = int(np.argmax(centroids @ vectors[i]))
        for i in range(len(segments)):  # no voice at all: the nearest segment in time that has one
            if cluster[i] < 0:
                nearest = min(np.flatnonzero(cluster >= 0), key=lambda j: abs(j - i))
                cluster[i] = cluster[nearest]
        return cluster, centroids

    def _check(self, known: Mapping[str, np.ndarray], num_speakers: int | None) -> dict[str, np.ndarray]:
        """Validate the known speakers and embed their reference clips."""
        if num_speakers is not None and num_speakers < 1:
            raise SpeakerError(f"num_speakers must be 1 or more, not {num_speakers}")
        if len(known) > MAX_KNOWN:
            raise SpeakerError(f"at most {MAX_KNOWN} known speakers, not {len(known)}")
        references: dict[str, np.ndarray] = {}
        for name, clip in known.items():
            if not name.strip():
                raise SpeakerError("a known speaker needs a name")
            seconds = len(clip) / SAMPLE_RATE
            if not MIN_REFERENCE_SECONDS <= seconds <= MAX_REFERENCE_SECONDS:
                raise SpeakerError(f"the reference clip of known speaker {name!r} is {seconds:.1f} s long: give "
                                   f"{MIN_REFERENCE_SECONDS:g} to {MAX_REFERENCE_SECONDS:g} s of their voice")
            vector = self.encoder.embed(np.asarray(clip, dtype=np.float32))
            if not np.any(vector):
                raise SpeakerError(f"the reference clip of known speaker {name!r} has no voice in it")
            references[name.strip()] = vector
        return references

    @staticmethod
    def _speech(audio: np.ndarray, segment: Segment, spans: list[tuple[float, float]] | None) -> np.ndarray:
        """The segment's audio, without what voice-activity detection called silence (if it heard any speech)."""
        start, end = max(segment.start, 0.0), min(segment.end, len(audio) / SAMPLE_RATE)
        whole = audio[int(start * SAMPLE_RATE):max(int(end * SAMPLE_RATE), int(start * SAMPLE_RATE))]
        if spans is None:
            return whole
        pieces = [audio[int(max(s, start) * SAMPLE_RATE):int(min(e, end) * SAMPLE_RATE)]
                  for s, e in spans if e > start and s < end]
        pieces = [p for p in pieces if len(p)]
        return np.concatenate(pieces) if pieces else whole

    @staticmethod
    def _widened(audio: np.ndarray, segment: Segment) -> np.ndarray:
        """MIN_EMBED_SECONDS of audio centred on a short segment (less if the recording is shorter)."""
        total = len(audio) / SAMPLE_RATE
        middle = (segment.start + segment.end) / 2
        start = min(max(middle - MIN_EMBED_SECONDS / 2, 0.0), max(total - MIN_EMBED_SECONDS, 0.0))
        return audio[int(start * SAMPLE_RATE):int((start + MIN_EMBED_SECONDS) * SAMPLE_RATE)]

    def _cluster(self, vectors: np.ndarray, num_speakers: int | None) -> np.ndarray:
        """Group numbers 0..k-1 for ``vectors``: agglomerative, average linkage on cosine distance."""
        if len(vectors) == 1:
            return np.zeros(1, dtype=int)
        from scipy.cluster.hierarchy import fcluster, linkage

        tree = linkage(vectors.astype(np.float64), method="average", metric="cosine")
        if num_speakers is not None:
            raw = fcluster(tree, t=num_speakers, criterion="maxclust")
        else:
            raw = fcluster(tree, t=1.0 - self.same_speaker, criterion="distance")
        _, groups = np.unique(raw, return_inverse=True)
        return groups.reshape(-1)

    def _names(self, centroids: np.ndarray, references: dict[str, np.ndarray]) -> dict[int, str]:
        """Group -> known speaker's name, for each group whose voice is close enough to a reference."""
        names: dict[int, str] = {}
        if not references:
            return names
        people = list(references)
        scores = centroids @ np.stack([references[p] for p in people]).T
        for group, row in enumerate(scores):
            best = int(np.argmax(row))
            log.debug("speaker group %d: similarity to known speakers %s", group,
                      {p: round(float(s), 3) for p, s in zip(people, row, strict=True)})
            if row[best] >= self.known_speaker:
                names[group] = people[best]
        return names

    @staticmethod
    def _labels(cluster: np.ndarray, names: dict[int, str], taken: set[str]) -> list[str]:
        """Names for named groups; letters (skipping taken names) for the rest, in order of first appearance."""
        fresh = (letter for letter in letters() if letter not in taken)
        label_of = dict(names)
        labels = []
        for group in cluster.tolist():
            if group not in label_of:
                label_of[group] = next(fresh)
            labels.append(label_of[group])
        return labels


def _runs(voices: np.ndarray) -> list[tuple[int, int, int]]:
    """(first frame, end frame, voice) for each run of one voice."""
    edges = [0, *(np.flatnonzero(np.diff(voices)) + 1).tolist(), len(voices)]
    return [(a, b, int(voices[a])) for a, b in zip(edges, edges[1:], strict=False) if b > a]


def _smoothed(runs: list[tuple[int, int, int]], votes: np.ndarray, shortest: int) -> list[tuple[int, int, int]]:
    """``runs`` with each one shorter than ``shortest`` frames given to the neighbour its frames score higher."""
    runs = list(runs)
    while len(runs) > 1:
        short = min(range(len(runs)), key=lambda i: runs[i][1] - runs[i][0])
        a, b, _ = runs[short]
        if b - a >= shortest:
            break
        sides = [i for i in (short - 1, short + 1) if 0 <= i < len(runs)]
        best = max(sides, key=lambda i: votes[a:b, runs[i][2]].mean())
        voice = runs[best][2]
        runs[short] = (a, b, voice)
        merged: list[tuple[int, int, int]] = []
        for run in runs:  # join neighbours that now have one voice
            if merged and merged[-1][2] == run[2]:
                merged[-1] = (merged[-1][0], run[1], run[2])
            else:
                merged.append(run)
        runs = merged
    return runs


def _at_quiet(runs: list[tuple[int, int, int]], audio: np.ndarray) -> list[tuple[int, int, int]]:
    """``runs`` with each turn moved to the quietest :data:`FRAME` within :data:`SNAP` s of it: the windows
    blur a turn over their length, and people mostly take a breath between turns."""
    if len(runs) < 2:
        return runs
    size = int(FRAME * SAMPLE_RATE)
    frames = len(audio) // size
    loudness = np.sqrt(np.mean(np.square(audio[:frames * size].reshape(frames, size)), axis=1)) if frames else []
    reach = int(round(SNAP / FRAME))
    edges = [runs[0][0]]
    for (_, turn, _), (_, limit, _) in zip(runs, runs[1:], strict=False):
        low, high = max(edges[-1] + 1, turn - reach), min(limit - 1, turn + reach, frames - 1)
        edges.append(low + int(np.argmin(loudness[low:high + 1])) if high >= low else turn)
    edges.append(runs[-1][1])
    return [(edges[i], edges[i + 1], voice) for i, (_, _, voice) in enumerate(runs)]
