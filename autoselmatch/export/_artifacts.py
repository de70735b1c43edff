"""Uploading a trial's (or a study's final) image grid, curves and set as Optuna artifacts; ``tune`` calls it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..errors import InvalidArgument
from ..synset import SyntheticSet, json_default
from ._grid import grid_png
from ._result import load_result
from ._set import _pt_payload

if TYPE_CHECKING:
    import optuna
    from optuna.artifacts._protocol import ArtifactStore


def upload_trial_artifacts(
    target: "optuna.Trial | optuna.Study",
    artifact_store: "ArtifactStore",
    result: str | os.PathLike | Mapping[str, Any] | SyntheticSet,
    *,
    curves: Mapping[str, Any] | None = None,
    include_set: bool = True,
    grid_per_class: int = 10,
) -> dict[str, str]:
    """Upload a result's image grid, curves and (optionally) the set itself as Optuna artifacts.

    Call it with the running ``optuna.Trial`` inside the objective (Optuna
    refuses attrs on finished trials), and once with the ``optuna.Study`` for
    the final best set. The dashboard lists the files under the trial/study.

    Args:
        target: A running trial, or a study.
        artifact_store: E.g. ``optuna.artifacts.FileSystemArtifactStore("studies/x-artifacts")``.
        result: The distilled result (set file, its dict or a :class:`~autoselmatch.synset.SyntheticSet`).
        curves: Curves to store as JSON (default: the result's own ``curves``).
        include_set: Also upload the set as ``*distilled.pt`` (weights_only-loadable).
        grid_per_class: Images per class in the grid.

    Returns:
        ``{"grid": id, "curves": id, "set": id}`` for what was uploaded.
    """
    import optuna
    from optuna.artifacts import upload_artifact

    if not isinstance(target, (optuna.Trial, optuna.Study)):
        raise InvalidArgument(f"artifacts go to a running optuna.Trial or a Study, got {type(target).__name__}")
    r = load_result(result)
    prefix = f"trial-{target.number}" if isinstance(target, optuna.Trial) else "best"
    curves = dict(curves) if curves is not None else r.curves
    uploaded: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="autoselmatch-artifacts-") as tmp:
        files = {"grid": Path(tmp) / f"{prefix}-grid.png"}
        files["grid"].write_bytes(grid_png(r, per_class=grid_per_class))
        if curves:
            files["curves"] = Path(tmp) / f"{prefix}-curves.json"
            files["curves"].write_text(json.dumps(curves, indent=2, sort_keys=True, default=json_default))
        if include_set:
            files["set"] = Path(tmp) / f"{prefix}-distilled.pt"
            blob = {**_pt_payload(r), "settings": json.dumps(r.settings), "curves": json.dumps(curves)}
            torch.save(blob, files["set"])
        for kind, file in files.items():
            uploaded[kind] = upload_artifact(artifact_store=artifact_store, file_path=str(file), study_or_trial=target)
    return uploaded
