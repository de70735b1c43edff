"""Fault injection: SIGKILL and SIGINT at chosen points of `experts`, `distill` and `tune`, then a rerun.

Each case runs ``python -m autoselmatch ...`` on ``digits`` with tiny budgets
in a subprocess that kills or interrupts itself at the n-th hit of a named
point (``AUTOSELMATCH_FAULT``, see :func:`autoselmatch.runtime.fault_point`),
or is killed after a seeded random delay. Then it checks what the crash left
(files complete and valid or absent, finished trials kept), reruns the same
command to completion, and compares the outcome with an uninterrupted run:
identical expert files and distilled sets, the same finished trials (each
point once, same values), no RUNNING trial, the same best parameters and
final set. ``pytest -m faults -v`` lists one test per kill point.

Only the runs that are killed need a process of their own; the reruns and
the uninterrupted experts and distill runs go through the same command line
in this process (``CliRunner``), which saves a Python and torch start-up each.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

from autoselmatch.cli import cli
from autoselmatch.experts import ExpertStore
from autoselmatch.fileio import load_torch

pytestmark = pytest.mark.faults

INTERRUPTED = "Interrupted; finished work is saved, rerun the same command to resume."
MODEL = '{name="convnet", depth=1, width=8, norm="batch"}'
SETTINGS = [  # shared by the three commands, so distill and tune reuse the experts and scores of the cache
    "--cache-dir", "cache",
    "--set", "experts.num_experts=2", "--set", "experts.epochs=3", "--set", f"experts.model={MODEL}",
    "--set", "scores.epochs=1", "--set", "scores.networks=1", "--set", f"scores.model={MODEL}",
    "--set", "distill.max_start_epoch=1", "--set", "distill.expert_epochs=2", "--set", "distill.syn_steps=3",
    "--set", "distill.batch_syn=20",
    "--set", f"evaluate.model={MODEL}", "--set", "evaluate.epochs=20", "--set", "evaluate.runs=1",
    "--set", "evaluate.augment=none",
]
COMMANDS = {
    "experts": ["experts", "--dataset", "digits", *SETTINGS],
    # --resume from the start: the command a user reruns after a crash is the same one
    "distill": ["distill", "--dataset", "digits", "--ipc", "5", "--alpha", "0.5", "--beta", "0.2", "--iterations", "6",
                "--out", "out", "--resume", *SETTINGS, "--set", "distill.checkpoint_every=2",
                "--set", "distill.eval_every=3"],
    # grid search without pruning: 3 beta trials, 2 alpha trials (2 iterations each), a final set of 4 iterations
    "tune": ["tune", "--dataset", "digits", "--ipc", "5", "--storage", "sqlite:///studies/digits.db", *SETTINGS,
             "--set", "tune.search=grid", "--set", "tune.pruner=none", "--set", "tune.beta_seeds=1",
             "--set", "tune.beta_grid=[0.0, 0.2, 0.4]", "--set", "tune.alpha_grid=[0.5, 1.0]",
             "--set", "tune.trial_iterations=2", "--set", "distill.iterations=4", "--set", "distill.eval_every=2",
             "--set", "distill.checkpoint_every=1"],
}
STUDIES = ("digits-ipc5-beta", "digits-ipc5-alpha")


def arguments(command: str) -> list[str]:
    return ["--quiet", "--device", "cpu", "--seed", "0", *COMMANDS[command]]


def start(cwd: Path, command: str, fault: str | None = None) -> subprocess.Popen:
    """``python -m autoselmatch COMMAND`` in ``cwd``, with ``AUTOSELMATCH_FAULT=fault`` when given."""
    env = {k: v for k, v in os.environ.items() if k != "AUTOSELMATCH_FAULT"}
    env.update(OMP_NUM_THREADS="1", AUTOSELMATCH_NO_PROGRESS="1")
    if fault is not None:
        env["AUTOSELMATCH_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-m", "autoselmatch", *arguments(command)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """In the child, before exec: SIGINT acts again (a shell that starts the suite as a background job
    ignores it, the child inherits that, and Python then installs no Ctrl-C handler: an INT fault would
    do nothing)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


