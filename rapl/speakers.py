"""Who spoke when: one speaker label per transcript segment, on any backend.

A :class:`SpeakerEncoder` turns a stretch of 16 kHz speech into a unit vector (a voice
"embedding"); two stretches by one voice give vectors pointing the same way. The encoder is
chosen by the ``SPEAKER_MODEL`` setting (:data:`ENCODERS`) and imports its library on first
use only. A :class:`Diarizer` owns one encoder and labels a transcript's segments:

1. Each segment's speech (inside ``speech_spans`` where those are known) is embedded.
2. Segments with at least :data:`MIN_EMBED_SECONDS` of speech are grouped by agglomerative
   clustering (average linkage, cosine similarity): two groups join while their voices are
   more alike than the encoder's ``same_speaker`` threshold, so the number of speakers is
   found, not asked for (``num_speakers`` fixes it instead).
3. Shorter segments ("Yes.", "OK") give unreliable embeddings on their own (measured below),
   so they are embedded with the audio around them, widened to :data:`MIN_EMBED_SECONDS`,
   and take the label of the closest group; they never start a group of their own unless
   every segment is short.
4. Groups whose voice matches a known speaker's reference clip (``known_speaker``
   threshold) carry that name; the others get letters ``A``, ``B``, ... in order of first
   appearance.

Out of scope: a change of speaker *inside* one segment (the segment gets the voice that
dominates it; backends that split at pauses make this rare), and overlapping speech.

Thresholds, measured with resemblyzer on this project's real clips (``../shared/audio``):
the two halves of en_jfk.flac are 0.82 alike, JFK and the Mandarin speaker of
zh_sample.wav 0.47. Over every pair of 2.5 s windows (0.5 s apart), one voice scores 0.52 to
1.00 (mean 0.77), the two voices 0.26 to 0.46 (mean 0.37); average linkage compares such means,
and 0.60 lies between them. 1 s windows overlap (one voice down to 0.52, two voices up to
0.81), hence the 2 s floor for clustering. A 5 s reference of JFK scores 0.71 to 0.84 against
2.5 s windows of his other words, the Mandarin speaker 0.38 to 0.48: names need 0.65.
Synthetic voices differ less: espeak-ng en-us scores 0.72 against en-us+f3, 0.94 against en-gb.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .audio import SAMPLE_RATE
from .settings import Settings, SettingsError
from .transcription import Segment

log = logging.getLogger(__name__)

MIN_EMBED_SECONDS = 2.0  # less speech than this: the segment joins the closest group, never starts one
MAX_KNOWN = 4  # known speakers per request
MIN_REFERENCE_SECONDS = 2.0  # a known speaker's reference clip
MAX_REFERENCE_SECONDS = 10.0
CAMPPLUS_MODEL = "iic/speech_campplus_sv_zh-cn_16k-common"
PYANNOTE_MODEL = "pyannote/wespeaker-voxceleb-resnet34-LM"


class SpeakerModelError(SettingsError):
    """The SPEAKER_MODEL cannot be used (package missing, model not found); says how to fix it."""


class SpeakerError(ValueError):
    """Invalid speaker input (known speakers, reference clips, num_speakers); safe to show the client."""


class SpeakerEncoder(Protocol):
    """A voice embedding model: audio in, unit vector out."""

    name: str  # the SPEAKER_MODEL value
    same_speaker: float  # cosine similarity at or above which two groups of segments are one voice
    known_speaker: float  # similarity at or above which a group matches a known speaker's reference

    def load(self) -> None:
        """Load the model now (otherwise the first :meth:`embed` does)."""

    def embed(self, audio_16k: np.ndarray) -> np.ndarray:
        """The unit-length embedding of 16 kHz mono float32 speech (all zeros if there is no voice)."""


def _unit(vector: Any) -> np.ndarray:
    """``vector`` as a flat float32 unit vector; all zeros when it has no direction."""
    flat = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(flat))
    if not np.isfinite(norm) or norm < 1e-8:
        return np.zeros_like(flat)
    return flat / norm


def _pick_device(device: str) -> str:
    """DEVICE=auto -> cuda when torch sees a GPU, else cpu; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _LazyEncoder:
    """Shared plumbing: the missing-package message, and loading once, on first use, under a lock."""

    name = ""
    modules: tuple[str, ...] = ()  # what must be importable
    install = ""  # the command that installs it
    same_speaker = 0.6
    known_speaker = 0.65

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._lock = threading.Lock()
        self._loaded = False

    @classmethod
    def check(cls) -> None:
        """Raise SpeakerModelError if a package this encoder needs is not installed (imports nothing)."""
        for module in cls.modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise SpeakerModelError(cls._missing(module))

    @classmethod
    def _missing(cls, module: str, exc: BaseException | None = None) -> str:
        why = f" ({exc})" if exc else ""
        return (f"SPEAKER_MODEL={cls.name} needs the Python package {module!r}, which is not installed{why}: "
                f"{cls.install}, or choose another SPEAKER_MODEL ({', '.join(ENCODERS)})")

    def _import(self, module: str) -> Any:
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            raise SpeakerModelError(self._missing(module, exc)) from exc

    def load(self) -> None:
        """Load the model now (otherwise the first :meth:`embed` does); safe to call again."""
        with self._lock:
            if not self._loaded:
                started = time.perf_counter()
                self._load()
                self._loaded = True
                log.info("speaker encoder %s loaded on %s in %.2f s", self.name, self.device,
                         time.perf_counter() - started)

    def embed(self, audio_16k: np.ndarray) -> np.ndarray:
        """The unit-length embedding of 16 kHz mono float32 speech (all zeros if there is no voice)."""
        if not self._loaded:
            self.load()
        audio_16k = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
        if audio_16k.size < SAMPLE_RATE // 10 or not np.any(audio_16k):
            return np.zeros(self._size(), dtype=np.float32)
        return _unit(self._embed(audio_16k))

    def _load(self) -> None:
        raise NotImplementedError

    def _embed(self, audio_16k: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _size(self) -> int:
        raise NotImplementedError


class ResemblyzerEncoder(_LazyEncoder):
    """Resemblyzer's GE2E voice encoder (256 values); its weights ship inside the PyPI package.

    Embeddings are non-negative, so different voices still score about 0.3 to 0.5.
    """

    name = "resemblyzer"
    modules = ("resemblyzer", "webrtcvad", "librosa")
    install = "pip install webrtcvad-wheels && pip install --no-deps resemblyzer"
    same_speaker = 0.60  # 2.5 s windows: one voice 0.77 on average, two voices 0.37 (module docstring)
    known_speaker = 0.65  # 5 s reference vs 2.5 s of the same voice: 0.71 and up; of another: 0.48 at most

    def _load(self) -> None:
        resemblyzer = self._import("resemblyzer")
        self._preprocess = resemblyzer.preprocess_wav
        self._model = resemblyzer.VoiceEncoder(_pick_device(self.device), verbose=False)
        # The first spectrogram compiles librosa's kernels (seconds): pay that here, not in a request.
        self._model.embed_utterance(np.random.default_rng(0).normal(0, 0.01, SAMPLE_RATE).astype(np.float32))

    def _embed(self, audio_16k: np.ndarray) -> np.ndarray:
        # Volume normalised and long silences cut, as the encoder was trained; keep the raw
        # audio if trimming leaves too little to embed.
        prepared = self._preprocess(audio_16k)
        if len(prepared) < SAMPLE_RATE // 2:
            prepared = audio_16k
        return self._model.embed_utterance(prepared)

    def _size(self) -> int:
        return 256


class CampPlusEncoder(_LazyEncoder):
    """FunASR's CAM++ speaker-verification model (192 values) from ModelScope.

    Taken from a local directory or the ModelScope cache without network; downloaded
    only when it is in neither (and the network is there). Thresholds are the usual
    cosine scale of CAM++ (different voices near 0), not measured here.
    """

    name = "campplus"
    modules = ("funasr", "modelscope")
    install = "pip install funasr modelscope"
    same_speaker = 0.50
    known_speaker = 0.55

    def __init__(self, device: str = "cpu", model: str = CAMPPLUS_MODEL) -> None:
        super().__init__(device)
        self.model = model

    def _load(self) -> None:
        funasr = self._import("funasr")
        self._import("modelscope")
        path = self._resolve()
        self._device = _pick_device(self.device)
        self._auto = funasr.AutoModel(model=path, device=self._device, disable_update=True, disable_pbar=True,
                                      disable_log=True)

    def _resolve(self) -> str:
        local = Path(self.model).expanduser()
        if local.is_dir():
            return str(local)
        from modelscope.hub.snapshot_download import snapshot_download

        try:
            return str(snapshot_download(self.model, local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means "not in the cache"
            pass
        log.info("downloading the speaker model %s from ModelScope", self.model)
        try:
            return str(snapshot_download(self.model))
        except Exception as exc:  # noqa: BLE001 - the hub's errors have no common base
            raise SpeakerModelError(f"SPEAKER_MODEL=campplus: {self.model} is not in the ModelScope cache and could "
                                    f"not be downloaded ({exc}); connect once to download it, or choose another "
                                    f"SPEAKER_MODEL ({', '.join(ENCODERS)})") from exc

    def _embed(self, audio_16k: np.ndarray) -> np.ndarray:
        result = self._auto.generate(input=audio_16k)
        vector = result[0]["spk_embedding"]
        return vector.detach().cpu().numpy() if hasattr(vector, "detach") else np.asarray(vector)

    def _size(self) -> int:
        return 192


class PyannoteEncoder(_LazyEncoder):
    """pyannote.audio's WeSpeaker ResNet34 embedding (256 values), from the Hugging Face hub or its cache.

    Thresholds follow pyannote/speaker-diarization-3.1 (it joins clusters closer than cosine
    distance 0.70), not measured here.
    """

    name = "pyannote"
    modules = ("pyannote.audio",)
    install = "pip install pyannote.audio"
    same_speaker = 0.30
    known_speaker = 0.40

    def __init__(self, device: str = "cpu", model: str = PYANNOTE_MODEL) -> None:
        super().__init__(device)
        self.model = model

    def _load(self) -> None:
        audio = self._import("pyannote.audio")
        import torch

        checkpoint = self._resolve()
        model = audio.Model.from_pretrained(checkpoint)
        self._torch = torch
        self._inference = audio.Inference(model, window="whole", device=torch.device(_pick_device(self.device)))

    def _resolve(self) -> str:
        local = Path(self.model).expanduser()
        if local.exists():
            return str(local / "pytorch_model.bin" if local.is_dir() else local)
        from huggingface_hub import snapshot_download

        try:
            return str(Path(snapshot_download(self.model, local_files_only=True)) / "pytorch_model.bin")
        except Exception:  # noqa: BLE001 - any failure means "not in the cache"
            pass
        log.info("downloading the speaker model %s from Hugging Face", self.model)
        try:
            return str(Path(snapshot_download(self.model)) / "pytorch_model.bin")
        except Exception as exc:  # noqa: BLE001 - the hub's errors have no common base
            raise SpeakerModelError(f"SPEAKER_MODEL=pyannote: {self.model} is not in the Hugging Face cache and could "
                                    f"not be downloaded ({exc}); connect once to download it, or choose another "
                                    f"SPEAKER_MODEL ({', '.join(ENCODERS)})") from exc

    def _embed(self, audio_16k: np.ndarray) -> np.ndarray:
        waveform = self._torch.from_numpy(np.ascontiguousarray(audio_16k))[None]
        return np.asarray(self._inference({"waveform": waveform, "sample_rate": SAMPLE_RATE}))

    def _size(self) -> int:
        return 256


# SPEAKER_MODEL value -> encoder class (settings.SPEAKER_MODELS lists the same names).
ENCODERS: dict[str, type[_LazyEncoder]] = {
    "resemblyzer": ResemblyzerEncoder,
    "campplus": CampPlusEncoder,
    "pyannote": PyannoteEncoder,
}


def check(name: str) -> None:
    """At start-up: raise SpeakerModelError (naming the setting and the install command) if ``name`` can't run."""
    if name not in ENCODERS:
        raise SpeakerModelError(f"SPEAKER_MODEL={name!r} is invalid: use one of {', '.join(ENCODERS)}")
    ENCODERS[name].check()


def create_encoder(name: str, device: str = "cpu") -> SpeakerEncoder:
    """Build (but do not load) the encoder that SPEAKER_MODEL ``name`` names, for ``device`` (DEVICE's values)."""
    if name not in ENCODERS:
        raise SpeakerModelError(f"SPEAKER_MODEL={name!r} is invalid: use one of {', '.join(ENCODERS)}")
    return ENCODERS[name](device=device)


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
        centroids = np.stack([_unit(np.average(vectors[core][groups == g], axis=0,
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
