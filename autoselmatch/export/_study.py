"""Copying studies with their artifact files, and exporting a study's final set or one trial's set."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from .. import records
from ..errors import DataError, InvalidArgument
from ..records import FinalRecord
from ..runtime import LOG
from ..storage import artifact_dir_of, close_storage, open_existing_storage
from ..synset import SyntheticSet
from ._result import load_result
from ._set import FORMATS, _check_formats, _check_out_dir, _install_dir, _sibling_dir, export_set

if TYPE_CHECKING:
    import optuna
    from optuna.artifacts import ArtifactMeta


# --------------------------------------------------------------------------------------------
# Study export
# --------------------------------------------------------------------------------------------


def study_artifacts(study: "optuna.Study", storage: "optuna.storages.BaseStorage") -> list["ArtifactMeta"]:
    """Every artifact a study and its trials reference (Optuna records them as ``artifacts:<id>`` system attrs)."""
    from optuna.artifacts import get_all_artifact_meta

    metas = list(get_all_artifact_meta(study))
    for trial in study.get_trials(deepcopy=False):
        metas += get_all_artifact_meta(trial, storage=storage)
    return metas


def export_study(
    storage: str,
    out_file: str | os.PathLike,
    *,
    studies: Sequence[str] | None = None,
    artifacts: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Copy studies into one self-contained SQLite file, with their artifact files beside it.

    ``optuna.copy_study`` copies directions, attributes and trials (their
    ``artifacts:<id>`` system attrs included) but not the artifact files; those
    are copied from ``artifacts`` to ``<out stem>-artifacts/``, so
    ``optuna-dashboard sqlite:///OUT.db --artifact-dir OUT-artifacts`` shows
    everything. Both are written under temporary names and renamed at the end.

    Args:
        storage: Source storage URL: ``sqlite:///F.db``, ``journal:///F.log`` (or ``F.log``),
            ``postgresql://...``.
        out_file: The SQLite file to create (``.db``).
        studies: Names of the studies to copy (default: all).
        artifacts: Source artifact folder (default: ``<storage file stem>-artifacts`` beside a
            file storage; a server database needs it given).
        overwrite: Replace an existing ``out_file`` and artifact folder.

    Returns:
        ``{"out", "artifact_dir", "studies", "trials", "artifacts", "missing_artifacts"}``.
    """
    import optuna

    out = Path(out_file).expanduser()
    art_out = out.with_name(f"{out.stem}-artifacts")
    if out.exists() and not overwrite:
        raise InvalidArgument(f"output {out} exists; pass --overwrite to replace it")
    if out.exists() and not out.is_file():
        raise InvalidArgument(f"output {out} exists and is not a file")
    if art_out.exists() and any(art_out.iterdir()) and not overwrite:
        raise InvalidArgument(f"artifact folder {art_out} exists and is not empty; pass --overwrite to replace it")
    if artifacts is not None and not Path(artifacts).expanduser().is_dir():
        raise InvalidArgument(f"artifact folder {artifacts} does not exist")
    spec, source = open_existing_storage(storage)
    art_in = Path(artifacts).expanduser() if artifacts is not None else artifact_dir_of(spec, None)
    try:
        names = _choose_studies(source, studies)
        out.parent.mkdir(parents=True, exist_ok=True)
        work = _sibling_dir(out, "tmp")
        try:
            (work / "artifacts").mkdir()
            target = optuna.storages.RDBStorage(f"sqlite:///{work / out.name}")
            trials, wanted = 0, set()
            try:
                with _quiet_optuna():
                    for name in names:
                        optuna.copy_study(from_study_name=name, from_storage=source, to_storage=target)
                        study = optuna.load_study(study_name=name, storage=source)
                        trials += len(study.get_trials(deepcopy=False))
                        wanted.update(meta.artifact_id for meta in study_artifacts(study, source))
            finally:
                close_storage(target)
            copied, missing = _copy_artifacts(wanted, art_in, work / "artifacts")
            os.replace(work / out.name, out)
            _install_dir(work / "artifacts", art_out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        close_storage(source)
    if missing:
        LOG.warning("%d referenced artifact file(s) were not found in %s; the dashboard will not show them",
                    len(missing), art_in)
    LOG.info("copied %d studies (%d trials, %d artifacts) to %s", len(names), trials, copied, out)
    return {"out": str(out), "artifact_dir": str(art_out), "studies": names, "trials": trials,
            "artifacts": copied, "missing_artifacts": len(missing)}


def _choose_studies(storage: "optuna.storages.BaseStorage", studies: Sequence[str] | None) -> list[str]:
    available = [s.study_name for s in storage.get_all_studies()]
    if not available:
        raise DataError("the storage holds no study")
    if studies is None:
        return available
    for name in studies:
        if name not in available:
            raise InvalidArgument(f"unknown study {name!r}; the storage holds: {', '.join(available)}")
    return list(dict.fromkeys(studies))


def _copy_artifacts(wanted: set[str], src: Path | None, dst: Path) -> tuple[int, list[str]]:
    """Copy ``src/<id>`` to ``dst/<id>`` for every wanted artifact id; return (copied, missing ids)."""
    copied, missing = 0, []
    for artifact_id in sorted(wanted):
        if not _plain_name(artifact_id):
            raise DataError(f"artifact id {artifact_id!r} is not a plain file name; the study is corrupt")
        file = None if src is None else src / artifact_id
        if file is None or not file.is_file():
            missing.append(artifact_id)
            continue
        shutil.copy2(file, dst / artifact_id)
        copied += 1
    return copied, missing


def _plain_name(name: str) -> bool:
    """Whether ``name`` is a single file name that stays inside its folder."""
    return name not in ("", ".", "..") and Path(name).name == name and "\\" not in name


@contextlib.contextmanager
def _quiet_optuna():
    """Silence Optuna's per-study INFO lines ("A new study created ...") while copying."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


# --------------------------------------------------------------------------------------------
# Exporting a study's trial
# --------------------------------------------------------------------------------------------


def pick_trial(study: "optuna.Study", number: int | None = None) -> "optuna.trial.FrozenTrial":
    """The study's best trial, or trial ``number``; it must have finished."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if number is None:
        if not any(t.state == TrialState.COMPLETE for t in trials):
            raise DataError(f"study {study.study_name!r} has no finished trial to export")
        return study.best_trial
    by_number = {t.number: t for t in trials}
    if number not in by_number:
        raise InvalidArgument(f"study {study.study_name!r} has no trial {number}; trials are 0..{len(trials) - 1}")
    if by_number[number].state != TrialState.COMPLETE:
        raise InvalidArgument(f"trial {number} of {study.study_name!r} is {by_number[number].state.name}, not COMPLETE")
    return by_number[number]


def export_trial(
    storage: str,
    study_name: str,
    out_dir: str | os.PathLike,
    *,
    trial: int | None = None,
    artifacts: str | os.PathLike | None = None,
    formats: Iterable[str] = FORMATS,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export a study's final set, or a given trial's set, with :func:`export_set`.

    Without ``trial``: the final set that ``tune`` made from the best candidate
    on validation (the study's ``final`` user attr: the best trial's set or a
    baseline's, distilled for the full iteration budget and scored on the test
    set; the manifest holds the comparison) when there is one, else the best trial's own
    set. A set is read from its ``result_path``; when that file is gone (a
    study copied to another machine) from the matching ``*distilled.pt``
    artifact.

    Args:
        storage: Storage URL (see :func:`export_study`).
        study_name: Study to read, e.g. ``cifar100-ipc50-alpha``.
        out_dir: Export folder.
        trial: Trial number (default: the final set, else the best trial).
        artifacts: Artifact folder (default: where ``tune`` puts it for this storage).
        formats: Export formats.
        overwrite: Replace a non-empty ``out_dir``.
    """
    import optuna
    from optuna.artifacts import get_all_artifact_meta

    _check_formats(formats)
    _check_out_dir(Path(out_dir).expanduser(), overwrite)
    spec, source = open_existing_storage(storage)
    try:
        try:
            study = optuna.load_study(study_name=study_name, storage=source)
        except KeyError:
            names = ", ".join(s.study_name for s in source.get_all_studies()) or "none"
            raise InvalidArgument(f"unknown study {study_name!r}; the storage holds: {names}") from None
        final = FinalRecord.from_attrs(study.user_attrs) if trial is None else None
        # a selection-only final set (the window, random selection) comes from a trial of the beta study
        chosen = None if final is not None and final.chosen in records.FROM_BETA_STUDY else \
            pick_trial(study, final.trial if final is not None else trial)
        dataset = study.user_attrs.get(records.DATASET) or records.prefix_of(study_name)
        art_dir = Path(artifacts).expanduser() if artifacts is not None else artifact_dir_of(spec, dataset)
        if final is not None:
            result = _find_result(final.result_path, get_all_artifact_meta(study), art_dir,
                                  f"the final set of {study_name}")
        else:
            result = _find_result(chosen.user_attrs.get(records.RESULT_PATH),
                                  get_all_artifact_meta(chosen, storage=source), art_dir, f"trial {chosen.number}")
    finally:
        close_storage(source)
    params = {} if chosen is None else chosen.params
    meta = {
        "study": study_name,
        "trial": None if chosen is None else chosen.number,
        "final": final is not None,
        "score": final.val_accuracy if chosen is None else chosen.value,
        "alpha": params.get(records.ALPHA, final.alpha if final is not None else None),
        "beta": params.get(records.BETA, final.beta if final is not None else None),
        "val_accuracy": final.val_accuracy if chosen is None else chosen.user_attrs.get(records.VAL_ACCURACY,
                                                                                         chosen.value),
        "test_accuracy": None if final is None else final.test_accuracy,
        "evaluation": None if final is None else final.evaluation,
        # the comparison tune made (tune.baselines): which candidate this set is, and every baseline's scores
        "chosen": None if final is None else final.chosen,
        "baselines": None if final is None else final.baselines,
        "summary": None if final is None else final.summary,
        "margin": None if final is None else final.margin,
        "study_settings": study.user_attrs.get(records.SETTINGS),
    }
    meta = {key: value for key, value in meta.items() if value is not None}
    return export_set(result, out_dir, formats=formats, overwrite=overwrite, meta=meta)


def _find_result(path: str | None, uploads: Sequence["ArtifactMeta"], art_dir: Path | None,
                 what: str) -> SyntheticSet:
    """The set at ``path``, else the ``*distilled.pt`` among ``uploads`` found in ``art_dir``."""
    if path is not None and Path(path).expanduser().is_file():
        return load_result(path)
    for meta in uploads:
        if art_dir is None or not meta.filename.endswith("distilled.pt") or not _plain_name(meta.artifact_id):
            continue
        if (art_dir / meta.artifact_id).is_file():
            return load_result(art_dir / meta.artifact_id)
    raise DataError(
        f"{what} has no readable distilled set: {records.RESULT_PATH} is {path!r} and no "
        f"'*distilled.pt' artifact was found in {art_dir}; pass --artifacts DIR if the artifacts live elsewhere"
    )
