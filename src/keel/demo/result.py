"""What a demo run produced, for its summary and its test."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DemoResult"]


@dataclass
class DemoResult:
    project_dir: Path
    appended: dict[str, int] = field(default_factory=dict)
    history_seconds: float = 0.0
    live_seconds: float = 0.0
    read_back: int = 0
    backfill_seconds: float = 0.0
    lookup_ms: float = 0.0
    training_seconds: float = 0.0
    training_rows: int = 0
    consistent: tuple[int, int] = (0, 0)
    model_ref: str = ""
    reproduced: bool = False
    model_identical: bool = False
    holdout_auc: float | None = None
    bench_peak: float = 0.0
    swap_errors: int = -1
    swapped_to: str = ""
    promoted_to: str = ""
    traffic_errors: int = -1
    monitor_windows: int = 0
    drift_window: int | None = None
    alerts_before: int = 0
    drifted_after: list[str] = field(default_factory=list)
    performance_alert_after: bool = False
    estimated_before: float | None = None
    estimated_after: float | None = None
    realized_before: float | None = None
    realized_after: float | None = None
    report: str = ""
    recommend_quality: dict[str, float] = field(default_factory=dict)
    recommend_decisions: list[str] = field(default_factory=list)
    recommend_versions: list[str] = field(default_factory=list)
    recommend_champion: str = ""
    recommend_compute_ratio: float | None = None
    recommend_served: str = ""
    jobs_states: dict[str, str] = field(default_factory=dict)
    jobs_preemptions: int = 0
    jobs_seconds: float = 0.0
    jobs_resumed_identical: bool = False
    jobs_too_big_reason: str = ""
    loop_steps: list[str] = field(default_factory=list)
    loop_promoted: str = ""
    loop_seconds: float = 0.0
    loop_alert_hours: float | None = None
    loop_promoted_hours: float | None = None
    loop_realized_before: float | None = None
    loop_realized_after: float | None = None
    loop_realized_rows: int = 0
    explain_version: str = ""
    explain_top: list[list[str]] = field(default_factory=list)
    explain_additive: bool = False
    explain_ms: dict[str, float] = field(default_factory=dict)
    surrogate_model: str = ""
    surrogate_r2: float | None = None
    surrogate_rank: float | None = None
    surrogate_same_top: int = 0
    kernel_evaluations: int = 0
