"""The one-forward-pass-per-request server: FastAPI + uvicorn, a sync endpoint (FastAPI runs
it in its thread pool), the model's torch threads as given.

Usage: ``python serve_fastapi.py PORT THREADS``
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI
from serve_minilm import PATH, Embedder, answer, texts_of

port, threads = int(sys.argv[1]), int(sys.argv[2])
model = Embedder(threads)
model(["warm up"])
app = FastAPI()


@app.post(PATH)
def infer(body: dict) -> dict:
    return answer(model(texts_of(body)))


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
