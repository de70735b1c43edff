"""Three `autoselmatch tune` processes on one PostgreSQL database, as on three machines.

Nothing is lost or run twice, and a worker killed mid-trial has its trial
failed by Optuna's heartbeat and its point finished by another worker.

Needs a server: ``AUTOSELMATCH_TEST_POSTGRES_URL=postgresql+psycopg2://USER:PW@HOST:PORT/DB``
(``eval "$(.ci/postgres.sh start)"`` starts one and sets it; the role must be
allowed to create databases: each test makes its own and drops it). Without
it the test is skipped, but under ``CI=true`` it fails, so a CI whose database
did not come up cannot pass silently.
"""

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest
from optuna.trial import TrialState

URL_VARIABLE = "AUTOSELMATCH_TEST_POSTGRES_URL"
WORKERS = 3
OPENERS = 8  # storages opened at the same moment on a new database
BETA_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
ALPHA_GRID = (0.25, 0.5, 0.75, 1.0)
HEARTBEAT, GRACE = 1, 5  # seconds: a killed worker's trial is failed within ~GRACE + the workers' 2 s poll
SETTINGS = {  # tiny digits runs; evaluate.epochs makes a beta trial last a few seconds, long enough to kill in
    "scores.epochs": 1, "scores.networks": 1, "experts.num_experts": 1, "experts.model.width": 8,
    "distill.max_start_epoch": 2, "distill.syn_steps": 3, "distill.batch_syn": 20, "distill.iterations": 4,
    "distill.eval_every": 2, "distill.checkpoint_every": 2, "evaluate.model.width": 8, "evaluate.epochs": 600,
    "evaluate.runs": 1, "tune.trial_iterations": 4, "tune.beta_seeds": 2, "device": "cpu",
    "tune.beta_grid": list(BETA_GRID), "tune.alpha_grid": list(ALPHA_GRID),
    "tune.heartbeat_interval": HEARTBEAT, "tune.grace_period": GRACE,
}

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def database_url():
    """URL of a new, empty database on the test server, dropped afterwards."""
    url = os.environ.get(URL_VARIABLE)
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {URL_VARIABLE} is not set: .ci/run must start PostgreSQL (.ci/postgres.sh)")
        pytest.skip(f"no PostgreSQL server ({URL_VARIABLE} unset; see .ci/postgres.sh)")
    from psycopg2 import connect, sql
    from sqlalchemy.engine import make_url

    server = make_url(url)
    name = f"asm_{uuid.uuid4().hex[:12]}"
    admin = connect(host=server.host, port=server.port, user=server.username, password=server.password,
                    dbname=server.database)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield server.set(database=name).render_as_string(hide_password=False)
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        admin.close()


def start_worker(tmp_path, url, rank, fault=None):
    """One `tune` process, as on its own machine: its own cache, the artifacts folder shared.

    ``fault``: an ``AUTOSELMATCH_FAULT`` value (see :func:`autoselmatch.runtime.fault_point`).
    """
    command = [sys.executable, "-m", "autoselmatch", "--quiet", "tune", "--dataset", "digits", "--ipc", "10",
               "--storage", url, "--artifacts", str(tmp_path / "artifacts"), "--cache-dir", str(tmp_path / f"cache{rank}"),
               "--search", "grid", "--pruner", "none", "--no-prior"]
    for key, value in SETTINGS.items():
        command += ["--set", f"{key}={value}"]
    env = {**os.environ, "AUTOSELMATCH_FAULT": fault} if fault else None
    with open(tmp_path / f"worker{rank}.log", "w") as log:  # the child keeps its own copy of the file
        return subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)


def settled_per_point(study, param):
    """Grid point -> number of trials that settled it (COMPLETE or PRUNED)."""
    settled = (TrialState.COMPLETE, TrialState.PRUNED)
    return Counter(t.params[param] for t in study.trials if t.state in settled and param in t.params)


def point_of(trial, param):
    """A trial's grid point, or the name of the baseline it measures."""
    return trial.user_attrs.get("baseline") or trial.params.get(param)


