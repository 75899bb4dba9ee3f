"""Model caches laid out as the hub libraries write them, in temporary directories (no network)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def fake_hf_repo(cache: Path, repo_id: str, files: dict[str, bytes | Path]) -> Path:
    """A model as huggingface_hub caches it: blobs, refs/main, snapshots/<rev> links; returns the snapshot.

    A ``Path`` value is linked to as it is (a real model's file, without copying it).
    """
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        if isinstance(data, Path):
            (snapshot / name).symlink_to(data.resolve())
            continue
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def fake_modelscope_model(directory: Path, files: dict[str, bytes]) -> Path:
    """A model directory as the ModelScope SDK leaves it (e.g. <cache>/models/iic/Name); returns it."""
    directory.mkdir(parents=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory
