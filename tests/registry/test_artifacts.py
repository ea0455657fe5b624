"""The artifact store on a local folder and through fsspec."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from keel.errors import NotFoundError
from keel.registry import ArtifactStore, TamperedArtifactError


@pytest.fixture(params=["local", "fsspec"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(tmp_path / "a")
    return ArtifactStore(f"memory://keel-test-{uuid.uuid4().hex[:8]}")


def test_put_is_content_addressed_and_idempotent(store: ArtifactStore) -> None:
    a = store.put(b"weights")
    assert a == store.put(b"weights")
    assert store.get(a) == b"weights" and store.exists(a)
    assert store.put(b"other") != a
    with pytest.raises(NotFoundError, match="missing"):
        store.get("0" * 64)


def test_fsspec_store_detects_tampering() -> None:
    import fsspec

    store = ArtifactStore(f"memory://keel-test-{uuid.uuid4().hex[:8]}")
    digest = store.put(b"model bytes")
    fs = fsspec.filesystem("memory")
    fs.pipe_file(store._path(digest), b"model bytez")
    with pytest.raises(TamperedArtifactError):
        store.get(digest)
