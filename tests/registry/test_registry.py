"""The registry contract, over SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from keel.errors import ConflictError, KeelError, NotFoundError, ValidationError
from keel.log import open_log
from keel.registry import EVENTS_TOPIC, Registry, TamperedArtifactError

RNG = np.random.default_rng(0)
X = RNG.normal(size=(200, 4))
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)


def test_versions_count_up_per_model(registry: Registry) -> None:
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression().fit(X, Y)
    assert [registry.register("a", m).version for _ in range(3)] == [1, 2, 3]
    assert registry.register("b", m).version == 1
    assert registry.get("a").version == 3  # latest
    assert registry.get("a", 2).version == 2
    assert [v.version for v in registry.versions("a")] == [1, 2, 3]
    assert [(n, c) for n, c, _ in registry.models()] == [("a", 3), ("b", 1)]
    with pytest.raises(NotFoundError, match="no model 'c'"):
        registry.get("c")
    with pytest.raises(NotFoundError, match="no version 9"):
        registry.get("a", 9)
    with pytest.raises(ValidationError, match="invalid"):
        registry.register("bad name!", m)


def test_sklearn_round_trip_and_untrusted_types(registry: Registry) -> None:
    from sklearn.ensemble import RandomForestClassifier

    m = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, Y)
    registry.register("rf", m)
    back = registry.load("rf", 1)
    assert np.array_equal(back.predict_proba(X), m.predict_proba(X))


def test_lightgbm_round_trip(registry: Registry) -> None:
    import lightgbm

    m = lightgbm.LGBMClassifier(n_estimators=10, verbose=-1).fit(X, Y)
    v = registry.register("gbm", m, params=m.get_params())
    assert v.format == "lightgbm"
    np.testing.assert_allclose(registry.load("gbm").predict(X), m.predict_proba(X)[:, 1])


def test_xgboost_round_trip(registry: Registry) -> None:
    import xgboost

    m = xgboost.XGBClassifier(n_estimators=5, max_depth=2).fit(X, Y)
    assert registry.register("xgb", m).format == "xgboost"
    back = registry.load("xgb")
    np.testing.assert_allclose(
        back.predict(xgboost.DMatrix(X)), m.predict_proba(X)[:, 1], rtol=1e-6
    )


def test_torch_round_trip_through_safetensors(registry: Registry) -> None:
    import torch

    net = torch.nn.Linear(4, 2)
    v = registry.register("net", net, init_kwargs={"in_features": 4, "out_features": 2})
    assert v.format == "torch" and v.loader["factory"] == "torch.nn.modules.linear:Linear"
    back = registry.load("net")
    x = torch.tensor(X, dtype=torch.float32)
    assert torch.equal(back(x), net(x))
    with pytest.raises(ValidationError, match="cannot be imported"):
        registry.register("net", net, factory="no.such.module:Net")


def test_onnx_round_trip(registry: Registry) -> None:
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["z"])],
        "add",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    assert registry.register("add", model).format == "onnx"
    back = registry.load("add")
    sess = onnxruntime.InferenceSession(back.SerializeToString())
    a = X.astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": a, "y": a})[0], 2 * a)


class Opaque:
    def __init__(self) -> None:
        self.weights = [1, 2, 3]


def test_pickle_only_when_trusted(registry: Registry) -> None:
    with pytest.raises(ValidationError, match="pass format="):
        registry.register("p", Opaque())
    with pytest.raises(ValidationError, match="trusted=True"):
        registry.register("p", Opaque(), format="pickle")
    registry.register("p", Opaque(), format="pickle", trusted=True)
    with pytest.raises(KeelError, match="runs code when loaded"):
        registry.load("p")
    assert registry.load("p", trusted=True).weights == [1, 2, 3]


def test_tampered_truncated_or_missing_artifacts_are_refused(
    registry: Registry, tmp_path: Path
) -> None:
    from sklearn.linear_model import LogisticRegression

    v = registry.register("m", LogisticRegression().fit(X, Y))
    path = tmp_path / "artifacts" / v.artifact[:2] / v.artifact
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(TamperedArtifactError, match="corrupt or was modified"):
        registry.load("m")
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TamperedArtifactError):
        registry.load("m")
    path.unlink()
    with pytest.raises(NotFoundError, match="missing"):
        registry.load("m")
    path.write_bytes(data)
    assert registry.load("m").predict(X[:3]).shape == (3,)


def test_aliases_move_with_history_and_compare_and_set(registry: Registry) -> None:
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression().fit(X, Y)
    for _ in range(3):
        registry.register("m", m)
    registry.set_alias("m", "champion", 1, reason="first")
    registry.set_alias("m", "challenger", 2)
    move = registry.set_alias("m", "champion", 2, reason="promoted", expected=1)
    assert (move.from_version, move.to_version, move.seq) == (1, 2, 2)
    assert registry.get("m", "champion").version == 2
    assert registry.get("m", 2).aliases == ("challenger", "champion")
    with pytest.raises(ConflictError, match="points to 2, not 1"):
        registry.set_alias("m", "champion", 3, expected=1)
    assert registry.aliases("m")["champion"] == 2  # untouched
    with pytest.raises(NotFoundError, match="no version 7"):
        registry.set_alias("m", "champion", 7)
    with pytest.raises(NotFoundError, match="did you mean 'champion'"):
        registry.get("m", "champoin")
    registry.set_alias("m", "challenger", None, reason="retired")
    assert "challenger" not in registry.aliases("m")
    history = [
        (h.alias, h.from_version, h.to_version, h.reason) for h in registry.alias_history("m")
    ]
    assert history == [
        ("challenger", None, 2, ""),
        ("challenger", 2, None, "retired"),
        ("champion", None, 1, "first"),
        ("champion", 1, 2, "promoted"),
    ]


def test_two_processes_moving_one_alias(
    registry: Registry, registry_url: str, tmp_path: Path
) -> None:
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression().fit(X, Y)
    for _ in range(2):
        registry.register("m", m)
    script = textwrap.dedent(f"""
        import sys
        from keel.registry import Registry
        reg = Registry({registry_url!r}, {str(tmp_path / "artifacts")!r})
        me = int(sys.argv[1])
        for i in range(15):
            reg.set_alias("m", "champion", me, reason=f"p{{me}}-{{i}}")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(v)]) for v in (1, 2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    history = registry.alias_history("m", "champion")
    assert [h.seq for h in history] == list(range(1, 31))
    for before, after in itertools.pairwise(history):
        assert after.from_version == before.to_version  # an unbroken chain: no lost move
    assert registry.aliases("m")["champion"] == history[-1].to_version


def test_two_processes_registering(registry: Registry, registry_url: str, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        from sklearn.linear_model import LogisticRegression
        from keel.registry import Registry
        reg = Registry({registry_url!r}, {str(tmp_path / "artifacts")!r})
        m = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
        for _ in range(8):
            reg.register("race", m)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert [v.version for v in registry.versions("race")] == list(range(1, 17))


def test_moves_are_published_on_the_log(registry_url: str, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    log = open_log("sqlite://")
    reg = Registry(registry_url, str(tmp_path / "artifacts"), log=log)
    reg.register("m", LogisticRegression().fit(X, Y), description="v1")
    reg.set_alias("m", "champion", 1, reason="go")
    events = log.read(EVENTS_TOPIC, 0, 0).to_pylist()
    assert [(e["event"], e["alias"], e["to_version"]) for e in events] == [
        ("registered", None, 1),
        ("alias_moved", "champion", 1),
    ]
    reg.close()