#: A warning logged by the run (``HH:MM:SS WARNING message``, the CLI's log format).
WARNING_LINE = re.compile(r"^\d\d:\d\d:\d\d WARNING ")


def run(cwd: Path, command: str, fault: str | None = None) -> subprocess.CompletedProcess:
    proc = start(cwd, command, fault)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def check_killed(result: subprocess.CompletedProcess, how: str) -> None:
    """SIGKILL: the process died of it. SIGINT: exit 130 with the one-line message and no traceback (the
    run's own warnings, which --quiet keeps, may come before it: the tiny settings barely distil)."""
    if how == "KILL":
        assert result.returncode == -signal.SIGKILL, result.stderr
    else:
        assert result.returncode == 130, result.stderr
        lines = [line for line in result.stderr.strip().splitlines() if not WARNING_LINE.match(line)]
        assert lines == [INTERRUPTED], result.stderr


def complete_rerun(cwd: Path, command: str) -> None:
    """The same command to completion, in this process (working directory ``cwd``)."""
    here = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, arguments(command), catch_exceptions=False)
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------------------------
# Snapshots of what a run leaves
# --------------------------------------------------------------------------------------------


def expert_folder(cwd: Path) -> Path | None:
    folders = list((cwd / "cache" / "experts").glob("digits-*"))
    assert len(folders) <= 1
    return folders[0] if folders else None


def visible_files(folder: Path) -> set[str]:
    """File names, without the hidden temporary files an interrupted atomic write leaves (never read)."""
    return {p.name for p in folder.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))}


def distill_snapshot(out: Path) -> dict:
    result = load_torch(out / "result.pt")
    checkpoint = load_torch(out / "checkpoint.pt")
    return {"images": result["images"], "eta": result["eta"], "losses": result["loss_history"],
            "evals": result["evals"], "iterations": result["iterations"], "pixels": checkpoint["pixels"],
            "generator": checkpoint["generator"]}


def trials(cwd: Path) -> dict[str, list[optuna.trial.FrozenTrial]]:
    storage = f"sqlite:///{cwd / 'studies' / 'digits.db'}"
    if not (cwd / "studies" / "digits.db").is_file():
        return {}
    names = optuna.get_all_study_names(storage)
    return {name: optuna.load_study(study_name=name, storage=storage).get_trials() for name in names}


def finals(cwd: Path) -> dict:
    storage = f"sqlite:///{cwd / 'studies' / 'digits.db'}"
    attrs = optuna.load_study(study_name="digits-ipc5-alpha", storage=storage).user_attrs["final"]
    return {k: attrs[k] for k in ("alpha", "beta", "test_accuracy", "iterations")}


def finished_points(study_trials: list[optuna.trial.FrozenTrial]) -> dict[float, float]:
    """param -> value of the COMPLETE trials; each point must appear once."""
    done = [t for t in study_trials if t.state == TrialState.COMPLETE]
    counts = Counter(v for t in done for v in t.params.values())
    assert all(n == 1 for n in counts.values()), counts
    return {v: t.value for t in done for v in t.params.values()}


# --------------------------------------------------------------------------------------------
# The uninterrupted runs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs of the three commands in one folder; its cache ends with experts and scores.

    ``tune`` runs as a subprocess, so its wall time bounds the random kill delays.
    """
    cwd = tmp_path_factory.mktemp("reference")
    complete_rerun(cwd, "experts")
    complete_rerun(cwd, "distill")
    began = time.monotonic()
    result = run(cwd, "tune")
    assert result.returncode == 0, result.stderr
    folder = expert_folder(cwd)
    return {
        "cwd": cwd,
        "tune_seconds": time.monotonic() - began,
        "expert_files": {name: (folder / name).read_bytes() for name in visible_files(folder)},
        "distill": distill_snapshot(cwd / "out"),
        "points": {name: finished_points(t) for name, t in trials(cwd).items()},
        "final": finals(cwd),
    }


def with_cache(reference, tmp_path: Path) -> Path:
    """A fresh working folder holding the reference's experts and scores."""
    shutil.copytree(reference["cwd"] / "cache", tmp_path / "cache")
    return tmp_path


