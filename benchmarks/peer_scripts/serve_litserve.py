"""LitServe with dynamic batching: batches of up to MAX_BATCH gathered for WAIT_MS.

Usage: ``python serve_litserve.py PORT THREADS MAX_BATCH WAIT_MS``
"""

from __future__ import annotations

import sys

import litserve as ls
from serve_minilm import PATH, Embedder, answer, texts_of


class EmbedAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = Embedder(int(sys.argv[2]))
        self.model(["warm up"])

    def decode_request(self, request: dict) -> str:
        return texts_of(request)[0]

    def predict(self, texts: list[str]) -> list[list[float]]:
        return self.model(list(texts))

    def encode_response(self, vector: list[float]) -> dict:
        return answer([vector])


if __name__ == "__main__":
    port, batch, wait_ms = int(sys.argv[1]), int(sys.argv[3]), float(sys.argv[4])
    api = EmbedAPI(max_batch_size=batch, batch_timeout=wait_ms / 1000, api_path=PATH)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(
        host="127.0.0.1", port=port, generate_client_file=False
    )
