"""The demo, end to end, small: what `make demo` shows must hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end(demo_run: Any) -> None:
    # The demo runs once per session (tests/conftest.py): the console's browser tests look at
    # the project it kept.
    result, text = demo_run.result, demo_run.text
    assert result.read_back == result.appended["shop.events"] > 0
    assert "all there" in text
    assert result.training_rows > 0
    same, total = result.consistent
    assert total > 0 and same == total
    assert (demo_run.project_dir / "keel.toml").exists()
    # Trained by `keel train`, and retrained from its lineage to the very same bytes; the
    # shop's fraud is hard enough that the model ranks it well, not perfectly. (At the demo's
    # own size the holdout AUC lands in 0.85-0.97; this smaller shop's two-day holdout holds
    # some 30-50 fraud episodes, so its AUC spreads wider: 0.83-0.94 measured.)
    assert result.model_ref == "fraud@1" and result.reproduced and result.model_identical
    assert result.holdout_auc is not None and 0.78 <= result.holdout_auc <= 0.98
    assert result.swapped_to == "fraud@2" and result.swap_errors == 0
    assert result.bench_peak > 0
    assert result.promoted_to == "fraud@3" and result.traffic_errors == 0
    # The drift injected half way is flagged, and the report is written.
    assert result.monitor_windows >= 4 and result.drift_window is not None
    assert result.drifted_after
    # The events that stopped arriving are named among the drifted features, and the
    # estimated loss crossed its level before the labels came in; they confirm it.
    assert {"user_activity__events_1h", "user_activity__carts_1d"} <= set(result.drifted_after)
    # The estimated loss rises with the drift before any label is in. (Whether it crosses
    # its level at this small size depends on the shop's start time: the level is set on
    # the training set's held-out rows, and live healthy windows sometimes estimate lower
    # than those, so a 1.5-2x rise can stay under it. The rise itself also moves with the
    # start time, whose hour sets the shop's daily rhythm in both phases: 1.2x to 2x seen.)
    assert result.estimated_before is not None and result.estimated_after is not None
    assert result.estimated_after > 1.1 * result.estimated_before
    assert result.realized_before is not None and result.realized_after is not None
    assert result.realized_after > 5 * result.realized_before
    assert Path(result.report).exists()
    # The report shows each window's global importance (mean |TreeSHAP|) against training's.
    assert "<h2>Feature importance</h2>" in Path(result.report).read_text()
    for step in (
        "1. Project",
        "2. History",
        "3. Features",
        "4. Live stream",
        "5. Read back",
        "6. Online lookups",
        "7. Training",
        "keel train fraud",
        "8. Registry",
        "11. Monitoring",
        "12. Recommendations",
        "13. Jobs",
        "14. The loop, unattended",
        "15. Explanations",
        " ui",  # the summary's way to the web console
    ):
        assert step in text
    # The recommender is trained, then fine-tuned on the drifting shop: each cycle's child is
    # judged and promoted or rejected, and the new items the frozen model cannot know lift the
    # fine-tuned model above it.
    q = result.recommend_quality
    assert set(q) == {"frozen", "fine-tuned", "retrained"}
    assert result.recommend_versions[:2] == ["recommend@1", "recommend@2"]
    assert result.recommend_decisions and set(result.recommend_decisions) <= {"promote", "reject"}
    # (Two cycles of a small shop hold ~100 purchases: a hit rate's standard error is ~0.04,
    # so the test allows that much noise; BENCHMARKS.md measures the gap at scale.)
    assert q["fine-tuned"] >= q["frozen"] - 0.05
    assert result.recommend_compute_ratio is not None and result.recommend_compute_ratio < 0.5
    # The route serves the champion, with its own index.
    assert result.recommend_served == result.recommend_champion
    # Jobs: the retrain is preempted by the higher-priority fine-tune, requeued, resumed and
    # ends with the model an uninterrupted run gives; the job too large for any flavor waits
    # with Kueue's reason until cancelled.
    assert result.jobs_states == {
        "retrain": "succeeded",
        "fine-tune": "succeeded",
        "train": "cancelled",
    }
    assert result.jobs_preemptions == 1 and result.jobs_resumed_identical
    assert "request > maximum capacity (64 > 3)" in result.jobs_too_big_reason
    # The loop ran unattended on the drifted shop: an alert became a retrain job whose
    # version was graded on the freshest labelled payments, shadowed and promoted with no one
    # at the keyboard, and the chain ran to the monitor following it — each step on the trail.
    assert result.loop_steps[:3] == ["trigger", "job", "job_done"]
    assert result.loop_promoted, result.loop_steps
    assert {"candidate", "decision", "swap", "monitoring"} <= set(result.loop_steps)
    # The recovery: a new version served within 12 shop hours of the alert, and what it served
    # from then to 24 hours after the alert (several hundred labelled payments, a dozen or two
    # frauds) lost at most three times the healthy champion's, where the drifted champion lost
    # more than five times as much (asserted above). The goal is 2x; over so few frauds one
    # confidently missed fraud moves this small shop's figure by half the healthy level, so the
    # test leaves that margin (BENCHMARKS.md keeps the figures of repeated runs).
    healthy, drifted = result.realized_before, result.realized_after
    assert result.loop_promoted_hours is not None and result.loop_promoted_hours <= 12
    assert result.loop_realized_after is not None and result.loop_realized_rows >= 200
    assert result.loop_realized_after <= 3 * healthy < drifted
    # Explanations: the riskiest payments' scores split into their features' contributions,
    # as served — exact (they add up to the served score) — and a registered surrogate of the
    # serving version with its fidelity measured on held-out payments.
    assert result.explain_version == result.loop_promoted
    assert result.explain_additive
    assert len(result.explain_top) == 3 and all(len(top) == 3 for top in result.explain_top)
    assert result.surrogate_model.startswith("fraud-surrogate@")
    assert result.surrogate_r2 is not None and result.surrogate_r2 > 0.8
    assert result.kernel_evaluations > 0
    assert result.explain_ms["tree"] > 0 and result.explain_ms["predict"] > 0
