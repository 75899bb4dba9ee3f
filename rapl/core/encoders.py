"""Voice encoders for rapl.core.speakers: a stretch of 16 kHz speech in, a unit vector (a voice "embedding") out.

A :class:`SpeakerEncoder` turns speech into a unit vector; two stretches by one voice give
vectors pointing the same way. The encoder is chosen by the ``SPEAKER_MODEL`` setting
(:data:`ENCODERS`) and imports its library on first use only. Each carries the thresholds
rapl.core.speakers clusters with: ``same_speaker`` (two groups of segments are one voice) and
``known_speaker`` (a group is a known speaker).

Thresholds, measured with resemblyzer on this project's real clips (``../shared/audio``):
the two halves of en_jfk.flac are 0.82 alike, JFK and the Mandarin speaker of
zh_sample.wav 0.47. Over every pair of 2.5 s windows (0.5 s apart), one voice scores 0.52 to
1.00 (mean 0.77), the two voices 0.26 to 0.46 (mean 0.37); average linkage compares such means,
and 0.60 lies between them. 1 s windows overlap (one voice down to 0.52, two voices up to
0.81), hence the 2 s floor for clustering (rapl.core.speakers.MIN_EMBED_SECONDS). A 5 s reference
of JFK scores 0.71 to 0.84 against 2.5 s windows of his other words, the Mandarin speaker 0.38
to 0.48: names need 0.65.
Synthetic voices differ less: espeak-ng en-us scores 0.72 against en-us+f3, 0.94 against en-gb.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..audio.recording import SAMPLE_RATE
from ..settings import SettingsError

log = logging.getLogger(__name__)

CAMPPLUS_MODEL = "iic/speech_campplus_sv_zh-cn_16k-common"
PYANNOTE_MODEL = "pyannote/wespeaker-voxceleb-resnet34-LM"


class SpeakerModelError(SettingsError):
    """The SPEAKER_MODEL cannot be used (package missing, model not found); says how to fix it."""


class SpeakerEncoder(Protocol):
    """A voice embedding model: audio in, unit vector out."""

    name: str  # the SPEAKER_MODEL value
    same_speaker: float  # cosine similarity at or above which two groups of segments are one voice
    known_speaker: float  # similarity at or above which a group matches a known speaker's reference

    def load(self) -> None:
        """Load the model now (otherwise the first :meth:`embed` does)."""

    def embed(self, audio_16k: np.ndarray) -> np.ndarray:
        """The unit-length embedding of 16 kHz mono float32 speech (all zeros if there is no voice)."""



WINDOW = 1.6  # seconds of speech per window embedding (resemblyzer's own partial utterances)


def windows(encoder: SpeakerEncoder, audio_16k: np.ndarray, hop: float) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of :data:`WINDOW` s windows of ``audio_16k`` every ``hop`` s: (starts in seconds, unit vectors).

    Encoders with a batched way (``encoder.windows``) use it; others embed each window alone.
    """
    batched = getattr(encoder, "windows", None)
    if batched is not None:
        return batched(audio_16k, hop)
    audio_16k = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
    starts = _starts(len(audio_16k), hop)
    return starts, np.stack([unit_vector(encoder.embed(_window(audio_16k, s))) for s in starts])


def _starts(samples: int, hop: float) -> np.ndarray:
    """Window start times (seconds) every ``hop`` s; one window when the audio is shorter than WINDOW."""
    return np.arange(0.0, max(samples / SAMPLE_RATE - WINDOW, 0.0) + 1e-9, hop)


def _window(audio_16k: np.ndarray, start: float) -> np.ndarray:
    at = int(start * SAMPLE_RATE)
    return audio_16k[at:at + int(WINDOW * SAMPLE_RATE)]


def unit_vector(vector: Any) -> np.ndarray:
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
        return unit_vector(self._embed(audio_16k))

    def windows(self, audio_16k: np.ndarray, hop: float) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of :data:`WINDOW` s windows every ``hop`` s (the last one may be shorter)."""
        if not self._loaded:
            self.load()
        audio_16k = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
        starts = _starts(len(audio_16k), hop)
        return starts, np.stack([unit_vector(v) for v in self._windows(audio_16k, starts)])

    def _windows(self, audio_16k: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
        """One embedding per window start; encoders with a batched form override this."""
        return [self.embed(_window(audio_16k, s)) for s in starts]

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
    install = "pip install webrtcvad-wheels librosa && pip install --no-deps resemblyzer"
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

    def _windows(self, audio_16k: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
        # One spectrogram and one batch for all windows (resemblyzer's partial utterances, 1.6 s
        # each): 60 times faster than embedding each window alone. Volume normalised, silence kept
        # (cutting it would move the windows in time).
        if len(starts) < 2:
            return super()._windows(audio_16k, starts)
        from resemblyzer.audio import normalize_volume

        hop = float(starts[1] - starts[0])
        louder = normalize_volume(audio_16k, -30, increase_only=True)
        _, partials, _ = self._model.embed_utterance(louder, return_partials=True, rate=1.0 / hop,
                                                     min_coverage=0.5)
        return list(partials[:len(starts)]) + [partials[-1]] * max(len(starts) - len(partials), 0)

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

