"""Content-addressed artifact storage: a file's name is the sha256 of its bytes.

A local folder by default; any fsspec URL (``s3://bucket/prefix``…) to scale out. Every read
verifies the hash, so a missing, truncated or modified artifact is refused, never loaded.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from keel.errors import KeelError, NotFoundError

__all__ = ["ArtifactStore", "TamperedArtifactError", "sha256"]


class TamperedArtifactError(KeelError):
    """The stored bytes no longer hash to the artifact's name."""

    status_code = 500


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    """Put and get immutable blobs by their sha256."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root = str(root)
        self.url = root
        if "://" in root and not root.startswith("file://"):
            import fsspec

            self._fs, self._root = fsspec.core.url_to_fs(root)
            self._local = None
        else:
            self._local = Path(root.removeprefix("file://"))
            self._fs = None
            self._root = str(self._local)

    def _path(self, digest: str) -> str:
        return f"{self._root}/{digest[:2]}/{digest}"

    def put(self, data: bytes) -> str:
        """Store ``data`` (once) and return its sha256."""
        digest = sha256(data)
        path = self._path(digest)
        if self._local is not None:
            target = Path(path)
            if target.exists() and target.stat().st_size == len(data):
                return digest
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{digest}.{uuid.uuid4().hex}")
            tmp.write_bytes(data)
            os.replace(tmp, target)  # readers see all of it or nothing
        else:
            if not self._fs.exists(path):
                self._fs.pipe_file(path, data)
        return digest

    def get(self, digest: str) -> bytes:
        """The bytes of ``digest``, verified; refuses a missing or altered artifact."""
        path = self._path(digest)
        try:
            data = Path(path).read_bytes() if self._local is not None else self._fs.cat_file(path)
        except FileNotFoundError:
            raise NotFoundError(
                f"artifact {digest[:12]}… is missing from {self.url} (expected at {path})"
            ) from None
        actual = sha256(data)
        if actual != digest:
            raise TamperedArtifactError(
                f"artifact {digest[:12]}… at {path} is corrupt or was modified: its bytes hash "
                f"to {actual[:12]}… ({len(data)} bytes); refusing to load it"
            )
        return data

    def exists(self, digest: str) -> bool:
        path = self._path(digest)
        return Path(path).exists() if self._local is not None else self._fs.exists(path)
