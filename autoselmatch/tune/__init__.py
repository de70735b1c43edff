"""The Optuna controller behind ``autoselmatch tune``.

Per IPC, two studies: ``{dataset}-ipc{N}-beta`` (stage 1, the window start,
scored by a short training on the selected window) and
``{dataset}-ipc{N}-alpha`` (stage 2, the distillation portion, pruned on
quick evaluations during distillation), searched on grids by a strategy from
:data:`SEARCHES`; then the best set is finished and evaluated on the test split.

    from autoselmatch.tune import tune
    results = tune(cfg, ipcs=[10])
"""

from ._controller import GridStatus, Objective, SearchController, StageOutcome, report, summarize
from ._objectives import SelMatchObjectives
from ._pipeline import IpcResult, TuneResult, parse_ipcs, tune
from ._pruners import PRUNERS, build_pruner
from ._search import SEARCHES, GridSearch, LineSearch, SearchStrategy, TPESearch
from ._stage import Objectives, ObjectivesFactory, StageContext, stage_settings, study_name, trial_iterations
from ._storage import open_study

__all__ = [
    "PRUNERS",
    "SEARCHES",
    "GridSearch",
    "GridStatus",
    "IpcResult",
    "LineSearch",
    "Objective",
    "Objectives",
    "ObjectivesFactory",
    "SearchController",
    "SearchStrategy",
    "SelMatchObjectives",
    "StageContext",
    "StageOutcome",
    "TPESearch",
    "TuneResult",
    "build_pruner",
    "open_study",
    "parse_ipcs",
    "report",
    "stage_settings",
    "study_name",
    "summarize",
    "trial_iterations",
    "tune",
]
