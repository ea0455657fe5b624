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


def test_concurrent_calls_embed_as_one_at_a_time() -> None:
    """Threads share the weights and tokenize with their own tokenizers: many at once give
    exactly what each gives alone."""
    from concurrent.futures import ThreadPoolExecutor

    emb = MiniLM()
    batches = [HELD_OUT[i : i + 3 + i % 4] for i in range(0, len(HELD_OUT), 2)]
    alone = [emb(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(emb, batches * 3))
    for i, got in enumerate(together):
        np.testing.assert_allclose(got, alone[i % len(batches)], atol=1e-5)


def test_concurrent_forward_passes_share_the_intra_op_threads() -> None:
    """One pass alone runs on every thread it is given; two at once take half each; the
    survivor gets them all back."""
    import threading

    import torch

    emb = MiniLM(threads=2)
    emb(["load the model"])
    model = emb._model
    seen: list[int] = []
    both_in = threading.Barrier(2, timeout=30)

    class Watched(torch.nn.Module):
        def forward(self, **enc):
            seen.append(torch.get_num_threads())
            both_in.wait()
            return model(**enc)

    emb._model = Watched()
    threads = [threading.Thread(target=emb, args=([HELD_OUT[i]],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(seen) == [1, 2]  # the first started on 2, the second on 1 (of 2)
    assert torch.get_num_threads() == 2


# Sentences the model was not checked on while choosing the quantization: products, support
# requests, captions and news, short and long.
HELD_OUT = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "The new movie is awesome",
    "Wireless noise-cancelling headphones with 30 hours of battery",
    "How do I reset my password?",
    "Refund for order 4412 has not arrived",
    "Stainless steel water bottle, keeps drinks cold for 24 hours",
    "Two dogs play in the snow near a red barn",
    "The quarterly revenue grew by 12 percent",
    "Is this jacket available in size medium?",
    "Organic green tea, 100 bags",
    "The train to Munich was delayed by forty minutes",
    "Best budget laptop for students in 2026",
    "Please cancel my subscription",
    "Handmade ceramic coffee mug, blue glaze",
    "This product broke after two days and support never answered my emails",
]


def test_the_onnx_backends_embed_as_the_packaged_model(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KEEL_CACHE_DIR", str(tmp_path))
    reference = MiniLM()(HELD_OUT)
    plain = MiniLM(backend="onnx")(HELD_OUT)
    np.testing.assert_allclose((reference * plain).sum(1), 1.0, atol=1e-5)
    int8 = MiniLM(backend="onnx-int8", threads=1)(HELD_OUT)
    cosine = (reference * int8).sum(1)
    assert cosine.min() >= 0.99, cosine
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    # Made once, from the packaged weights, and named by their hash.
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith("-onnx-int8-pc-ffn32.onnx"), files
    made = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = MiniLM(backend="onnx-int8")(HELD_OUT[:2])
    # Activations are quantized per batch: batch-mates move an embedding, a little.
    assert ((again * int8[:2]).sum(1) >= 0.99).all()
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == made


def test_an_unknown_backend_is_refused_by_name() -> None:
    import pytest

    with pytest.raises(ValueError, match="unknown text backend 'tensorrt'"):
        MiniLM(backend="tensorrt")
    with pytest.raises(ValueError, match="runs on the CPU"):
        MiniLM(backend="onnx", device="cuda")
