"""Tune runs in separate processes: SIGKILL and resume, two workers on one journal file.

The runs use the synthetic objectives of test_tune_pipeline.py (imported by
the child processes, so the spawned workers can rebuild them).
"""

import functools
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

from optuna.trial import TrialState

from test_tune_pipeline import Synthetic, config, load, run

TESTS = Path(__file__).resolve().parent

SCRIPT = """
import functools, sys
sys.path.insert(0, {tests!r})
import optuna
from autoselmatch.config import apply_overrides, load_preset
from autoselmatch.tune import tune
from test_tune_pipeline import Synthetic

if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = apply_overrides(load_preset("digits"), {{"tune.pruner": "none", "tune.search": {search!r}}})
    result = tune(cfg, "10", storage={storage!r}, workers={workers},
                  objectives=functools.partial(Synthetic, log={log!r}, delay={delay}, peers={peers},
                                               finish_delay={finish_delay}))
    print(result.ipcs[0].final["result_path"])
"""


def write_script(tmp_path, *, storage, log, search="line", workers=1, delay=0.0, peers=None, finish_delay=0.0):
    path = tmp_path / "run_tune.py"
    path.write_text(textwrap.dedent(SCRIPT.format(tests=str(TESTS), storage=storage, log=str(log), search=search,
                                                  workers=workers, delay=delay, peers=peers or workers,
                                                  finish_delay=finish_delay)))
    return path


def stage_lines(log, stage):
    return [line.split() for line in log.read_text().splitlines() if line.startswith(stage + " ")]


def test_sigkill_then_rerun_completes_without_rerunning_finished_trials(tmp_path):
    storage, log = f"sqlite:///{tmp_path / 'studies.db'}", tmp_path / "calls.log"
    script = write_script(tmp_path, storage=storage, log=log, search="grid", delay=2.0)
    proc = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
            time.sleep(0.05)
        # the third trial has logged its start and sleeps for `delay`: killed mid-trial unless this test stalls 2 s
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = [line.split()[:2] for line in log.read_text().splitlines()]
    assert len(before) >= 3
    killed = load(tmp_path, "digits-ipc10-beta").get_trials(states=(TrialState.RUNNING,))
    assert len(killed) == 1

    run(tmp_path, storage=storage, cfg=config(**{"tune.search": "grid"}), objectives=functools.partial(
        Synthetic, log=log))
    after = [line.split()[:2] for line in log.read_text().splitlines()]
    beta = load(tmp_path, "digits-ipc10-beta")
    assert beta.trials[killed[0].number].state == TrialState.FAIL
    complete = Counter(t.params["beta"] for t in beta.get_trials(states=(TrialState.COMPLETE,)) if "beta" in t.params)
    assert len(complete) == 9 and set(complete.values()) == {1}
    evaluations = Counter(point for stage, point in after if stage == "beta")
    running_point = f"{killed[0].params['beta']:g}"
    assert evaluations[running_point] == 2  # killed mid-trial, retried once
    assert all(n == 1 for point, n in evaluations.items() if point != running_point)
    assert [stage for stage, _ in after].count("random") == 1  # the baseline ran first and is not rerun


def test_two_workers_on_one_journal_finish_without_duplicate_parameters(tmp_path):
    storage, log = f"journal:///{tmp_path / 'studies.log'}", tmp_path / "calls.log"
    script = write_script(tmp_path, storage=storage, log=log, search="grid", workers=2, delay=0.3)
    subprocess.run([sys.executable, str(script)], check=True, timeout=240)
    for stage, size in (("beta", 9), ("alpha", 10)):
        study = load(tmp_path, f"digits-ipc10-{stage}", storage=storage)
        values = [t.params[stage] for t in study.trials if stage in t.params]
        assert len(values) == size and len(set(values)) == size
        assert len(study.trials) == size + 1  # and the stage's baseline, once
        assert {t.state for t in study.trials} == {TrialState.COMPLETE}
        assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) == 2  # both workers ran trials
    assert len(stage_lines(log, "beta")) + len(stage_lines(log, "alpha")) == 9 + 10  # every point evaluated once
    assert len(stage_lines(log, "random")) == len(stage_lines(log, "mtt")) == 1


def test_two_machines_ending_together_make_the_final_set_once(tmp_path):
    """Two `tune` processes on one study: both run trials, one makes the final set, both report it."""
    storage, log = f"journal:///{tmp_path / 'studies.log'}", tmp_path / "calls.log"
    script = write_script(tmp_path, storage=storage, log=log, search="grid", delay=0.3, peers=2, finish_delay=3.0)
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=240)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert len({line[2] for line in stage_lines(log, "alpha")}) == 2  # both processes reached the alpha stage
    assert len(stage_lines(log, "final")) == 1
    assert len(stage_lines(log, "finish-random")) == len(stage_lines(log, "finish-mtt")) == 1
    assert len(stage_lines(log, "random")) == len(stage_lines(log, "mtt")) == 1
    (path,) = {out.strip().splitlines()[-1] for out in outputs}
    assert path == load(tmp_path, "digits-ipc10-alpha", storage=storage).user_attrs["result_path"]