# --------------------------------------------------------------------------------------------
# experts
# --------------------------------------------------------------------------------------------

EXPERT_FAULTS = [
    "experts.epoch:2:KILL",  # epoch 2's row written, its state not saved
    "experts.epoch:2:INT",
    "write:expert_000.state.pt:2:KILL",  # epoch 2's state complete, not renamed
    "experts.recorded:1:KILL",  # expert 0 in the manifest, its file not renamed
    "write:manifest.json:2:KILL",  # expert 0 finished, the manifest not renamed
    "experts.epoch:5:KILL",  # expert 0 finished, expert 1 mid-training
]


@pytest.mark.parametrize("fault", EXPERT_FAULTS)
def test_experts_survive(reference, tmp_path, fault):
    check_killed(run(tmp_path, "experts", fault), fault.rsplit(":", 1)[1])
    expected = reference["expert_files"]
    folder = expert_folder(tmp_path)
    if folder is not None:  # what the crash left: finished files are complete, the manifest parses
        for path in folder.glob("expert_???.npy"):
            assert path.read_bytes() == expected[path.name]
        if (folder / "manifest.json").is_file():
            json.loads((folder / "manifest.json").read_text())

    complete_rerun(tmp_path, "experts")
    folder = expert_folder(tmp_path)
    assert visible_files(folder) == set(expected)  # no .partial.npy or .state.pt left over
    for name, blob in expected.items():
        if name != "manifest.json":
            assert (folder / name).read_bytes() == blob, name
    records = json.loads((folder / "manifest.json").read_text())["experts"]
    reference_records = json.loads(expected["manifest.json"])["experts"]
    for index, record in reference_records.items():
        assert {k: records[index][k] for k in ("sha256", "bytes", "val_acc", "train_acc")} == \
               {k: record[k] for k in ("sha256", "bytes", "val_acc", "train_acc")}
    ExpertStore(folder, num_experts=2).verify()


# --------------------------------------------------------------------------------------------
# distill
# --------------------------------------------------------------------------------------------

DISTILL_FAULTS = [
    "distill.iteration:3:KILL",  # mid-iteration, after the checkpoint of iteration 2
    "distill.iteration:3:INT",  # Ctrl-C mid-iteration: the checkpoint of iteration 2 is rewritten, then exit
    "write:checkpoint.pt:2:KILL",  # the checkpoint of iteration 4 complete, not renamed
    "write:checkpoint.pt:1:INT",  # Ctrl-C inside the first checkpoint write
    "write:result.pt:1:KILL",  # the final checkpoint written, the result not renamed
]


@pytest.mark.parametrize("fault", DISTILL_FAULTS)
def test_distill_survives(reference, tmp_path, fault):
    cwd = with_cache(reference, tmp_path)
    check_killed(run(cwd, "distill", fault), fault.rsplit(":", 1)[1])
    expected = reference["distill"]
    out = cwd / "out"
    assert not (out / "result.pt").exists()  # every fault point is before the result is in place
    if (out / "checkpoint.pt").is_file():  # a checkpoint that is there loads and is of a finished iteration
        checkpoint = load_torch(out / "checkpoint.pt")
        assert checkpoint["iteration"] in (2, 4, 6) and len(checkpoint["losses"]) == checkpoint["iteration"]

    complete_rerun(cwd, "distill")
    got = distill_snapshot(out)
    for key in ("images", "losses", "pixels", "generator"):
        assert torch.equal(got[key], expected[key]), key
    for key in ("eta", "evals", "iterations"):
        assert got[key] == expected[key], key
    assert visible_files(out) == {"result.pt", "checkpoint.pt"}


# --------------------------------------------------------------------------------------------
# tune
# --------------------------------------------------------------------------------------------

