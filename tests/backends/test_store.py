"""rapl.backends.store: local directories, the Hugging Face and ModelScope caches (laid out as the hub libraries
write them, in temporary directories), downloads only when the cache lacks a model, and the listing
per backend. The network is blocked for the whole module."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rapl.backends import store
from rapl.catalog import SPECS
from support.caches import fake_hf_repo, fake_modelscope_model

pytestmark = pytest.mark.usefixtures("offline")

WHISPER, MLX, SENSEVOICE = SPECS["whisper"], SPECS["mlx"], SPECS["sensevoice"]
CT2_FILES = {"model.bin": b"\0" * 2000, "config.json": b"{}", "vocabulary.txt": b"a\nb\n"}


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache that huggingface_hub (and so faster-whisper) reads."""
    import huggingface_hub.constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def ms_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MODELSCOPE_CACHE pointing at an empty directory (the SDK reads it on each lookup)."""
    cache = tmp_path / "modelscope"
    cache.mkdir()
    monkeypatch.setenv("MODELSCOPE_CACHE", str(cache))
    return cache


class Downloads:
    """A stand-in for a hub download: records the ids asked for, returns a directory."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.asked: list[str] = []

    def __call__(self, model_id: str) -> str:
        self.asked.append(model_id)
        self.where.mkdir(parents=True, exist_ok=True)
        return str(self.where)


def refuse(model_id: str) -> str:
    raise AssertionError(f"downloaded {model_id} although it is on disk")


REAL_UNREACHABLE = store.unreachable


@pytest.fixture(autouse=True)
def hub_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The downloads here are stand-ins, so the hubs count as reachable (the network is blocked)."""
    monkeypatch.setattr(store, "unreachable", lambda spec, timeout=3.0: "")


def test_an_unreachable_hub_fails_at_once_without_the_hub_librarys_retries(hf_cache: Path, tmp_path: Path, offline,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A first start offline: one quick probe of the hub's host, then the error (not 20 s of retries)."""
    monkeypatch.setattr(store, "unreachable", REAL_UNREACHABLE)
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    download = Downloads(tmp_path / "downloaded")
    with pytest.raises(ConnectionError, match="huggingface.co cannot be reached from this machine"):
        store.locate(WHISPER, "Systran/faster-whisper-base", download=download)
    assert download.asked == [] and offline == [("getaddrinfo", "huggingface.co", 443)]  # probed, refused
    offline.clear()  # that probe was this test's own: the module's check stays for every other test


# -- one model --------------------------------------------------------------------------------


def test_a_local_directory_is_used_as_it_is(tmp_path: Path) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "model.bin").write_bytes(b"\0" * 1234)
    assert store.locate(WHISPER, str(model), download=refuse) == model
    found = store.cached(WHISPER, str(model))
    assert found is not None and found.source == store.LOCAL == "local directory"
    assert (found.model_id, found.path, found.size, found.backend) == (str(model), str(model), 1234, "whisper")


@pytest.mark.parametrize("model", ["/nonexistent/dir", "./models/tiny", "~/no/such/model", "a/b/c", "C:\\models\\x"])
def test_a_path_that_is_no_directory_is_an_error_not_a_download(model: str) -> None:
    assert store.looks_like_path(model)
    assert store.cached(WHISPER, model) is None
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        store.locate(WHISPER, model, download=refuse)


@pytest.mark.parametrize("model", ["iic/SenseVoiceSmall", "Systran/faster-whisper-small", "small", "paraformer-zh"])
def test_hub_ids_do_not_look_like_paths(model: str) -> None:
    assert not store.looks_like_path(model)


