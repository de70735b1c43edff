"""What ``tune`` stores in an Optuna storage, in one place: study names and user-attr keys.

Every module that writes or reads a study record imports its names from here
(as Optuna keeps ``_CONSTRAINTS_KEY`` beside its reader in
``optuna/study/_constrained_optimization.py``), so renaming a key is one edit
and a reader that misses it fails to import.

Per IPC, ``tune`` makes two studies, :func:`study_name` ``(prefix, ipc, stage)``:

- ``{prefix}-ipc{N}-beta``: stage 1, the window start beta.
- ``{prefix}-ipc{N}-alpha``: stage 2, the distillation portion alpha at stage 1's
  beta; with ``tune.refine_beta``, also the :data:`REFINE` search of beta at the
  chosen alpha (its trials carry the param ``beta`` and the user attr ``alpha``);
  when the stages end it holds the :class:`FinalRecord` of the IPC's final set.

Study user attrs (keys below): the settings that shape its trials
(:data:`SETTINGS`, :data:`FINGERPRINT`, :data:`SETTINGS_HISTORY`,
:data:`VERSION`), the folder of its files (:data:`UID`), what was searched
(:data:`DATASET`, :data:`IPC`, :data:`STAGE`, :data:`FIXED`, :data:`SEARCH`,
:data:`PRIOR`, :data:`PRIOR_OVERRULED`, :data:`SEEDS`, :data:`RUN_CONFIG`) and, on the alpha study, :data:`FINAL`
with each of its items but ``key`` copied beside it for the dashboard.
Trial user attrs: the fixed values (:data:`IPC`, :data:`FINGERPRINT`, the
fixed knob), :data:`REPLICATE`, :data:`NETWORK_SEEDS`, :data:`WORKER`, :data:`VAL_ACCURACY`, :data:`RESULT_PATH`,
:data:`ITERATIONS`, ... and the controller's bookkeeping (:data:`ERROR`, ...).
A baseline trial (:data:`BASELINES`: random selection in the beta study, MTT
in the alpha study) has :data:`BASELINE` set to its name and the categorical
param :data:`INIT` instead of the stage's grid param; the final record
compares the chosen set with each of them, and with :data:`WINDOW`, stage 1's
best window alone (selection only, alpha 0), which needs no trial of its own.
The :data:`MTT` baseline is the study's base method (``distill.method``) at alpha 1 from random init: its
key stays ``"mtt"`` whatever the method, and :func:`label` names it after
the method ("DSA (alpha 1, random init)").

    name = study_name("digits", 10, "alpha")          # "digits-ipc10-alpha"
    parse_study_name(name)                            # StudyName(prefix="digits", ipc=10, stage="alpha")
    final = FinalRecord.from_attrs(study.user_attrs)  # None until the final set is made
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .choices import DISTILL_METHOD_TITLES

#: The two stages per IPC, in the order they run; each has its study.
BETA, ALPHA = "beta", "alpha"
STAGES = (BETA, ALPHA)
#: The optional third search per IPC: beta again, at the chosen alpha, in the alpha study.
REFINE = "refine"

# ---- study user attrs ------------------------------------------------------------------------
UID = "uid"  # random id naming the study's folder of checkpoints and sets
SETTINGS = "settings"  # everything that shapes a trial's value (tune.stage_settings)
FINGERPRINT = "fingerprint"  # stable hash of SETTINGS (also on each trial)
SETTINGS_HISTORY = "settings_history"  # earlier SETTINGS replaced by --force
VERSION = "autoselmatch_version"  # the version that last stored SETTINGS
DATASET = "dataset"  # the dataset's name
IPC = "ipc"  # images per class (also on each trial)
STAGE = "stage"  # BETA or ALPHA
FIXED = "fixed"  # knobs fixed during the stage: {} or {"beta": b}
SEARCH = "search"  # {"strategy", "grid", "start", "patience", "pruner", "budget"}
PRIOR = "prior"  # {"ipc", "alpha", "beta"} of the IPC whose optima start (soft bound) the searches, or None
RUN_CONFIG = "run_config"  # the whole RunConfig as a dict
SEEDS = "seeds"  # {"0": {"seed": s, "networks": [s, ...]}, ...}: each replicate's seeds (the same at every point)
PRIOR_OVERRULED = "prior_overruled"  # {"bound", "points"}: the walk stepped past the prior's bound (else None)
REFINE_ATTR = "refine"  # on the alpha study: {"alpha", "from", "search"} of the beta refinement (absent: none ran)
FINAL = "final"  # FinalRecord.to_dict() of the IPC's final set (alpha study)
TEST_ACCURACY = "test_accuracy"  # {"mean", "std", "accuracies"} on the test split (beside FINAL)
EVALUATION = "evaluation"  # how TEST_ACCURACY was measured: {"runs", "steps", "model", "augment", "seconds"}
FINAL_VAL_ACCURACY = "final_val_accuracy"  # tune.choose_on = final: {"mean", "std", "accuracies"} on validation
# what the objectives' finish returns beside it, never a study attr (kept with the candidate in the study folder's
# final/NAME.json): (m,) per validation image, how many networks were right
FINAL_VAL_HITS = "final_val_hits"
#: tune.final_augments: validation mean of SelMatch's final set under each augmentation it was tried with
#: (the best trained its test networks: ``EVALUATION["augment"]``); absent when only one was tried
FINAL_AUGMENTS = "final_augments"

# ---- trial user attrs ------------------------------------------------------------------------
RESULT_PATH = "result_path"  # the trial's distilled set on disk (also in FINAL: the final set)
VAL_ACCURACY = "val_accuracy"  # the trial's score: a number (alpha) or {"mean", "std", "accuracies"} (beta)
ITERATIONS = "iterations"  # distillation iterations the trial's set had (also in FINAL)
ETA = "eta"  # the learned synthetic learning rate
LOSS_RATIO = "loss_ratio"  # the alpha trial's final matching-loss ratio (end / start; synset.loss_ratio)
PIXEL_CHANGE = "pixel_change"  # the alpha trial's mean |x - x0| of its D_distill pixels, in std units
SECONDS = "seconds"  # wall time of the beta trial's trainings
WORKER = "worker"  # {"host", "pid"} of the process that runs the trial
ERROR = "error"  # why the trial failed (counts as a failure of its point)
INTERRUPTED = "interrupted"  # the trial was stopped (Ctrl-C, crash); not a failure of its point
DUPLICATE_OF = "duplicate_of"  # an earlier live trial held the same point; this one never ran
REPEAT_OF = "repeat_of"  # a TPE repeat of a finished point: that trial's value was recorded
UNQUEUED = "unqueued"  # a trial another worker's claim left without a point; never ran
BASELINE = "baseline"  # None on a grid trial; on a baseline trial its name (RANDOM or MTT)
REPLICATE = "replicate"  # which replicate of its point the trial is (0, 1, ...; absent on older trials: 0)
NETWORK_SEEDS = "network_seeds"  # the seeds of the networks the trial trained for its value

# ---- baselines -------------------------------------------------------------------------------
#: Baseline trials carry the categorical param INIT (their only param), never the stage's grid param.
INIT = "init"
RANDOM, MTT = "random", "mtt"
#: The baseline measured in each stage's study (``tune.baselines``).
BASELINES: dict[str, tuple[str, ...]] = {BETA: (RANDOM,), ALPHA: (MTT,)}

# ---- candidates of the final choice ----------------------------------------------------------
SELMATCH = "selmatch"  # FinalRecord.chosen when the best grid point won
WINDOW = "window"  # ... when stage 1's best window alone (selection only, alpha 0) won
#: The candidates of the final choice, in the order a tie on validation is broken (the first wins).
CANDIDATES = (SELMATCH, WINDOW, RANDOM, MTT)
#: Candidates whose set comes from a trial of the beta study (the final record names no alpha trial).
FROM_BETA_STUDY = (WINDOW, RANDOM)
#: How summaries and the report name each candidate of the final choice.
LABELS = {SELMATCH: "SelMatch", WINDOW: "selection-only window (alpha 0)", RANDOM: "random selection (class-balanced)",
          MTT: "MTT (alpha 1, random init)"}


def label(name: str, method: str = "mtt") -> str:
    """How summaries, records, ``studies`` and the report name candidate ``name`` of a study whose base
    method is ``method`` (``distill.method``): the :data:`MTT` baseline is that method at alpha 1 from random
    init ("SRe2L (alpha 1, random init)"); other names as in :data:`LABELS` (unknown names: themselves)."""
    if name == MTT:
        return f"{DISTILL_METHOD_TITLES.get(method, method)} (alpha 1, random init)"
    return LABELS.get(name, name)


def study_method(attrs: Mapping[str, Any]) -> str:
    """The base method (``distill.method``) of a study, from its user attrs (:data:`SETTINGS`, else
    :data:`RUN_CONFIG`: the beta study's settings hold no distillation); ``"mtt"`` for studies stored
    before the setting existed, or without either."""
    for key in (SETTINGS, RUN_CONFIG):
        values = attrs.get(key)
        distill = values.get("distill") if isinstance(values, Mapping) else None
        if isinstance(distill, Mapping):
            return str(distill.get("method", "mtt"))
    return "mtt"

#: Study attrs that some module reads, with the stages whose studies ``tune`` always writes them to
#: (tests/test_records.py checks both against the code and a real run).
STUDY_ATTRS_READ: dict[str, tuple[str, ...]] = {
    UID: STAGES,
    SETTINGS: STAGES,
    DATASET: STAGES,
    IPC: STAGES,
    STAGE: STAGES,
    FIXED: STAGES,
    PRIOR_OVERRULED: STAGES,
    FINAL: (ALPHA,),
    TEST_ACCURACY: (ALPHA,),
    REFINE_ATTR: (ALPHA,),  # with tune.refine_beta
}
#: Trial attrs that some module reads, with the stages whose finished trials carry them (real objectives).
TRIAL_ATTRS_READ: dict[str, tuple[str, ...]] = {
    ALPHA: (BETA,),  # 0: stage 1 scores the selection-only window
    BETA: (ALPHA,),  # the fixed window start
    WORKER: STAGES,
    VAL_ACCURACY: STAGES,
    RESULT_PATH: (ALPHA,),
    ITERATIONS: (ALPHA,),
    BASELINE: STAGES,
    REPLICATE: STAGES,
}

# ---- study names -----------------------------------------------------------------------------
_NAME = re.compile(rf"^(?P<prefix>.+)-ipc(?P<ipc>[1-9][0-9]*)-(?P<stage>{'|'.join(STAGES)})$")


@dataclass(frozen=True)
class StudyName:
    """The parts of a study name ``{prefix}-ipc{N}-{stage}``.

    Attributes:
        prefix: The study prefix (by default the dataset's path-safe name).
        ipc: Images per class.
        stage: ``"beta"`` or ``"alpha"``.
    """

    prefix: str
    ipc: int
    stage: str

    def __str__(self) -> str:
        return study_name(self.prefix, self.ipc, self.stage)


def study_name(prefix: str, ipc: int, stage: str) -> str:
    """The study of ``stage`` at ``ipc``, e.g. ``study_name("digits", 10, "alpha") == "digits-ipc10-alpha"``."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    return f"{prefix}-ipc{ipc}-{stage}"


def parse_study_name(name: str) -> StudyName | None:
    """The parts of a name :func:`study_name` made, or ``None`` for any other name.

    The prefix is everything before the last ``-ipc{N}-``, so a prefix may
    itself hold ``-ipc`` or digits.
    """
    match = _NAME.match(name)
    if match is None:
        return None
    return StudyName(match["prefix"], int(match["ipc"]), match["stage"])


def prefix_of(name: str) -> str:
    """The prefix of one of our study names; any other name is its own prefix."""
    parsed = parse_study_name(name)
    return name if parsed is None else parsed.prefix


# ---- the final record ------------------------------------------------------------------------


@dataclass(frozen=True)
class FinalRecord:
    """The final set of one IPC: stored in the alpha study's :data:`FINAL` attr.

    ``tune`` writes every field; records written by hand (or by older
    versions) may lack all but ``alpha`` and ``beta``.

    Attributes:
        alpha: The distillation portion of the set.
        beta: The window start of the set.
        trial: The alpha trial the set was continued from.
        ipc: Images per class.
        key: Hash of what shapes the set and its test score (a rerun with the same key reuses it).
        result_path: The set on disk.
        test_accuracy: ``{"mean", "std", "accuracies"}`` on the test split.
        iterations: Distillation iterations of the set.
        evaluation: How the test accuracy was measured (``{"runs", "steps", "model", "augment", "seconds"}``).
        chosen: Which candidate the set is: :data:`SELMATCH` (the best grid trial), :data:`WINDOW`
            (stage 1's best window alone) or a baseline (:data:`RANDOM`, :data:`MTT`), the best on
            validation (``None``: written before baselines).
        val_accuracy: The chosen candidate's trial score (quick evaluations on validation).
        choose_on: What the choice compared (``tune.choose_on``): ``trials`` (each candidate's
            ``val_accuracy``) or ``final`` (each candidate's :data:`FINAL_VAL_ACCURACY`, in its
            entry and, for SelMatch's set, in ``selmatch``); ``None``: written before the setting.
        selmatch: The best grid point, ``{"alpha", "beta", "trial", "val_accuracy"}``, whichever
            candidate was chosen (``alpha`` and ``beta`` above are the chosen set's own); under
            ``choose_on = final`` also its final set's ``final_val_accuracy``, ``test_accuracy``,
            ``result_path`` and ``iterations``.
        baselines: Per candidate other than SelMatch (:data:`WINDOW` and each baseline measured):
            ``{"label", "study", "trial", "state", "val_accuracy", "test_accuracy", "result_path",
            "iterations"}``, and ``"beta"`` for the window (``None`` with ``tune.baselines = false``;
            records written before the window was a candidate lack it).
        summary: One line on the choice, e.g. "MTT (alpha 1, random init) beat every SelMatch point ...".
        margin: Under ``choose_on = final``, the chosen set's lead on validation over the runner-up and
            its standard error, ``{"against", "diff", "se", "se_networks", "se_images", "networks",
            "images"}`` (see ``tune``'s ``_margin``); ``None`` otherwise, or with one candidate.
        extra: Any other JSON-able fact the objectives returned.
    """

    alpha: float
    beta: float
    trial: int | None = None
    ipc: int | None = None
    key: str | None = None
    result_path: str | None = None
    test_accuracy: dict[str, Any] | None = None
    iterations: int | None = None
    evaluation: dict[str, Any] | None = None
    chosen: str | None = None
    val_accuracy: float | None = None
    choose_on: str | None = None
    selmatch: dict[str, Any] | None = None
    baselines: dict[str, dict[str, Any]] | None = None
    summary: str | None = None
    margin: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The stored :data:`FINAL` dict (fields that are ``None`` are left out, ``extra`` inlined)."""
        known = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **{k: v for k, v in known.items() if v is not None}}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> FinalRecord:
        """Inverse of :meth:`to_dict`; unknown keys go to ``extra``. ``KeyError`` without alpha or beta."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in record.items() if k in names}
        return cls(**{**known, "alpha": float(record[ALPHA]), "beta": float(record[BETA])},
                   extra={k: v for k, v in record.items() if k not in names})

    def to_attrs(self) -> dict[str, Any]:
        """The study user attrs that record it: :data:`FINAL`, and each of its items but ``key`` beside it."""
        record = self.to_dict()
        return {**{k: v for k, v in record.items() if k != "key"}, FINAL: record}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> FinalRecord | None:
        """The record in a study's user attrs, or ``None`` when it has none (or one without alpha and beta)."""
        record = attrs.get(FINAL)
        if not isinstance(record, Mapping) or ALPHA not in record or BETA not in record:
            return None
        return cls.from_dict(record)


__all__ = [
    "ALPHA",
    "BASELINES",
    "BETA",
    "CANDIDATES",
    "FROM_BETA_STUDY",
    "LABELS",
    "MTT",
    "RANDOM",
    "REFINE",
    "REFINE_ATTR",
    "SELMATCH",
    "STAGES",
    "WINDOW",
    "FinalRecord",
    "StudyName",
    "label",
    "parse_study_name",
    "prefix_of",
    "study_method",
    "study_name",
]
