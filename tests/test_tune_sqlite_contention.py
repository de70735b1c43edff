"""The default SQLite storage while another process reads it: the dashboard open during `tune`.

A reader process serves optuna-dashboard's API for the storage (opened as
`autoselmatch dashboard` opens it) and requests every study in a loop while
`tune` writes its trials; neither side may fail with "database is locked".
"""

import json
import subprocess
import sys
import textwrap
import time

from optuna.trial import TrialState

from test_tune_pipeline import Synthetic, config, load, run

from autoselmatch.storage import SQLITE_TIMEOUT, open_storage, parse_storage

READER = """
import json, sys, time
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna, optuna_dashboard
from autoselmatch.storage import open_existing_storage

url, ready, stop, out = sys.argv[1:]
optuna.logging.set_verbosity(optuna.logging.WARNING)
_, storage = open_existing_storage(url)  # as `autoselmatch dashboard` opens it
app = optuna_dashboard.wsgi(storage)


def get(path):
    environ = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO=path, REQUEST_METHOD="GET", QUERY_STRING="after=0")
    status = {}
    body = b"".join(app(environ, lambda line, headers, exc_info=None: status.setdefault("line", line)))
    return status["line"], body


requests, errors = 0, []
while not Path(stop).exists():
    try:
        paths = ["/api/studies"] + [f"/api/studies/{s._study_id}" for s in optuna.get_all_study_summaries(storage)]
        for path in paths:
            line, body = get(path)
            requests += 1
            if not line.startswith("200"):
                errors.append(f"{path}: {line}: {body[-300:].decode(errors='replace')}")
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}"[:300])
    Path(ready).touch()
Path(out).write_text(json.dumps({"requests": requests, "errors": errors}))
"""


def test_tune_writes_while_the_dashboard_reads_without_lock_errors(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    open_storage(parse_storage(url))  # the file and tables exist, as for a dashboard opened on a running tune
    ready, stop, out = tmp_path / "ready", tmp_path / "stop", tmp_path / "reader.json"
    script = tmp_path / "reader.py"
    script.write_text(textwrap.dedent(READER))
    reader = subprocess.Popen([sys.executable, str(script), url, str(ready), str(stop), str(out)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and reader.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the reader did not start"
        started = time.monotonic()
        result = run(tmp_path, storage=url, cfg=config(**{"tune.search": "grid"}), objectives=Synthetic)
        seconds = time.monotonic() - started
    finally:
        stop.touch()
        reader.wait(timeout=60)
    report = json.loads(out.read_text())
    assert report["errors"] == []
    assert result.complete
    for stage, size in (("beta", 9), ("alpha", 10)):
        trials = load(tmp_path, f"digits-ipc10-{stage}").trials
        assert len(trials) == size + 1 and {t.state for t in trials} == {TrialState.COMPLETE}  # + the baseline
        assert len({t.params[stage] for t in trials if stage in t.params}) == size
    assert report["requests"] >= 20  # the reader really ran alongside
    print(f"\nsqlite contention: 21 trials written in {seconds:.1f} s while the dashboard API answered "
          f"{report['requests']} requests, 0 errors (timeout {SQLITE_TIMEOUT} s)")


def test_sqlite_connections_wait_for_a_lock_instead_of_failing(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = open_storage(parse_storage(url))
    with storage.engine.connect() as connection:
        assert connection.connection.dbapi_connection.execute("PRAGMA busy_timeout").fetchone()[0] == (
            SQLITE_TIMEOUT * 1000)
