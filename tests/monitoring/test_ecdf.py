"""The compiled merge pass gives what the NumPy path gives: the same KS statistic to the
bit and the same Wasserstein distance to rounding, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from keel.monitoring import drift, ecdf

values = st.lists(
    st.one_of(
        st.integers(-5, 5).map(float),  # ties within and across the two samples
        st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    ),
    min_size=2,  # KS's p-value wants an effective size of at least one
    max_size=300,
)


def _numpy(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    prefix, centre = drift._prefix(ref)
    ranks = drift._Ranks.of(ref, cur)
    return drift._ks(ref, ranks)[0], drift._wasserstein(ref, prefix, centre, ranks)


@settings(max_examples=300, deadline=None)
@given(values, values)
def test_the_merge_pass_equals_the_numpy_path(ref: list[float], cur: list[float]) -> None:
    merge = ecdf.kernel()
    assert merge is not None, "numba (the ml extra) is installed with the test dependencies"
    r, c = np.sort(np.array(ref)), np.sort(np.array(cur))
    prefix, centre = drift._prefix(r)
    above, below, area = merge(r, prefix, centre, c)
    d, was = _numpy(r, c)
    assert max(above, below, 0.0) == d
    assert area == pytest.approx(was, rel=1e-9, abs=1e-9)
    assert area == pytest.approx(stats.wasserstein_distance(r, c), rel=1e-9, abs=1e-9)


def test_a_detector_scores_the_same_with_and_without_the_merge(monkeypatch) -> None:
    import pyarrow as pa

    rng = np.random.default_rng(3)
    ref = pa.table({"x": rng.normal(size=5000), "k": rng.integers(0, 6, 5000).astype(float)})
    cur = pa.table({"x": rng.normal(0.2, 1.1, 4000), "k": rng.integers(0, 7, 4000).astype(float)})
    compiled = drift.DriftDetector(workers=1).fit(ref).score(cur)
    monkeypatch.setattr(ecdf, "kernel", lambda: None)
    plain = drift.DriftDetector(workers=1).fit(ref).score(cur)
    for a, b in zip(compiled.features, plain.features, strict=True):
        assert a.value == b.value and a.p_value == b.p_value
        assert a.wasserstein == pytest.approx(b.wasserstein, rel=1e-12)
