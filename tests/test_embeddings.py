"""The real packaged all-MiniLM-L6-v2, loaded from its package folder."""

from __future__ import annotations

import numpy as np

from keel.embeddings import MiniLM


def test_minilm_embeds_meaningfully() -> None:
    emb = MiniLM()
    vectors = emb(
        [
            "wireless noise-cancelling headphones",
            "bluetooth earbuds for music",
            "a cookbook with vegetarian recipes",
        ]
    )
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # headphones are closer to earbuds than to a cookbook
    # batching does not change an embedding
    alone = emb(["bluetooth earbuds for music"])
    np.testing.assert_allclose(alone[0], vectors[1], atol=1e-5)
