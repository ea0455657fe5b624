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
