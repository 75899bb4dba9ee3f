"""Who spoke when: one speaker label per transcript segment, on any backend.

A speaker encoder (rapl.encoders, chosen by the ``SPEAKER_MODEL`` setting) turns a stretch of
16 kHz speech into a unit vector (a voice "embedding"); two stretches by one voice give vectors
pointing the same way. A :class:`Diarizer` owns one encoder and labels a transcript's segments:

1. Each segment's speech (inside ``speech_spans`` where those are known) is embedded.
2. Segments with at least :data:`MIN_EMBED_SECONDS` of speech are grouped by agglomerative
   clustering (average linkage, cosine similarity): two groups join while their voices are
   more alike than the encoder's ``same_speaker`` threshold, so the number of speakers is
   found, not asked for (``num_speakers`` fixes it instead).
3. Shorter segments ("Yes.", "OK") give unreliable embeddings on their own (measured in
   rapl.encoders), so they are embedded with the audio around them, widened to
   :data:`MIN_EMBED_SECONDS`, and take the label of the closest group; they never start a
   group of their own unless every segment is short.
4. Groups whose voice matches a known speaker's reference clip (``known_speaker``
   threshold) carry that name; the others get letters ``A``, ``B``, ... in order of first
   appearance.

Out of scope: a change of speaker *inside* one segment (the segment gets the voice that
dominates it; backends that split at pauses make this rare), and overlapping speech.

The thresholds, and the 2 s floor for clustering, were measured on real voices: see rapl.encoders.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from .encoders import SpeakerEncoder, create_encoder, unit_vector
from .recording import SAMPLE_RATE
from .settings import Settings
from .transcription import Segment

log = logging.getLogger(__name__)

MIN_EMBED_SECONDS = 2.0  # less speech than this: the segment joins the closest group, never starts one
MAX_KNOWN = 4  # known speakers per request
MIN_REFERENCE_SECONDS = 2.0  # a known speaker's reference clip
MAX_REFERENCE_SECONDS = 10.0


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

    def assign(self, audio: np.ndarray, segments: Sequence[Segment],
               speech_spans: Sequence[tuple[float, float]] | None = None,
               known: Mapping[str, np.ndarray] | None = None, num_speakers: int | None = None) -> list[str]:
        """One speaker label per segment, in the segments' order.

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
        started = time.perf_counter()
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        spans = sorted(speech_spans) if speech_spans is not None else None
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
            log.info("speaker labels: no voice found in %d segments", len(segments))
            return ["A"] * len(segments)
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
        names = self._names(centroids, references)
        labels = self._labels(cluster, names, set(references))
        log.info("speaker labels: %d segments, %d voices (%s) in %.2f s", len(segments), len(centroids),
                 ", ".join(sorted(set(labels))), time.perf_counter() - started)
        return labels

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