# Hits of one run: beta trials 1-3 (claimed, 2 reports, told each), alpha trials (claimed, 2 iterations
# each with a checkpoint, 1 report, a last checkpoint, result.pt, told: MTT's result.pt 1, the grid's 2-3),
# final sets (the window's result.pt 4, random selection's 5; MTT's checkpoint 10 copied from its trial,
# 2 more iterations, checkpoints 11-13, result.pt 6; then SelMatch's, made whichever wins under the default
# tune.choose_on = final).
TUNE_FAULTS = [  # per study the baseline trial comes first (random selection, then MTT), then the grid's
    "tune.claimed:1:KILL",  # the first trial claimed (RUNNING), not started: the random-selection baseline
    "tune.claimed:2:INT",  # Ctrl-C between the baseline and the first beta grid trial
    "tune.report:3:KILL",  # mid-way through the first beta grid trial
    "tune.told:4:KILL",  # after the last beta trial, before the alpha stage
    "distill.iteration:2:KILL",  # mid-way through the MTT baseline (its checkpoint of iteration 1 exists)
    "distill.iteration:4:KILL",  # mid-way through the first alpha grid trial
    "tune.report:10:INT",  # Ctrl-C in the first alpha grid trial, after its report
    "write:result.pt:2:KILL",  # the first alpha grid trial's set written, not renamed, the trial not told
    "write:checkpoint.pt:10:KILL",  # while MTT's checkpoint is copied for its final set
    "write:result.pt:6:INT",  # Ctrl-C while a final set (here MTT's, continued to distill.iterations) is written
]
RANDOM_KILLS = [0, 1]  # seeds of the random delays


def check_study_after_crash(cwd: Path) -> dict[str, dict[int, tuple]]:
    """What the killed run had finished: study -> trial number -> (params, value)."""
    return {name: {t.number: (t.params, t.value) for t in ts if t.state == TrialState.COMPLETE}
            for name, ts in trials(cwd).items()}


def check_tune_rerun(reference, cwd: Path, finished_before: dict[str, dict[int, tuple]]) -> None:
    complete_rerun(cwd, "tune")
    after = trials(cwd)
    assert set(after) == set(STUDIES)
    for name, study_trials in after.items():
        by_number = {t.number: t for t in study_trials}
        for number, (params, value) in finished_before.get(name, {}).items():  # kept, once, unchanged
            assert by_number[number].state == TrialState.COMPLETE
            assert (by_number[number].params, by_number[number].value) == (params, value)
        assert not [t.number for t in study_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        assert finished_points(study_trials) == reference["points"][name]  # same points, same values
        assert sum(t.state == TrialState.FAIL for t in study_trials) <= 1  # only the interrupted trial
    assert finals(cwd) == reference["final"]


@pytest.mark.parametrize("fault", TUNE_FAULTS)
def test_tune_survives(reference, tmp_path, fault):
    cwd = with_cache(reference, tmp_path)
    how = fault.rsplit(":", 1)[1]
    check_killed(run(cwd, "tune", fault), how)
    if how == "INT":  # Ctrl-C fails the running trial itself; nothing waits for the rerun to clean up
        assert not [t for ts in trials(cwd).values() for t in ts if t.state == TrialState.RUNNING]
    check_tune_rerun(reference, cwd, check_study_after_crash(cwd))


@pytest.mark.parametrize("seed", RANDOM_KILLS)
def test_tune_survives_a_kill_at_a_random_moment(reference, tmp_path, seed):
    # The delay is a share of the reference run's time, measured under another load: a run that
    # finishes before its kill is tried again, in a fresh folder, with half the delay.
    delay = random.Random(seed).uniform(0.15, 0.75) * reference["tune_seconds"]
    for attempt in range(4):
        cwd = with_cache(reference, tmp_path / f"attempt{attempt}")
        proc = start(cwd, "tune")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            break
        delay /= 2
    assert proc.returncode == -signal.SIGKILL, "finished before the kill, four times"
    check_tune_rerun(reference, cwd, check_study_after_crash(cwd))
