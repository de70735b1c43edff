"""Where studies live: storage URLs, opening them, locks, crashed trials, settings checks.

Three kinds of storage:

- ``sqlite:///studies/digits.db`` (the default, one file per dataset): for
  one process. SQLite locks the whole file for every write, so several
  processes writing at once get "database is locked" errors, and its
  locking is unreliable on network file systems; Optuna itself recommends a
  journal file or a server database for parallel workers. Readers (the
  dashboard, ``autoselmatch studies``) may look while ``tune`` writes: each
  connection waits up to :data:`SQLITE_TIMEOUT` seconds for a lock instead
  of failing at once.
- ``journal:///studies/digits.log`` or any path ending in ``.log``: Optuna's
  journal file (an append-only log), safe for ``--workers K`` processes on one
  machine. As with ``sqlite:///``, the path after ``journal:///`` is relative
  unless it starts with ``/`` (``journal:////abs/path.log``).
- any other SQLAlchemy URL (``postgresql://user@host/db``, ``mysql://...``): a
  server database that workers on several machines share; a running trial
  records a heartbeat every ``heartbeat_interval`` seconds, and one silent
  for ``grace_period`` seconds is failed by the next worker that looks, so
  the search retries its point.

On the file storages a trial records its worker (host, pid); a RUNNING trial
whose worker process is gone is failed when the next run starts, and the
search retries its point.

    spec = parse_storage("sqlite:///studies/digits.db")
    storage = open_storage(spec)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import optuna
from optuna.trial import TrialState

from .._version import __version__
from ..errors import DataError, InvalidArgument
from ..fileio import stable_hash

StorageKind = Literal["sqlite", "journal", "server"]
HEARTBEAT_INTERVAL = 60  # seconds between heartbeats of a running trial (server databases)
GRACE_PERIOD = 180  # seconds without heartbeat after which a trial counts as crashed
SQLITE_TIMEOUT = 60  # seconds a SQLite connection waits for another's lock before "database is locked"


@dataclass(frozen=True)
class StorageSpec:
    """A parsed storage location.

    Attributes:
        url: The URL as given (a bare ``.log`` path becomes ``journal:///PATH``).
        kind: ``sqlite``, ``journal`` or ``server``.
        path: The database or journal file for file storages (``None`` for
            server databases and in-memory SQLite).
    """

    url: str
    kind: StorageKind
    path: Path | None

    @property
    def shareable(self) -> bool:
        """Whether several processes may write to it at once."""
        return self.kind != "sqlite"

    def display(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        if self.kind != "server":
            return self.url
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)


def default_storage_url(dataset: str) -> str:
    """``sqlite:///studies/{dataset}.db``, relative to the current directory."""
    return f"sqlite:///studies/{safe_name(dataset)}.db"


def safe_name(text: str) -> str:
    """``text`` reduced to letters, digits, ``.``, ``_`` and ``-`` (for file and study names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "dataset"


def parse_storage(url: str) -> StorageSpec:
    """Parse a storage URL; an unknown form raises :class:`InvalidArgument` naming the allowed ones."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    allowed = "sqlite:///PATH.db, journal:///PATH.log (or PATH.log), or a server URL such as postgresql://USER@HOST/DB"
    text = url.strip()
    if not text:
        raise InvalidArgument(f"storage URL is empty; use {allowed}")
    if text.startswith("journal:"):
        if not text.startswith("journal:///") or len(text) == len("journal:///"):
            raise InvalidArgument(f"journal storage must look like journal:///PATH.log, got {url!r}")
        return StorageSpec(text, "journal", Path(text[len("journal:///"):]))
    if "://" not in text:
        if text.endswith(".log"):
            return StorageSpec(f"journal:///{text}", "journal", Path(text))
        raise InvalidArgument(f"storage must be {allowed}, got {url!r}")
    try:
        parsed = make_url(text)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise InvalidArgument(f"storage URL {url!r} does not parse; use {allowed}") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        path = None if database in (None, "", ":memory:") else Path(database)
        return StorageSpec(text, "sqlite", path)
    return StorageSpec(text, "server", None)


def open_storage(spec: StorageSpec, *, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int = GRACE_PERIOD) -> optuna.storages.BaseStorage:
    """Open (and create) the storage, failing with one line if it cannot be reached.

    Args:
        spec: Where (:func:`parse_storage`).
        heartbeat_interval: Server databases: seconds between the heartbeats
            of a running trial (``tune.heartbeat_interval``).
        grace_period: Server databases: seconds without a heartbeat after
            which a running trial counts as crashed and is failed; the search
            then re-proposes its point (``tune.grace_period``).

    File storages get their folder created; SQLite connections wait
    :data:`SQLITE_TIMEOUT` seconds for a lock held by another process.
    """
    from sqlalchemy.exc import SQLAlchemyError

    if spec.path is not None:
        _ensure_parent(spec.path, spec)
    if spec.kind == "journal":
        _check_journal(spec.path.expanduser())
    try:
        if spec.kind == "journal":
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(str(spec.path.expanduser())))
        if spec.kind == "sqlite":
            return optuna.storages.RDBStorage(spec.url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT}})
        with warnings.catch_warnings():  # the heartbeat arguments are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(spec.url, engine_kwargs={"pool_pre_ping": True},
                                              heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    except (SQLAlchemyError, ImportError, OSError, ValueError) as exc:  # ValueError: a journal line is not JSON
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot open storage {spec.display()}: {reason}") from None


