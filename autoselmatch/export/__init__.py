"""Take results away: exported distilled sets, a verified loader, study copies and trial artifacts.

An exported set is a folder that any framework can read without autoselmatch
or the original dataset::

    DIR/manifest.json        dataset, IPC, alpha, beta, scores, settings, versions, sha256 of every file
    DIR/dataset.pt           dict of tensors/strings/numbers (``torch.load(..., weights_only=True)``)
    DIR/dataset.npz          the same arrays for NumPy (no pickles)
    DIR/png/<class>/<i>.png  an ImageFolder tree of the uint8 pixels
    DIR/grid.png             first 10 classes x k images, D_select and D_distill framed in two colours

Everything is written to a temporary sibling folder and renamed into place at
the end, so a crash never leaves a half-written export.
:func:`load_distilled` checks every checksum before it returns a dataset::

    train = autoselmatch.load_distilled("exports/cifar100-ipc50", augment=True)
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True)

:func:`export_study` copies Optuna studies from any storage (SQLite, journal
file, PostgreSQL) into one SQLite file plus the artifact files they
reference; :func:`upload_trial_artifacts` is what ``tune`` calls so that the
dashboard shows each trial's image grid, curves and distilled set.
"""

from ._artifacts import upload_trial_artifacts
from ._grid import DISTILL_COLOUR, SELECT_COLOUR, grid_png, image_grid
from ._load import DistilledSet, load_distilled, load_set, read_manifest, verify_export
from ._result import load_result
from ._set import FORMATS, class_folders, export_set
from ._study import export_study, export_trial, pick_trial, study_artifacts

__all__ = [
    "DISTILL_COLOUR",
    "FORMATS",
    "SELECT_COLOUR",
    "DistilledSet",
    "class_folders",
    "export_set",
    "export_study",
    "export_trial",
    "grid_png",
    "image_grid",
    "load_distilled",
    "load_result",
    "load_set",
    "pick_trial",
    "read_manifest",
    "study_artifacts",
    "upload_trial_artifacts",
    "verify_export",
]
