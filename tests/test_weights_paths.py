"""One resolver for every config key that names weights (model.teacher_ckpt, ckpt, student_ckpt, ...)."""

from __future__ import annotations

import logging
import os

import pytest

from pid.eval.inputs import resolve_ckpt
from pid.utils.errors import MissingWeightsError
from pid.weights.paths import resolve_weights_path


def _file(path, mtime):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_a_glob_resolves_to_its_newest_match_and_says_so(tmp_path, caplog):
    old = _file(tmp_path / "runs" / "b" / "pid_decoder.safetensors", 1_000)
    new = _file(tmp_path / "runs" / "a" / "pid_decoder.safetensors", 2_000)
    pattern = f"{tmp_path}/runs/*/pid_decoder.safetensors"
    with caplog.at_level(logging.INFO, logger="pid.weights.paths"):
        assert resolve_ckpt(pattern, "ckpt") == new
    assert caplog.messages == [f"ckpt={pattern}: {new}, the newest of 2 matches"]
    os.utime(old, (3_000, 3_000))
    assert resolve_weights_path(pattern, "model.teacher_ckpt", "PiD teacher", "an export") == old


def test_a_run_folder_stands_for_its_export_and_other_folders_pass_through(tmp_path):
    export = _file(tmp_path / "run" / "pid_decoder.safetensors", 1_000)
    assert resolve_ckpt(str(tmp_path / "run"), "ckpt") == export
    dcp = tmp_path / "official" / "checkpoints"
    dcp.mkdir(parents=True)
    assert resolve_ckpt(str(dcp), "ckpt") == dcp  # the weights reader takes or refuses it, saying why


def test_home_expands(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    f = _file(tmp_path / "w.safetensors", 1_000)
    assert resolve_ckpt("~/w.safetensors", "ckpt") == f


@pytest.mark.parametrize("value", ["{tmp}/nothing/*.safetensors", "{tmp}/missing.safetensors"])
def test_nothing_there_names_the_key_and_the_path(tmp_path, value):
    value = value.format(tmp=tmp_path)
    with pytest.raises(MissingWeightsError, match="student_ckpt") as err:
        resolve_ckpt(value, "student_ckpt")
    assert value in str(err.value) and err.value.config_key == "student_ckpt"


def test_unset_is_none_for_an_optional_checkpoint_and_an_error_for_a_required_one():
    assert resolve_ckpt(None, "student_ckpt") is None
    with pytest.raises(MissingWeightsError, match="model.teacher_ckpt"):
        resolve_weights_path("???", "model.teacher_ckpt", "PiD teacher", "an export")


def test_a_run_folder_without_its_export_says_the_run_stopped_early(tmp_path):
    run = tmp_path / "runs" / "2026-01-01_00-00-00"
    run.mkdir(parents=True)
    (run / "train.log").write_text("stopped\n")
    with pytest.raises(MissingWeightsError, match="run folder of pid.train without pid_decoder") as err:
        resolve_ckpt(str(run), "ckpt")
    assert err.value.config_key == "ckpt" and "train.log" in str(err.value)


def test_the_log_says_how_long_the_chosen_run_trained(tmp_path, caplog):
    export = _file(tmp_path / "run" / "pid_decoder.safetensors", 1_000)
    (tmp_path / "run" / "run_complete.json").write_text('{"global_step": 2, "time": "x"}')
    with caplog.at_level(logging.INFO, logger="pid.weights.paths"):
        resolve_ckpt(f"{tmp_path}/*/pid_decoder.safetensors", "ckpt")
        resolve_ckpt(str(tmp_path / "run"), "ckpt")
    assert caplog.messages == [
        f"ckpt={tmp_path}/*/pid_decoder.safetensors: {export} (trained 2 steps), the newest of 1 match",
        f"ckpt={tmp_path / 'run'}: the run folder's export {export} (trained 2 steps)"]



def test_load_decoder_names_its_argument_and_refuses_a_run_without_export(tmp_path):
    from pid.api import load_decoder

    with pytest.raises(MissingWeightsError, match="path=/path/to/weights"):
        load_decoder(tmp_path / "nothing.safetensors")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run_identity.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match="run folder of pid.train"):
        load_decoder(tmp_path / "run")


def test_a_glob_passes_over_runs_without_an_export(tmp_path, caplog):
    export = _file(tmp_path / "runs" / "a" / "pid_decoder.safetensors", 1_000)
    failed = tmp_path / "runs" / "b"  # newer: a run whose config check failed
    failed.mkdir()
    (failed / "train.log").write_text("Config values out of range\n")
    with caplog.at_level(logging.INFO, logger="pid.weights.paths"):
        assert resolve_ckpt(f"{tmp_path}/runs/*", "ckpt") == export
    assert "passed over: 1 run folder(s) without an export" in caplog.messages[0]
    with pytest.raises(MissingWeightsError, match="1 run folder"):
        resolve_ckpt(f"{tmp_path}/runs/b*", "ckpt")


def test_a_glob_with_a_compatibility_check_takes_the_newest_compatible_match(tmp_path, caplog):
    from pid.utils.errors import PiDConfigError

    old = _file(tmp_path / "runs" / "a" / "pid_decoder.safetensors", 1_000)
    new = _file(tmp_path / "runs" / "b" / "pid_decoder.safetensors", 2_000)
    refuse_b = lambda p: PiDConfigError("another latent") if p.parent.name == "b" else None  # noqa: E731
    with caplog.at_level(logging.INFO, logger="pid.weights.paths"):
        assert resolve_ckpt(f"{tmp_path}/runs/*", "ckpt", compatible=refuse_b) == old
    assert f"1 newer export(s) of another model ({new}: another latent)" in caplog.messages[0]
    with pytest.raises(PiDConfigError, match="none of its 2 finished run") as err:
        resolve_ckpt(f"{tmp_path}/runs/*", "ckpt", compatible=lambda p: PiDConfigError("another latent"))
    assert f"The newest, {new}:\nanother latent" in str(err.value)


def test_a_stopped_run_points_to_its_last_checkpoint(tmp_path):
    last = _file(tmp_path / "run" / "checkpoints" / "last.ckpt", 1_000)
    (tmp_path / "run" / "train.log").write_text("stopped by a signal\n")
    with pytest.raises(MissingWeightsError, match=f"ckpt={last}"):
        resolve_ckpt(str(tmp_path / "run"), "ckpt")
