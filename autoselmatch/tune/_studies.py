"""Looking at studies: which storage, a summary of each study, the dashboard.

    rows = list_studies("sqlite:///studies/digits.db")
    serve_dashboard("sqlite:///studies/digits.db", port=8080)   # blocks until Ctrl-C
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .. import records
from ..errors import DataError, InvalidArgument
from ..runtime import LOG
from ..storage import default_artifacts_dir, default_storage_url, open_existing_storage

STUDY_DIR = Path("studies")


def resolve_storage_url(storage: str | None, dataset: str | None) -> str:
    """``storage`` if given; else the dataset's default; else the only storage file under ``studies/``."""
    if storage is not None and dataset is not None:
        raise InvalidArgument("give --storage or --dataset, not both")
    if storage is not None:
        return storage
    if dataset is not None:
        return default_storage_url(dataset)
    found = sorted(STUDY_DIR.glob("*.db")) + sorted(STUDY_DIR.glob("*.log"))
    if not found:
        raise DataError(f"no study storage under {STUDY_DIR}/; run `autoselmatch tune` first or pass --storage")
    if len(found) > 1:
        raise InvalidArgument(f"several storages under {STUDY_DIR}/ ({', '.join(p.name for p in found)}); "
                              f"choose one with --storage or --dataset")
    path = found[0]
    return f"sqlite:///{path}" if path.suffix == ".db" else f"journal:///{path}"


def list_studies(url: str) -> list[dict[str, Any]]:
    """One row per study: name, direction, trial counts by state, best value/params (baseline trials
    aside; in tune's studies the chosen point and its mean over replicates), test accuracy, the
    baselines' validation scores, and the final record's choice and comparison."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    from ._controller import summarize

    _, storage = open_existing_storage(url)
    rows = []
    for study in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        trials = storage.get_all_trials(storage.get_study_id_from_name(study.study_name), deepcopy=False)
        counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
        maximize = study.direction == StudyDirection.MAXIMIZE
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get(records.BASELINE) is None]
        best = max(complete, key=lambda t: t.value if maximize else -t.value) if complete else None
        stage = study.user_attrs.get(records.STAGE)
        line = study.user_attrs.get(records.FIXED) or None  # the stage's own line (not the refinement's trials)
        chosen = summarize(trials, stage, line=line).best if maximize and stage in records.STAGES else None
        test = study.user_attrs.get(records.TEST_ACCURACY)
        final = records.FinalRecord.from_attrs(study.user_attrs)
        baselines = {t.user_attrs[records.BASELINE]: t.value for t in trials
                     if t.user_attrs.get(records.BASELINE) is not None and t.state == TrialState.COMPLETE}
        rows.append({
            "name": study.study_name,
            "direction": "maximize" if maximize else "minimize",
            "trials": counts,
            # tune's studies: the optimum by the unimodal fit over point means (not the largest single trial)
            "best_value": chosen[1] if chosen else None if best is None else best.value,
            "best_params": {stage: chosen[0]} if chosen else {} if best is None else dict(best.params),
            "best_trial": chosen[2] if chosen else None if best is None else best.number,
            "test_accuracy": test.get("mean") if isinstance(test, dict) else test,
            "baselines": baselines,
            "chosen": None if final is None else final.chosen,
            "baseline_tests": {} if final is None else {
                name: (b.get(records.TEST_ACCURACY) or {}).get("mean") for name, b in (final.baselines or {}).items()},
            "summary": None if final is None else final.summary,
            "method": records.study_method(study.user_attrs),  # the base method: names the "mtt" baseline
        })
    return rows


def serve_dashboard(url: str, *, dataset: str | None = None, artifacts: str | os.PathLike | None = None,
                    host: str = "127.0.0.1", port: int = 8080,
                    announce: Callable[[str], None] = print) -> None:
    """Run optuna-dashboard on ``host:port`` for storage ``url`` until interrupted.

    Args:
        url: Storage URL; a file storage must exist.
        dataset: Names the default artifact folder of a server database.
        artifacts: Artifact folder (default: ``{storage stem}-artifacts`` beside a file storage).
        host: Address to listen on (127.0.0.1: this machine only).
        port: Port.
        announce: Receives the line that says where the dashboard is.
    """
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    spec, storage = open_existing_storage(url)
    if artifacts is not None:
        folder = Path(artifacts).expanduser()
        if not folder.is_dir():
            raise InvalidArgument(f"artifact folder {folder} does not exist")
    elif spec.path is not None or dataset is not None:
        folder = default_artifacts_dir(spec, dataset or "")
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = None
        LOG.warning("no artifact folder for %s; pass --artifacts or --dataset to see trial images", spec.display())
    store = FileSystemArtifactStore(str(folder)) if folder is not None else None
    announce(f"optuna-dashboard for {spec.display()} on http://{host}:{port}/ "
             f"(artifacts: {folder if folder is not None else 'none'}); Ctrl-C stops it")
    optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=store)


__all__ = ["list_studies", "resolve_storage_url", "serve_dashboard"]
