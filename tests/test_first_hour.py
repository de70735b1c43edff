"""What a new user meets in the first hour, beyond the bad-input matrix: logs written to a file or a
pipe, a resumed run, the order of ``studies``, a busy dashboard port, a set evaluated with one run."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from autoselmatch.cli import cli
from autoselmatch.runtime import LOG, LogProgress

TINY = [
    "--set", "scores.epochs=1", "--set", "scores.networks=1",
    "--set", "experts.num_experts=1", "--set", "experts.model.width=8",
    "--set", "distill.max_start_epoch=2", "--set", "distill.expert_epochs=1", "--set", "distill.syn_steps=2",
    "--set", "distill.batch_syn=20", "--set", "distill.iterations=4", "--set", "distill.eval_every=2",
    "--set", "evaluate.model.width=8", "--set", "evaluate.epochs=2", "--set", "evaluate.runs=1",
    "--set", "tune.trial_iterations=4", "--set", "tune.beta_seeds=1",
    "--set", "tune.beta_grid=[0.1, 0.2]", "--set", "tune.alpha_grid=[0.5]",
]
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n: \r, ESC (cursor codes), ...


def _tune(folder, *extra: str) -> subprocess.CompletedProcess:
    """``autoselmatch tune`` on digits in ``folder``, stderr through a pipe (not a terminal), progress every step."""
    env = {k: v for k, v in os.environ.items() if k != "AUTOSELMATCH_NO_PROGRESS"}
    env.update(AUTOSELMATCH_PROGRESS_SECONDS="0", AUTOSELMATCH_DATA=str(folder / "data"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "autoselmatch", "tune", "--dataset", "digits", "--ipc", "10",
                           "--cache-dir", "cache", *TINY, *extra], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A digits tune run twice in one folder: (first run, second run)."""
    folder = tmp_path_factory.mktemp("tuned")
    first = _tune(folder)
    assert first.returncode == 0, first.stderr
    second = _tune(folder)
    assert second.returncode == 0, second.stderr
    return folder, first, second


def test_a_log_through_a_pipe_has_no_control_characters(tuned):
    _, first, _ = tuned
    assert not CONTROL.search(first.stderr), repr(CONTROL.search(first.stderr))
    assert re.search(r"INFO distill: \d+/\d+ \(\d+ %\), loss ", first.stderr)  # progress as plain lines
    assert re.search(r"INFO expert 1/1: \d+/\d+ \(\d+ %\)", first.stderr)


def test_no_nan_before_the_first_evaluation(tuned):
    _, first, _ = tuned
    assert "nan" not in first.stderr
    assert re.search(r"distill: 1/4 \(25 %\), loss [0-9.]+, eta [0-9.e-]+, \d", first.stderr)  # no val yet
    assert re.search(r"distill: 2/4 \(50 %\), loss [0-9.]+, eta [0-9.e-]+, val [0-9.]+ %", first.stderr)


def test_a_resumed_stage_says_how_many_trials_it_reused(tuned):
    _, first, second = tuned
    assert "reused" not in first.stderr
    # the grid's trials and the stage's baseline (random selection, MTT)
    assert re.search(r"digits-ipc10-beta: .*; resuming: [23] finished trials reused", second.stderr), second.stderr
    assert re.search(r"digits-ipc10-alpha: .*; resuming: 2 finished trials reused", second.stderr), second.stderr


def test_tune_prints_one_run_without_a_spread(tuned):
    _, first, _ = tuned
    line = next(line for line in first.stdout.splitlines() if line.startswith("ipc 10"))
    assert re.search(r"test accuracy \d+\.\d\d % \(1 run\)", line) and "±" not in line


def test_studies_lists_beta_before_alpha(tuned, monkeypatch):
    folder, _, _ = tuned
    monkeypatch.chdir(folder)
    result = CliRunner().invoke(cli, ["studies", "--dataset", "digits"])
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.splitlines() if not line.startswith(" ")]  # " ": a summary
    assert names == ["digits-ipc10-beta", "digits-ipc10-alpha"]
    assert re.search(r"best \d+\.\d\d % at beta=", result.output)


def test_a_busy_dashboard_port_is_named_with_a_free_one(tuned, monkeypatch):
    import optuna_dashboard

    folder, _, _ = tuned
    monkeypatch.chdir(folder)
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda *a, **k: pytest.fail("the dashboard was started"))
    before = sorted(p for p in folder.rglob("*"))
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli, ["dashboard", "--dataset", "digits", "--port", str(port)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot listen on 127.0.0.1:{port}: "), result.output
    assert re.search(r"; try --port \d+$", lines[0])
    assert sorted(p for p in folder.rglob("*")) == before


def test_log_progress_logs_plain_lines_only_after_its_period(caplog):
    caplog.set_level(logging.INFO, logger=LOG.name)
    LOG.propagate, propagate = True, LOG.propagate
    try:
        assert list(LogProgress(range(3), desc="fast", total=3, every=3600)) == [0, 1, 2]
        assert not caplog.records  # a short loop stays silent
        bar = LogProgress(range(2), desc="step", total=2, every=0)
        for i in bar:
            bar.set_postfix(loss=f"{i:.1f}")
    finally:
        LOG.propagate = propagate
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["step: 1/2 (50 %), loss 0.0, 0 s", "step: 2/2 (100 %), loss 1.0, 0 s"]


def test_experts_report_validation_accuracy_not_test(tuned):
    _, first, _ = tuned
    assert re.search(r"expert 1/1 done: validation accuracy \d+\.\d\d %", first.stderr), first.stderr
    assert "test accuracy" not in "\n".join(line for line in first.stderr.splitlines() if "expert" in line)