def _check_journal(path: Path) -> None:
    """Refuse to append to a file whose first complete line is not a journal record (e.g. a training log)."""
    if not path.is_file():
        return
    with open(path, "rb") as f:
        first = f.readline()
    if not first.endswith(b"\n"):  # empty, or a first write cut short by a crash: Optuna recovers from that
        return
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise DataError(f"{path} is not an Optuna journal (its first line is not a journal record); check --storage")


def _ensure_parent(path: Path, spec: StorageSpec) -> None:
    parent = path.expanduser().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the folder {parent} for storage {spec.display()}: {exc.strerror}") from None
    if path.expanduser().is_dir():
        raise InvalidArgument(f"storage path {path} is a folder; give a file such as {path}/studies.db")


def default_artifacts_dir(spec: StorageSpec, dataset: str) -> Path:
    """Artifacts (trial images, distilled sets) sit next to a file storage as ``{stem}-artifacts/``;
    for a server database under ``studies/{dataset}-artifacts/``."""
    if spec.path is not None:
        return spec.path.expanduser().with_name(f"{spec.path.stem}-artifacts")
    return Path("studies") / f"{safe_name(dataset)}-artifacts"


@contextlib.contextmanager
def storage_lock(spec: StorageSpec) -> Iterator[None]:
    """Exclusive lock among the processes of one machine that use a file storage.

    The controller holds it while it reads the study, picks a point and claims
    a trial, so two workers never pick the same point. Server databases have
    no such lock; see :func:`autoselmatch.tune._controller.SearchController`
    for how they avoid duplicates.
    """
    if spec.path is None:
        yield
        return
    import fcntl

    lock_path = spec.path.expanduser().with_name(spec.path.name + ".tune.lock")
    with open(lock_path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def worker_id() -> dict[str, Any]:
    """Who runs a trial: stored in its ``worker`` user attr."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def fail_orphaned_trials(study: optuna.Study, spec: StorageSpec) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone; return their numbers.

    Server databases: Optuna's heartbeat check. File storages: a trial whose
    worker process on this host no longer exists (or is this very process,
    which runs no trial while it looks). Trials of other hosts are left
    alone. Call it under :func:`storage_lock`.
    """
    if spec.kind == "server":
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with warnings.catch_warnings():  # marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        return sorted(before - after)
    me = worker_id()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host", me["host"]) != me["host"]:
            continue
        pid = worker.get("pid")
        if pid is not None and pid != me["pid"] and _alive(pid):
            continue
        study.tell(trial.number, state=TrialState.FAIL)
        failed.append(trial.number)
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------
# Studies and their settings
# --------------------------------------------------------------------------------------------


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return name in optuna.get_all_study_names(storage)


def check_settings(storage: optuna.storages.BaseStorage, name: str, settings: dict[str, Any], *,
                   force: bool = False) -> None:
    """Refuse (``InvalidArgument``) an existing study made with other ``settings`` unless ``force``."""
    if force or not study_exists(storage, name):
        return
    stored = optuna.load_study(study_name=name, storage=storage).user_attrs.get("settings")
    if stored is None or stable_hash(stored) == stable_hash(settings):
        return
    diffs = settings_diff(stored, settings)
    shown = ", ".join(f"{k}: {a!r} in the study, {b!r} now" for k, a, b in diffs[:2])
    more = f" and {len(diffs) - 2} more" if len(diffs) > 2 else ""
    raise InvalidArgument(f"study {name!r} was made with other settings ({shown}{more}); "
                          f"pass --new-study to replace it or --force to continue it")


def settings_diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ between two nested dicts, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += settings_diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if old == new else [(prefix or "settings", old, new)]


def open_study(storage: optuna.storages.BaseStorage, name: str, *, settings: dict[str, Any],
               sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner,
               new_study: bool = False, force: bool = False) -> optuna.Study:
    """Create or resume the maximising study ``name`` after checking its settings.

    Args:
        storage: An opened storage (:func:`open_storage`).
        name: Study name, e.g. ``digits-ipc10-beta``.
        settings: Everything that shapes a trial's value; stored in the study's
            ``settings`` user attr with its hash in ``fingerprint``.
        sampler: The search strategy's sampler.
        pruner: The stage's pruner.
        new_study: Delete an existing study of that name first.
        force: Continue an existing study made with other settings (its
            ``settings`` attr is replaced and the old one kept in ``settings_history``).

    A new study gets a random ``uid`` user attr; its files (checkpoints,
    sets) live under a folder named by it. Only the process that creates the
    study sets it; workers on other machines that start at the same moment
    wait for it, so all of them use one folder.
    """
    if new_study and study_exists(storage, name):
        optuna.delete_study(study_name=name, storage=storage)
    check_settings(storage, name, settings, force=force)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                    pruner=pruner)
        study.set_user_attr("uid", uuid.uuid4().hex[:8])
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        _wait_for_uid(study)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise InvalidArgument(f"study {name!r} exists but minimises; pass --new-study to replace it")
    stored = study.user_attrs.get("settings")
    if stored is not None and stable_hash(stored) != stable_hash(settings):
        history = study.user_attrs.get("settings_history", [])
        study.set_user_attr("settings_history", [*history, stored])
    if stored is None or stable_hash(stored) != stable_hash(settings):
        study.set_user_attr("settings", settings)
        study.set_user_attr("fingerprint", stable_hash(settings))
        study.set_user_attr("autoselmatch_version", __version__)
    if "uid" not in study.user_attrs:  # a study whose creator died before naming it
        study.set_user_attr("uid", uuid.uuid4().hex[:8])
    return study


def _wait_for_uid(study: optuna.Study, timeout: float = 10.0) -> None:
    """Wait until the process that just created ``study`` has set its ``uid`` (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while "uid" not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.05)


__all__ = [
    "GRACE_PERIOD",
    "HEARTBEAT_INTERVAL",
    "SQLITE_TIMEOUT",
    "StorageSpec",
    "check_settings",
    "default_artifacts_dir",
    "default_storage_url",
    "fail_orphaned_trials",
    "open_storage",
    "open_study",
    "parse_storage",
    "safe_name",
    "settings_diff",
    "storage_lock",
    "study_exists",
    "worker_id",
]
