"""How tune workers share a storage: the lock, who runs a trial, crashed trials, study settings.

Opening and naming storages (URLs, SQLite timeout, heartbeats, the
journal check, artifact folders) is :mod:`autoselmatch.storage`; this module
is what ``tune`` adds on top so that several workers can search one study:

- :func:`storage_lock`: on a file storage, one worker at a time reads the
  study, picks a point and claims a trial.
- :func:`worker_id` / :func:`fail_orphaned_trials`: a trial records its
  worker (host, pid); a RUNNING trial whose worker process is gone (file
  storages) or whose heartbeat stopped (server databases) is failed when the
  next worker looks, and the search retries its point.
- :func:`open_study` / :func:`check_settings`: a study remembers the settings
  that shape its trials and refuses to be continued with others.

    spec = parse_storage("journal:///studies/digits.log")
    study = open_study(open_storage(spec), "digits-ipc10-beta", settings=..., sampler=..., pruner=...)
    with storage_lock(spec):
        fail_orphaned_trials(study, spec)
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
import warnings
from typing import Any, Iterator

import optuna
from optuna.trial import TrialState

from .. import records
from .._version import __version__
from ..errors import InvalidArgument
from ..fileio import stable_hash
from ..storage import StorageSpec


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
        worker = trial.user_attrs.get(records.WORKER) or {}
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
                   force: bool = False, defaults: dict[str, Any] | None = None) -> None:
    """Refuse (``InvalidArgument``) an existing study made with other ``settings`` unless ``force``.

    ``defaults`` (same layout as ``settings``) holds each setting's default: a
    setting the study does not know (added by a later version of the tool)
    that is at its default is not a change.
    """
    if force or not study_exists(storage, name):
        return
    stored = optuna.load_study(study_name=name, storage=storage).user_attrs.get(records.SETTINGS)
    diffs = [] if stored is None else settings_diff(stored, settings, defaults)
    if not diffs:
        return
    shown = ", ".join(f"{k}: {a!r} in the study, {b!r} now" for k, a, b in diffs[:2])
    more = f" and {len(diffs) - 2} more" if len(diffs) > 2 else ""
    raise InvalidArgument(f"study {name!r} was made with other settings ({shown}{more}); "
                          f"pass --new-study to replace it or --force to continue it")


def settings_diff(old: Any, new: Any, defaults: Any = None, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ between two nested dicts, with both values (``None`` for a missing one).

    A key only ``new`` has is left out when its value equals the one in ``defaults`` (a setting
    added since ``old`` was stored, at the value that does what the tool did before it existed).
    A key only ``old`` has is left out when ``defaults`` holds it: a known setting that ``new``
    leaves out on purpose (one that only another base method reads).
    """
    if isinstance(old, dict) and isinstance(new, dict):
        defaults = defaults if isinstance(defaults, dict) else {}
        out = []
        for key in sorted(set(old) | set(new)):
            if key not in old and key in new and key in defaults and new[key] == defaults[key]:
                continue
            if key in old and key not in new and key in defaults:
                continue
            out += settings_diff(old.get(key), new.get(key), defaults.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if old == new else [(prefix or "settings", old, new)]


def open_study(storage: optuna.storages.BaseStorage, name: str, *, settings: dict[str, Any],
               sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner,
               new_study: bool = False, force: bool = False, defaults: dict[str, Any] | None = None) -> optuna.Study:
    """Create or resume the maximising study ``name`` after checking its settings.

    Args:
        storage: An opened storage (:func:`autoselmatch.storage.open_storage`).
        name: Study name, e.g. ``digits-ipc10-beta``.
        settings: Everything that shapes a trial's value; stored in the study's
            ``settings`` user attr with its hash in ``fingerprint``.
        sampler: The search strategy's sampler.
        pruner: The stage's pruner.
        new_study: Delete an existing study of that name first.
        force: Continue an existing study made with other settings (its
            ``settings`` attr is replaced and the old one kept in ``settings_history``).
        defaults: Every setting's default, laid out as ``settings`` (see :func:`check_settings`).

    A new study gets a random ``uid`` user attr; its files (checkpoints,
    sets) live under a folder named by it. Only the process that creates the
    study sets it; workers on other machines that start at the same moment
    wait for it, so all of them use one folder.
    """
    if new_study and study_exists(storage, name):
        optuna.delete_study(study_name=name, storage=storage)
    check_settings(storage, name, settings, force=force, defaults=defaults)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                    pruner=pruner)
        study.set_user_attr(records.UID, uuid.uuid4().hex[:8])
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        _wait_for_uid(study)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise InvalidArgument(f"study {name!r} exists but minimises; pass --new-study to replace it")
    stored = study.user_attrs.get(records.SETTINGS)
    if stored is not None and stable_hash(stored) != stable_hash(settings):
        history = study.user_attrs.get(records.SETTINGS_HISTORY, [])
        study.set_user_attr(records.SETTINGS_HISTORY, [*history, stored])
    if stored is None or stable_hash(stored) != stable_hash(settings):
        study.set_user_attr(records.SETTINGS, settings)
        study.set_user_attr(records.FINGERPRINT, stable_hash(settings))
        study.set_user_attr(records.VERSION, __version__)
    if records.UID not in study.user_attrs:  # a study whose creator died before naming it
        study.set_user_attr(records.UID, uuid.uuid4().hex[:8])
    return study


def _wait_for_uid(study: optuna.Study, timeout: float = 10.0) -> None:
    """Wait until the process that just created ``study`` has set its ``uid`` (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while records.UID not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.05)


__all__ = [
    "check_settings",
    "fail_orphaned_trials",
    "open_study",
    "settings_diff",
    "storage_lock",
    "study_exists",
    "worker_id",
]
