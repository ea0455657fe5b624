"""The contract every explainer keeps, run on each of them: contributions add up to the
outputs, rows are validated against the features, and results are JSON-ready."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keel.errors import ValidationError
from keel.explain import (
    Explainer,
    Explanation,
    KernelExplainer,
    LinearExplainer,
    TreeExplainer,
    fit_surrogate,
)
from keel.runtimes import LightGBMRuntime, XGBoostRuntime

KINDS = ["tree-lightgbm", "tree-xgboost", "kernel", "linear", "surrogate-tree", "surrogate-linear"]


@pytest.fixture(params=KINDS)
def explainer(request, lgb_binary, xgb_binary, data) -> Explainer:
    kind = request.param
    if kind == "tree-lightgbm":
        return TreeExplainer(LightGBMRuntime(lgb_binary))
    if kind == "tree-xgboost":
        return TreeExplainer(XGBoostRuntime(xgb_binary))
    if kind == "kernel":
        runtime = LightGBMRuntime(lgb_binary)
        score = lambda x: runtime.predict({"features": x})["score"]  # noqa: E731
        return KernelExplainer(score, data.x[:6], data.features, samples=40)
    if kind == "linear":
        mean = np.nanmean(data.x, axis=0)
        return LinearExplainer(np.arange(1.0, 7.0), -0.5, mean, data.features)
    target = lgb_binary.predict(data.x, raw_score=True)
    return fit_surrogate(data.x, target, data.features, kind=kind.split("-")[1]).explainer()


def test_contributions_add_up_to_the_outputs(explainer, data) -> None:
    e = explainer.explain(data.x[:40])
    assert isinstance(e, Explanation) and len(e) == 40
    assert (e.method, e.output, e.features) == (
        explainer.method,
        explainer.output,
        explainer.features,
    )
    assert e.contributions.shape == (40, len(data.features))
    assert e.outputs.shape == (40,)
    assert np.isfinite(e.contributions).all()
    np.testing.assert_allclose(
        e.base_value + e.contributions.sum(axis=1), e.outputs, rtol=1e-9, atol=1e-6
    )
    if explainer.method == "kernel":  # the rows, the background once, every coalition
        assert e.evaluations == 40 + len(explainer.background) + explainer.cost(40) > 0
    else:
        assert e.evaluations == 0 == explainer.cost(40)


def test_one_row_given_flat_is_one_row(explainer, data) -> None:
    one = explainer.explain(data.x[3])
    batch = explainer.explain(data.x[:5])
    np.testing.assert_allclose(one.contributions[0], batch.contributions[3], rtol=1e-9, atol=1e-12)


def test_no_rows_no_contributions(explainer, data) -> None:
    e = explainer.explain(np.empty((0, len(data.features))))
    assert e.contributions.shape == (0, len(data.features)) and e.rows() == []


def test_rows_of_the_wrong_width_name_the_features(explainer, data) -> None:
    with pytest.raises(ValidationError, match=r"expected \(rows, 6\) with columns 'x0', 'x1'"):
        explainer.explain(data.x[:2, :5])
    with pytest.raises(ValidationError, match="must be numbers"):
        explainer.explain(np.array([["a"] * 6]))


def test_rows_are_json_ready_and_top_keeps_the_largest(explainer, data) -> None:
    e = explainer.explain(data.x[:5])
    rows = e.rows()
    json.dumps(rows)
    assert [list(r["contributions"]) for r in rows] == [data.features] * 5
    assert [r["output"] for r in rows] == pytest.approx(e.outputs.tolist())
    for full, top in zip(rows, e.rows(top=3), strict=True):
        kept = list(top["contributions"].items())
        assert len(kept) == 3
        sizes = [abs(v) for _, v in kept]
        assert sizes == sorted(sizes, reverse=True)
        assert sizes[-1] >= max(
            abs(v) for k, v in full["contributions"].items() if k not in top["contributions"]
        )
        assert top["base_value"] == full["base_value"] == pytest.approx(e.base_value)


def test_top_must_be_a_count() -> None:
    e = Explanation("linear", "score", ["a"], 0.0, np.zeros((1, 1)), np.zeros(1))
    with pytest.raises(ValidationError, match="top must be a non-negative integer"):
        e.rows(top=-1)
    assert e.rows(top=0) == [{"output": 0.0, "base_value": 0.0, "contributions": {}}]


def test_an_explanation_checks_its_shapes() -> None:
    with pytest.raises(ValidationError, match=r"expected \[2, 3\]"):
        Explanation("tree", "raw", ["a", "b", "c"], 0.0, np.zeros((2, 2)), np.zeros(2))


def test_linear_explainer_checks_its_arguments() -> None:
    with pytest.raises(ValidationError, match="needs 2 coefficients and 2 means"):
        LinearExplainer(np.ones(3), 0.0, np.zeros(2), ["a", "b"])
    with pytest.raises(ValidationError, match="unknown output space 'prob'"):
        LinearExplainer(np.ones(2), 0.0, np.zeros(2), ["a", "b"], output="prob")
