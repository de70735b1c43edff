"""Optuna storages: parsing a storage URL, opening it, closing it, and the names of the files beside it.

Everything that opens or names a study storage goes through this module:
``tune`` and its workers, ``studies``, ``dashboard``, ``report``, ``export``,
``export-study`` and ``bench reproduce``. How tune workers coordinate inside
a storage (locks, crashed trials, study settings) lives in
:mod:`autoselmatch.tune._storage`.

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

Artifacts (trial images, distilled sets) sit beside a file storage in
``{stem}-artifacts/`` (:func:`default_artifacts_dir`).

    spec = parse_storage("sqlite:///studies/digits.db")
    storage = open_storage(spec)                       # creates the file
    spec, storage = open_existing_storage("sqlite:///studies/digits.db")  # must exist
    close_storage(storage)
"""

from __future__ import annotations

import json
import random
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .errors import DataError, InvalidArgument

if TYPE_CHECKING:
    import optuna

StorageKind = Literal["sqlite", "journal", "server"]
HEARTBEAT_INTERVAL = 60  # seconds between heartbeats of a running trial (server databases)
GRACE_PERIOD = 180  # seconds without heartbeat after which a trial counts as crashed
SQLITE_TIMEOUT = 60  # seconds a SQLite connection waits for another's lock before "database is locked"
CREATE_TRIES = 5  # opens of a new server database; workers started together race to create Optuna's tables


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


# --------------------------------------------------------------------------------------------
# Names: default storage, artifact folder
# --------------------------------------------------------------------------------------------


def safe_name(text: str) -> str:
    """``text`` reduced to letters, digits, ``.``, ``_`` and ``-`` (for file and study names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "dataset"


def default_storage_url(dataset: str) -> str:
    """``sqlite:///studies/{dataset}.db``, relative to the current directory."""
    return f"sqlite:///studies/{safe_name(dataset)}.db"


def default_artifacts_dir(spec: StorageSpec, dataset: str) -> Path:
    """Artifacts (trial images, distilled sets) sit next to a file storage as ``{stem}-artifacts/``;
    for a server database under ``studies/{dataset}-artifacts/``."""
    if spec.path is not None:
        return spec.path.expanduser().with_name(f"{spec.path.stem}-artifacts")
    return Path("studies") / f"{safe_name(dataset)}-artifacts"


def artifact_dir_of(spec: StorageSpec, dataset: str | None) -> Path | None:
    """Where ``tune`` keeps a storage's artifacts (``None``: unknown for a server database without a dataset)."""
    if spec.path is None and dataset is None:
        return None
    return default_artifacts_dir(spec, dataset or "")


# --------------------------------------------------------------------------------------------
# Parsing, opening, closing
# --------------------------------------------------------------------------------------------


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
    import optuna
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
        return _open_server(spec.url, heartbeat_interval, grace_period)
    except (SQLAlchemyError, ImportError, OSError, ValueError) as exc:  # ValueError: a journal line is not JSON
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot open storage {spec.display()}: {reason}") from None


def _open_server(url: str, heartbeat_interval: int, grace_period: int) -> optuna.storages.RDBStorage:
    """Open a server database, creating Optuna's tables if it is new.

    Workers started at the same moment on a new database each try to create
    the tables; all but one fail on a duplicate name (an ``IntegrityError`` or
    ``ProgrammingError``). Opening again then finds the tables, so such a
    failure is retried, up to :data:`CREATE_TRIES` opens in all, after a
    growing random pause.
    """
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    def create() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():  # the heartbeat arguments are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True},
                                              heartbeat_interval=heartbeat_interval, grace_period=grace_period)

    for attempt in range(1, CREATE_TRIES):
        try:
            return create()
        except (IntegrityError, ProgrammingError):
            time.sleep(random.uniform(0.1, 0.5) * attempt)
    return create()


def open_existing_storage(url: str) -> tuple[StorageSpec, optuna.storages.BaseStorage]:
    """Parse and open a storage that must already exist.

    A missing SQLite or journal file is an error here, so a typo in ``--storage``
    never creates an empty storage.

    Args:
        url: Storage URL (:func:`parse_storage`).
    """
    spec = parse_storage(url)
    if spec.path is not None and not spec.path.expanduser().is_file():
        raise DataError(f"no study storage at {spec.path}; check --storage")
    if spec.kind == "sqlite" and spec.path is not None and spec.path.expanduser().stat().st_size == 0:
        raise DataError(f"storage file {spec.path} is empty, not a study database; check --storage")
    return spec, open_storage(spec)


def close_storage(storage: optuna.storages.BaseStorage) -> None:
    """Release an RDB storage's connections (SQLite keeps the file open otherwise)."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        storage.remove_session()
        engine.dispose()


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


__all__ = [
    "GRACE_PERIOD",
    "HEARTBEAT_INTERVAL",
    "SQLITE_TIMEOUT",
    "StorageKind",
    "StorageSpec",
    "artifact_dir_of",
    "close_storage",
    "default_artifacts_dir",
    "default_storage_url",
    "open_existing_storage",
    "open_storage",
    "parse_storage",
    "safe_name",
]
