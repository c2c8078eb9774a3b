"""A run folder resumes only with the config it was started with."""

from __future__ import annotations

import pytest

from linguachain.config import ConfigError, load_config
from linguachain.server_app.results import RunFolder


def test_resume_rejects_changed_config(tmp_path):
    folder = RunFolder.create(load_config({"train.lr": 0.003}), tmp_path)
    folder.append_metrics({"round": 0})

    with pytest.raises(ConfigError, match=r"train\.lr=0\.003 -> 0\.01") as error:
        RunFolder.create(load_config({"train.lr": 0.01}), tmp_path)
    assert "output.run_id" in str(error.value)
    # The folder keeps the config it was started with.
    assert "lr: 0.003" in (tmp_path / "config.yaml").read_text()


def test_resume_allows_more_rounds(tmp_path):
    folder = RunFolder.create(load_config({"train.rounds": 2}), tmp_path)
    folder.append_metrics({"round": 0})
    RunFolder.create(load_config({"train.rounds": 4, "output.save_model": False}), tmp_path)
    assert "rounds: 4" in (tmp_path / "config.yaml").read_text()


def test_new_folder_takes_any_config(tmp_path):
    RunFolder.create(load_config({"train.lr": 0.003}), tmp_path)
    # No round was recorded yet, so this is a new run, not a resume.
    RunFolder.create(load_config({"train.lr": 0.01}), tmp_path)
    assert "lr: 0.01" in (tmp_path / "config.yaml").read_text()
