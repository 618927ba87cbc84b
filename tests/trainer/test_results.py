"""Where a run's result is: model files found on disk, the Hub and W&B pages recorded by the plugin."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from axolotl_job_runner.plugin import JobRunnerPlugin, ResultsRecorder
from axolotl_job_runner.results import model_files, read_record, results_record
from axolotl_job_runner.settings import STATE_FILE_ENV


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_adapter_full_and_merged_weights(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert model_files(out) == model_files(tmp_path / "missing")  # nothing either way
    assert model_files(out).adapter_path is None and model_files(out).model_path is None
    _touch(out / "adapter_model.safetensors")
    assert (model_files(out).adapter_path, model_files(out).model_path) == (str(out), None)
    _touch(out / "merged" / "model.safetensors.index.json")
    assert (model_files(out).adapter_path, model_files(out).model_path) == (str(out), str(out / "merged"))

    full = tmp_path / "full"
    _touch(full / "model.safetensors")
    assert (model_files(full).adapter_path, model_files(full).model_path) == (None, str(full))


class _State:
    is_world_process_zero = True


def test_recorder_writes_the_wandb_run_and_the_hub_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_file = tmp_path / "progress.json"
    run = types.SimpleNamespace(url="https://wandb.ai/team/proj/runs/abc")
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(run=run))
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    recorder = ResultsRecorder({STATE_FILE_ENV: str(state_file)})
    recorder.on_train_begin(None, _State(), None)
    assert read_record(state_file) == {"wandbUrl": "https://wandb.ai/team/proj/runs/abc"}
    recorder.pushed("me/model")
    assert read_record(state_file) == {
        "wandbUrl": "https://wandb.ai/team/proj/runs/abc",
        "hubUrl": "http://127.0.0.1:9/me/model",  # HF_ENDPOINT honoured
    }


def test_no_wandb_run_no_url_and_other_ranks_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_file = tmp_path / "progress.json"
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(run=None))
    recorder = ResultsRecorder({STATE_FILE_ENV: str(state_file)})
    recorder.on_train_begin(None, _State(), None)
    assert not results_record(state_file).exists()

    other = _State()
    other.is_world_process_zero = False
    follower = ResultsRecorder({STATE_FILE_ENV: str(state_file)})
    follower.on_train_begin(None, other, None)
    follower.pushed("me/model")
    assert not results_record(state_file).exists()


def test_the_plugin_records_a_push_only_when_hub_model_id_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_file = tmp_path / "progress.json"
    monkeypatch.setenv(STATE_FILE_ENV, str(state_file))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(run=None))
    plugin = JobRunnerPlugin()
    trainer = types.SimpleNamespace(hub_model_id="resolved-user/model")  # the Trainer resolves bare names
    callbacks = plugin.add_callbacks_post_trainer({}, trainer)
    assert any(isinstance(c, ResultsRecorder) for c in callbacks)
    plugin.post_train({}, None)
    assert not results_record(state_file).exists()
    plugin.post_train({"hub_model_id": "model"}, None)
    assert json.loads(results_record(state_file).read_text())["hubUrl"].endswith("/resolved-user/model")


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '{"hubUrl": 5, "wandbUrl": ""}'])
def test_a_torn_or_odd_record_is_ignored(tmp_path: Path, text: str) -> None:
    state_file = tmp_path / "progress.json"
    results_record(state_file).write_text(text)
    assert read_record(state_file) == {}
