from __future__ import annotations

from pathlib import Path

import pytest

from keel.config import Settings
from keel.errors import ConfigError


def test_defaults_are_embedded_under_the_data_dir(tmp_path: Path) -> None:
    s = Settings.load(env={}, project_dir=tmp_path)
    assert s.data_dir == str(tmp_path / ".keel")
    assert s.log_url == f"sqlite:///{tmp_path}/.keel/log.db"
    assert s.registry_url == f"sqlite:///{tmp_path}/.keel/registry.db"
    assert s.offline_url == str(tmp_path / ".keel" / "offline")
    assert s.online_url == "memory://"


def test_toml_then_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "keel.toml"
    cfg.write_text('name = "shop"\ndata_dir = "state"\nlog_url = "sqlite:///events.db"\n')
    s = Settings.load(cfg, env={})
    assert s.name == "shop"
    assert s.data_dir == str(tmp_path / "state")
    assert s.log_url == f"sqlite:///{tmp_path}/events.db"  # relative to the project
    s = Settings.load(cfg, env={"KEEL_LOG_URL": "redis://127.0.0.1:6379/2", "HOME": "/x"})
    assert s.log_url == "redis://127.0.0.1:6379/2"
    assert s.data_dir == str(tmp_path / "state")


def test_keel_toml_in_the_project_folder_is_found(tmp_path: Path) -> None:
    (tmp_path / "keel.toml").write_text('name = "found"\n')
    assert Settings.load(env={}, project_dir=tmp_path).name == "found"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        pytest.param(
            'log_ur = "x"\n', {}, "unknown key 'log_ur' — did you mean 'log_url'", id="key"
        ),
        pytest.param("", {"KEEL_LOGURL": "x"}, "KEEL_LOGURL names no setting", id="env"),
        pytest.param("name = 3\n", {}, "Expected `str`", id="type"),
        pytest.param("name = \n", {}, "not valid TOML", id="toml"),
        pytest.param(
            'offline_url = "s3://bucket/offline"\n',
            {},
            "offline store is a local folder .* s3:// is not supported",
            id="offline-s3",
        ),
        pytest.param(
            '[[routes]]\nname = "fraud"\nmodel = "fraud@1"\nruntime = "onnx"\n',
            {},
            "runtime 'onnx' is for builtin text models",
            id="route-runtime",
        ),
        pytest.param(
            '[[routes]]\nname = "e"\nmodel = "builtin:all-MiniLM-L6-v2"\nruntime = "tensorrt"\n',
            {},
            "unknown runtime 'tensorrt'; one of auto, torch, onnx, onnx-int8",
            id="route-runtime-unknown",
        ),
        pytest.param(
            '[[routes]]\nname = "e"\nmodel = "builtin:all-MiniLM-L6-v2"\nruntime = "onnx-int8"'
            '\ndevice = "cuda"\n',
            {},
            "runs on the CPU",
            id="route-runtime-cuda",
        ),
    ],
)
def test_bad_settings_are_refused_by_name(tmp_path: Path, text, env, message) -> None:
    cfg = tmp_path / "keel.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Settings.load(cfg, env=env)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(tmp_path / "nope.toml", env={})


def test_a_job_attempts_own_variables_are_not_settings(tmp_path) -> None:
    # A job's command runs `keel …` with KEEL_JOB_ID and KEEL_JOB_ATTEMPT set for it.
    settings = Settings.load(
        env={"KEEL_JOB_ID": "train-fraud-x1y2z", "KEEL_JOB_ATTEMPT": "2"}, project_dir=tmp_path
    )
    assert settings.jobs_url == "local://"
    with pytest.raises(ConfigError, match="KEEL_JOB_IDS names no setting"):
        Settings.load(env={"KEEL_JOB_IDS": "x"}, project_dir=tmp_path)


def test_jobs_url_schemes_that_are_not_implemented_are_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="the scheme 'ray' is not implemented"):
        Settings.load(env={"KEEL_JOBS_URL": "ray://127.0.0.1:10001"}, project_dir=tmp_path)


RAMP_ROUTE = """
[[routes]]
name = "fraud"
model = "fraud@champion"

[routes.canary]
model = "fraud@challenger"
{canary}
"""


def test_a_canary_ramp_starts_at_its_first_step(tmp_path: Path) -> None:
    cfg = tmp_path / "keel.toml"
    cfg.write_text(RAMP_ROUTE.format(canary="steps = [5, 25, 50, 100]\nstep_s = 600"))
    canary = Settings.load(cfg, env={}).routes[0].canary
    assert canary.steps == [5.0, 25.0, 50.0, 100.0]
    assert canary.percent == 5.0 and canary.step_s == 600 and canary.step_requests is None


@pytest.mark.parametrize(
    ("canary", "message"),
    [
        pytest.param(
            "steps = [25, 5, 100]", "canary steps must be strictly increasing", id="order"
        ),
        pytest.param(
            "steps = [5, 5, 100]", "canary steps must be strictly increasing", id="repeat"
        ),
        pytest.param("steps = [0, 50, 100]", r"within \(0, 100\]", id="zero"),
        pytest.param("steps = [5, 50, 120]", r"within \(0, 100\]", id="over-100"),
        pytest.param("steps = [5, 25, 50]", "end at 100", id="no-end"),
        pytest.param(
            "steps = [5, 25, 100]\npercent = 10",
            "canary percent 10 is not a step of the ramp",
            id="percent-off-ramp",
        ),
        pytest.param("step_s = 60", "canary step_requests and step_s pace a ramp", id="no-steps"),
        pytest.param(
            "steps = [5, 100]\nstep_requests = 0",
            "canary step_requests must be at least 1",
            id="step-requests",
        ),
        pytest.param("steps = [5, 100]\nstep_s = -1", "canary step_s must be >= 0", id="step-s"),
        pytest.param('steps = ["a"]', "Expected `float`", id="type"),
    ],
)
def test_bad_canary_ramps_are_refused_by_name(tmp_path: Path, canary, message) -> None:
    cfg = tmp_path / "keel.toml"
    cfg.write_text(RAMP_ROUTE.format(canary=canary))
    with pytest.raises(ConfigError, match=message):
        Settings.load(cfg, env={})


def test_a_ramp_may_resume_at_a_step_or_stay_rolled_back() -> None:
    from keel.config import CanaryConfig

    assert CanaryConfig(model="m@c", steps=[5, 25, 100], percent=25).percent == 25.0
    assert CanaryConfig(model="m@c", steps=[5, 25, 100], percent=0).percent == 0.0
    assert CanaryConfig(model="m@c").percent == 10.0  # no ramp: the default share


def test_a_file_url_offline_store_is_a_local_folder(tmp_path: Path) -> None:
    s = Settings.load(env={"KEEL_OFFLINE_URL": f"file://{tmp_path}/history"})
    assert s.offline_url == f"{tmp_path}/history"