@pytest.mark.slow
def test_three_workers_lose_nothing_and_retry_a_killed_workers_trial(tmp_path, database_url):
    # worker 0 SIGKILLs itself at its first report: mid-trial by construction, whatever the machine's load
    workers = [start_worker(tmp_path, database_url, rank, fault="tune.report:1:KILL" if rank == 0 else None)
               for rank in range(WORKERS)]
    try:
        for worker in workers:
            worker.wait(timeout=300)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    logs = {rank: (tmp_path / f"worker{rank}.log").read_text() for rank in range(WORKERS)}
    codes = [w.returncode for w in workers]
    assert codes == [-signal.SIGKILL, 0, 0], logs

    studies = {stage: optuna.load_study(study_name=f"digits-ipc10-{stage}", storage=database_url)
               for stage in ("beta", "alpha")}
    beta, alpha = studies["beta"], studies["alpha"]
    unrun = ("duplicate_of", "unqueued")  # simultaneous claims, failed before their objective ran
    owned = [(stage, t) for stage, study in studies.items() for t in study.trials
             if t.user_attrs.get("worker", {}).get("pid") == workers[0].pid and not any(k in t.user_attrs for k in unrun)]
    (stage, dead), = owned  # a beta trial (or the random-selection baseline), unless worker 0 lost every beta claim
    assert len(dead.intermediate_values) == 1  # killed right after its first report
    assert dead.state == TrialState.FAIL and "error" not in dead.user_attrs  # failed by the heartbeat check
    retries = [t for t in studies[stage].trials if point_of(t, stage) == point_of(dead, stage)
               and t.number > dead.number and not any(k in t.user_attrs for k in unrun)]
    assert [t.state for t in retries] == [TrialState.COMPLETE]
    assert retries[0].user_attrs["worker"]["pid"] != dead.user_attrs["worker"]["pid"]

    for study, param, grid in ((beta, "beta", BETA_GRID), (alpha, "alpha", ALPHA_GRID)):
        per_point = settled_per_point(study, param)
        lost = [p for p in grid if per_point[p] == 0]
        duplicated = [p for p, n in per_point.items() if n > 1]
        assert (lost, duplicated) == ([], []), (param, per_point)
        baselines = Counter(t.user_attrs["baseline"] for t in study.trials
                            if t.state == TrialState.COMPLETE and t.user_attrs.get("baseline"))
        assert list(baselines.values()) == [1], baselines  # the stage's baseline, measured once
        unsettled = [t.number for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        assert unsettled == []
        failed = [t for t in study.trials if t.state == TrialState.FAIL and t not in (dead,)]
        assert [t.user_attrs for t in failed if not any(k in t.user_attrs for k in unrun)] == []  # only claims failed unrun
    assert [p.name for p in (tmp_path / "artifacts" / "runs" / "digits-ipc10-alpha").iterdir()] == [
        alpha.user_attrs["uid"]]  # every worker used the one folder of the study
    assert alpha.user_attrs["final"]["alpha"] in (0.0, *ALPHA_GRID)  # 0: random selection won
    trials = beta.trials + alpha.trials
    duplicates = sum("duplicate_of" in t.user_attrs or "unqueued" in t.user_attrs for t in trials)
    listing = "\n".join(f"{t.number} {t.state.name} {t.params!r} {t.system_attrs.get('fixed_params')} "
                        f"{ {k: v for k, v in t.user_attrs.items() if k in ('worker', 'duplicate_of', 'unqueued')} }"
                        for t in trials)
    # every trial accounted for: each point and baseline once, the killed one, the claims failed unrun
    assert len(trials) == len(BETA_GRID) + len(ALPHA_GRID) + 2 + 1 + duplicates, listing
    pids = {t.user_attrs["worker"]["pid"] for t in trials if "worker" in t.user_attrs}  # unqueued: no owner
    print(f"\npostgres: {WORKERS} workers ({len(pids)} ran trials), {len(trials)} trials for "
          f"{len(BETA_GRID)} + {len(ALPHA_GRID)} points: {stage} trial {dead.number} killed, failed by heartbeat and retried; "
          f"{duplicates} simultaneous claims failed unrun; lost 0, duplicated 0")


def test_workers_opening_a_new_database_at_once_all_get_it(database_url):
    """Optuna creates its tables on first open; workers started together race to do so."""
    from autoselmatch.storage import close_storage, open_storage, parse_storage

    spec = parse_storage(database_url)
    start = threading.Barrier(OPENERS)

    def open_one(_):
        start.wait()
        storage = open_storage(spec)
        close_storage(storage)
        return type(storage).__name__

    with ThreadPoolExecutor(OPENERS) as pool:
        assert list(pool.map(open_one, range(OPENERS))) == ["RDBStorage"] * OPENERS