def test_a_cached_hub_model_is_used_without_network(hf_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    snapshot = fake_hf_repo(hf_cache, "Systran/faster-whisper-tiny.en", CT2_FILES)
    caplog.set_level("INFO")
    logger = logging.getLogger("rapl.backends.whisper")
    assert store.locate(WHISPER, "Systran/faster-whisper-tiny.en", download=refuse, logger=logger) == snapshot
    record = next(r for r in caplog.records if "cached copy" in r.getMessage())
    assert record.name == "rapl.backends.whisper"  # the backend's logger says where its model came from
    assert "using the cached copy of Systran/faster-whisper-tiny.en from the Hugging Face cache at" \
        in record.getMessage()
    found = store.cached(WHISPER, "Systran/faster-whisper-tiny.en")
    assert found is not None and (found.source, found.path) == ("Hugging Face cache", str(snapshot))
    assert found.size == sum(len(data) for data in CT2_FILES.values())  # through the links to the blobs


def test_a_cached_copy_without_the_marker_file_is_downloaded(hf_cache: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    fake_hf_repo(hf_cache, "Systran/faster-whisper-base", {"config.json": b"{}"})  # no model.bin: incomplete
    assert store.cached(WHISPER, "Systran/faster-whisper-base") is None
    download = Downloads(tmp_path / "downloaded")
    caplog.set_level("INFO")
    assert store.locate(WHISPER, "Systran/faster-whisper-base", download=download) == tmp_path / "downloaded"
    assert download.asked == ["Systran/faster-whisper-base"]
    assert "downloading Systran/faster-whisper-base from Hugging Face" in caplog.text


def test_an_uncached_model_is_looked_up_offline_then_downloaded_by_the_hub(hf_cache: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls: list[tuple[str, bool]] = []

    def snapshot_download(repo_id: str, local_files_only: bool = False, **kwargs: object) -> str:
        calls.append((repo_id, local_files_only))
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert store.locate(MLX, "mlx-community/some-asr") == tmp_path  # no download given: the hub's own
    assert calls == [("mlx-community/some-asr", True), ("mlx-community/some-asr", False)]


def test_mlx_counts_a_cached_copy_only_with_weights(hf_cache: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from rapl.backends import mlx

    fake_hf_repo(hf_cache, "mlx-community/tiny-asr", {"config.json": b'{"model_type": "qwen3_asr"}'})
    assert mlx._config_guess("mlx-community/tiny-asr") == {"model_type": "qwen3_asr"}  # enough to guess from
    download = Downloads(tmp_path / "downloaded")
    monkeypatch.setattr(mlx, "_download", download)
    assert mlx._local_dir("mlx-community/tiny-asr") == tmp_path / "downloaded"  # but not to load: no weights
    assert download.asked == ["mlx-community/tiny-asr"]

    whole = fake_hf_repo(hf_cache, "mlx-community/whole-asr", {"config.json": b"{}", "model.safetensors": b"\0"})
    assert mlx._local_dir("mlx-community/whole-asr") == whole
    assert download.asked == ["mlx-community/tiny-asr"]


def test_whisper_short_names_are_found_in_the_cache(hf_cache: Path) -> None:
    pytest.importorskip("faster_whisper")
    snapshot = fake_hf_repo(hf_cache, "Systran/faster-whisper-tiny.en", CT2_FILES)
    assert store.hub_id(WHISPER, "tiny.en") == "Systran/faster-whisper-tiny.en"  # faster-whisper's own name
    found = store.cached(WHISPER, "tiny.en")
    assert found is not None and (found.model_id, found.path) == ("Systran/faster-whisper-tiny.en", str(snapshot))
    assert store.locate(WHISPER, "tiny.en", download=refuse) == snapshot
    assert store.hub_id(WHISPER, "base.en") == "base.en"  # not cached: the library resolves it when downloading
    assert store.cached(WHISPER, "base.en") is None
    assert store.hub_id(WHISPER, "owner/name") == "owner/name" and store.hub_id(MLX, "tiny.en") == "tiny.en"


def test_a_modelscope_model_is_found_in_its_cache_offline(ms_cache: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("modelscope")
    from rapl.backends.sensevoice import cached_modelscope, resolve_model

    model = fake_modelscope_model(ms_cache / "models" / "iic" / "TinyVoice",  # the SDK's classic layout
                                  {"config.yaml": b"model: SenseVoiceSmall\n", "model.pt": b"\0" * 100})
    caplog.set_level("INFO")
    assert store.locate(SENSEVOICE, "iic/TinyVoice", download=refuse) == model
    assert "using the cached copy of iic/TinyVoice from the ModelScope cache" in caplog.text
    assert resolve_model("iic/TinyVoice") == cached_modelscope("iic/TinyVoice") == str(model)

    fake_modelscope_model(ms_cache / "models" / "iic" / "Partial", {"configuration.json": b"{}"})  # no config.yaml
    assert store.cached(SENSEVOICE, "iic/Partial") is None
    download = Downloads(tmp_path / "downloaded")
    assert store.locate(SENSEVOICE, "iic/Partial", download=download) == tmp_path / "downloaded"
    assert download.asked == ["iic/Partial"]


# -- what is cached ---------------------------------------------------------------------------


@pytest.mark.parametrize(("model_id", "files", "hub", "backend"), [
    ("Systran/faster-whisper-tiny.en", {"model.bin", "config.json", "vocabulary.txt"}, "Hugging Face", "whisper"),
    ("someone/my-ct2-conversion", {"model.bin", "tokenizer.json"}, "Hugging Face", "whisper"),
    ("mlx-community/whisper-tiny-mlx", {"config.json", "weights.npz"}, "Hugging Face", "mlx"),
    ("mlx-community/Qwen3-ASR-1.7B-8bit", {"config.json", "model.safetensors"}, "Hugging Face", "mlx"),
    ("openai/whisper-small", {"config.json", "model.safetensors"}, "Hugging Face", "other"),  # transformers
    ("bert-base-uncased", {"config.json"}, "Hugging Face", "other"),
    ("iic/SenseVoiceSmall", {"configuration.json", "model.pt"}, "ModelScope", "sensevoice"),
    ("iic/punc_ct-transformer_cn-en-common-vocab471067-large", {"config.yaml", "model.pt"}, "ModelScope",
     "sensevoice"),
    ("iic/some-dataset-like-thing", {"configuration.json"}, "ModelScope", "other"),
])
def test_backend_of_follows_each_specs_hub_and_marker(model_id: str, files: set[str], hub: str,
                                                      backend: str) -> None:
    assert store.backend_of(model_id, files, hub) == backend


def test_inventory_lists_both_caches_per_backend(hf_cache: Path, ms_cache: Path) -> None:
    fake_hf_repo(hf_cache, "Systran/faster-whisper-tiny.en", CT2_FILES)
    fake_hf_repo(hf_cache, "mlx-community/whisper-tiny-mlx", {"weights.npz": b"\0" * 3000, "config.json": b"{}"})
    fake_hf_repo(hf_cache, "bert-base-uncased", {"config.json": b"{}"})
    fake_modelscope_model(ms_cache / "hub" / "iic" / "SenseVoiceSmall",  # the classic SDK layout
                          {"configuration.json": b"{}", "model.pt": b"\0" * 1500})
    fake_modelscope_model(ms_cache / "models" / "iic--punc_ct-transformer" / "snapshots" / "master",
                          {"config.yaml": b"model: CTTransformer\n", "model.pt": b"\0" * 10})  # modelscope_hub
    fake_modelscope_model(ms_cache / "hub" / "iic" / "speech___v1.0", {"config.yaml": b"", "model.pt": b""})
    fake_modelscope_model(ms_cache / "datasets" / "iic" / "corpus", {"configuration.json": b"{}"})  # not a model

    found = store.inventory()
    assert found.hf_cache == hf_cache and found.hf_note is None and found.modelscope_cache == ms_cache
    listed = {m.model_id: (m.backend, m.source, m.size) for m in found.models}
    assert listed == {
        "Systran/faster-whisper-tiny.en": ("whisper", "Hugging Face cache", 2000 + 2 + 4),
        "mlx-community/whisper-tiny-mlx": ("mlx", "Hugging Face cache", 3002),
        "bert-base-uncased": ("other", "Hugging Face cache", 2),
        "iic/SenseVoiceSmall": ("sensevoice", "ModelScope cache", 1502),
        "iic/punc_ct-transformer": ("sensevoice", "ModelScope cache", 31),
        "iic/speech.v1.0": ("sensevoice", "ModelScope cache", 0),  # ModelScope writes dots as ___
    }


def test_inventory_of_caches_that_do_not_exist_yet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "no-hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "no-ms"))
    found = store.inventory()
    assert (found.hf_cache, found.modelscope_cache, found.models) == (tmp_path / "no-hf", tmp_path / "no-ms", ())


def test_modelscope_root_defaults_to_the_users_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELSCOPE_CACHE", raising=False)
    assert store.modelscope_root() == Path.home() / ".cache" / "modelscope"


@pytest.mark.parametrize(("size", "shown"), [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1_500_000, "1.5 MB"),
                                             (78_100_000, "78.1 MB"), (3 * 10**15, "3000.0 TB")])
def test_human_size(size: int, shown: str) -> None:
    assert store.human_size(size) == shown


# -- a backend loading through the store (the real tiny.en model) ----------------------------


@pytest.mark.slow
def test_whisper_loads_a_short_name_from_the_hf_cache_offline(hf_cache: Path, whisper_model: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    from rapl.backends.whisper import WhisperBackend
    from rapl.settings import Settings

    real = Path(whisper_model)
    fake_hf_repo(hf_cache, "Systran/faster-whisper-tiny.en", {p.name: p for p in real.iterdir() if p.is_file()})
    backend = WhisperBackend(Settings.load({"BACKEND": "whisper", "LOCAL_MODEL": "tiny.en", "THREADS": "1"},
                                           environ={}))
    caplog.set_level("INFO")
    assert backend.load().languages == frozenset({"en"})  # tiny.en, loaded from the cache with no network
    assert "using the cached copy of Systran/faster-whisper-tiny.en from the Hugging Face cache" in caplog.text
    backend.unload()


def test_local_models_are_named_by_their_last_meaningful_folder(tmp_path: Path) -> None:
    """Clients, /health and the page see a name that says which model it is, never a server path."""
    from rapl.backends import public_name

    named = tmp_path / "whisper-tiny.en" / "model"
    snapshot = tmp_path / "hub" / "models--Systran--faster-whisper-tiny" / "snapshots" / ("0123abcd" * 5)
    for folder in (named, snapshot, tmp_path / "SenseVoiceSmall"):
        folder.mkdir(parents=True)
    assert public_name(str(named)) == "whisper-tiny.en"  # not "model" ("the whisper model model")
    assert public_name(str(named / "..")) == "whisper-tiny.en"
    assert public_name(str(snapshot)) == "Systran/faster-whisper-tiny"
    assert public_name(str(tmp_path / "SenseVoiceSmall")) == "SenseVoiceSmall"
    assert public_name("iic/SenseVoiceSmall") == "iic/SenseVoiceSmall"  # a hub id as it is
    assert str(tmp_path) not in public_name(str(named))
