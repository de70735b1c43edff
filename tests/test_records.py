"""The study record: names, the final record, and that every key a reader reads is one tune writes."""

import ast
import dataclasses
from pathlib import Path

import optuna
import pytest

import autoselmatch
from autoselmatch import records
from autoselmatch.config import apply_overrides, load_preset
from autoselmatch.records import FinalRecord, StudyName, parse_study_name, prefix_of, study_name

optuna.logging.set_verbosity(optuna.logging.WARNING)
PACKAGE = Path(autoselmatch.__file__).parent
#: Keys tune writes only when something happens: a trial fails, or --force replaces the settings.
ON_EVENT = {"ERROR", "INTERRUPTED", "DUPLICATE_OF", "REPEAT_OF", "UNQUEUED", "SETTINGS_HISTORY"}
#: Keys of the final record (and of its ``selmatch`` map) that tune writes only under some settings:
#: tune.choose_on = final (the default; ``trials`` writes none of them), and for FINAL_AUGMENTS a non-empty
#: tune.final_augments; readers .get() them.
UNDER_SETTING = {"FINAL_VAL_ACCURACY", "FINAL_AUGMENTS", "EVALUATION"}
#: Keys of what the objectives' finish returns that are never study attrs: the per-image validation hits, kept
#: with each candidate in the study folder's final/NAME.json (tune/_pipeline._made_once) and dropped from the record.
NOT_ATTRS = {"FINAL_VAL_HITS"}


# --------------------------------------------------------------------------------------------
# Study names
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["digits", "fashion-mnist", "cifar-ipc10", "a-ipc3-x", "fm2", "123",
                                    "x-ipc5-beta", "folder_pets"])
@pytest.mark.parametrize("ipc", [1, 10, 250])
@pytest.mark.parametrize("stage", records.STAGES)
def test_study_names_round_trip(prefix, ipc, stage):
    name = study_name(prefix, ipc, stage)
    assert name == f"{prefix}-ipc{ipc}-{stage}"
    assert parse_study_name(name) == StudyName(prefix, ipc, stage)
    assert str(parse_study_name(name)) == name and prefix_of(name) == prefix


@pytest.mark.parametrize("name", ["nope", "digits-ipc10", "digits-ipc0-beta", "digits-ipc-beta", "digits-ipcx-alpha",
                                  "digits-ipc10-gamma", "-ipc10-beta", "digits-ipc10-alpha-copy", "digits-IPC10-beta"])
def test_other_names_are_not_ours(name):
    assert parse_study_name(name) is None
    assert prefix_of(name) == name


def test_an_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="stage must be one of beta, alpha, got 'gamma'"):
        study_name("digits", 10, "gamma")


# --------------------------------------------------------------------------------------------
# The final record
# --------------------------------------------------------------------------------------------

FULL = {"result_path": "/runs/final.pt", "test_accuracy": {"mean": 0.8, "std": 0.01, "accuracies": [0.79, 0.81]},
        "iterations": 400, "evaluation": {"runs": 2, "steps": 900, "model": "convnet", "augment": "dsa",
                                          "seconds": 12.5},
        "key": "abc123", "ipc": 10, "alpha": 0.6, "beta": 0.2, "trial": 3, "note": "from a later version"}


def test_final_record_round_trips_through_study_attrs():
    record = FinalRecord.from_dict(FULL)
    assert (record.alpha, record.beta, record.trial, record.ipc, record.key) == (0.6, 0.2, 3, 10, "abc123")
    assert record.result_path == "/runs/final.pt" and record.iterations == 400
    assert record.extra == {"note": "from a later version"}  # unknown facts are kept, not dropped
    assert record.to_dict() == FULL
    attrs = record.to_attrs()
    assert attrs[records.FINAL] == FULL and list(attrs)[-1] == records.FINAL  # written last
    assert {k: v for k, v in attrs.items() if k != records.FINAL} == {k: v for k, v in FULL.items() if k != "key"}
    assert FinalRecord.from_attrs(attrs) == record


def test_final_record_round_trips_through_a_storage(tmp_path):
    study = optuna.create_study(study_name=study_name("digits", 10, records.ALPHA),
                                storage=f"sqlite:///{tmp_path / 's.db'}")
    for key, value in FinalRecord.from_dict(FULL).to_attrs().items():
        study.set_user_attr(key, value)
    again = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path / 's.db'}")
    assert FinalRecord.from_attrs(again.user_attrs) == FinalRecord.from_dict(FULL)


def test_a_partial_final_record_keeps_what_it_has():
    partial = {"alpha": 0.4, "beta": 0.6, "ipc": 7}  # written by hand or by an older version
    record = FinalRecord.from_attrs({records.FINAL: partial})
    assert record == FinalRecord(alpha=0.4, beta=0.6, ipc=7) and record.trial is None
    assert record.to_dict() == partial


@pytest.mark.parametrize("attrs", [{}, {records.FINAL: None}, {records.FINAL: "done"}, {records.FINAL: {"alpha": 0.5}},
                                   {records.TEST_ACCURACY: {"mean": 0.8}}])
def test_attrs_without_a_final_record_read_as_none(attrs):
    assert FinalRecord.from_attrs(attrs) is None


# --------------------------------------------------------------------------------------------
# Every key that is read is written
# --------------------------------------------------------------------------------------------


def _records_names(tree: ast.Module) -> set[str]:
    """Names a module imported from autoselmatch.records (``from ..records import ALPHA``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "records":
            names |= {alias.asname or alias.name for alias in node.names}
    return names


def _key(node: ast.AST, imported: set[str]) -> str | None:
    """``records.X`` or an imported ``X`` -> "X"; a string literal -> "'literal'"; anything else -> None."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "records":
        return node.attr
    if isinstance(node, ast.Name) and node.id in imported and node.id.isupper():
        return node.id
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return repr(node.value)
    return None


def _is_user_attrs(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "user_attrs"


def _scan() -> dict[str, dict[str, set[str]]]:
    """Per module of the package: the record keys it reads and writes.

    Reads: ``x.user_attrs[K]``, ``x.user_attrs.get(K)``, ``K in x.user_attrs``, and any ``d[K]`` or
    ``d.get(K)`` with a records key. Writes: ``set_user_attr(K, ...)``, ``user_attrs=`` dicts, dict
    literal keys and ``d[K] = ...`` with a records key.
    """
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        imported = _records_names(tree)
        reads, writes = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript):
                key = _key(node.slice, imported)
                if key is not None and (_is_user_attrs(node.value) or not key.startswith("'")):
                    (writes if isinstance(node.ctx, ast.Store) else reads).add(key)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
                key = _key(node.args[0], imported)
                if key is None:
                    continue
                if node.func.attr == "set_user_attr":
                    writes.add(key)
                elif node.func.attr == "get" and (_is_user_attrs(node.func.value) or not key.startswith("'")):
                    reads.add(key)
            elif isinstance(node, ast.Compare) and len(node.comparators) == 1 and _is_user_attrs(node.comparators[0]):
                key = _key(node.left, imported)
                if key is not None:
                    reads.add(key)
            elif isinstance(node, ast.Dict):
                writes |= {k for k in (_key(key, imported) for key in node.keys if key is not None)
                           if k is not None and not k.startswith("'")}
        found[str(path.relative_to(PACKAGE))] = {"reads": reads, "writes": writes}
    return found


def test_no_module_spells_a_study_attr_key_itself():
    literals = {module: sorted(k for k in rw["reads"] | rw["writes"] if k.startswith("'"))
                for module, rw in _scan().items() if module != "records.py"}
    assert {m: keys for m, keys in literals.items() if keys} == {}


def test_every_key_that_is_read_is_declared_and_written():
    scan = _scan()
    read = set().union(*(rw["reads"] for rw in scan.values()))
    written = set().union(*(rw["writes"] for rw in scan.values()))
    by_record = {records.FINAL} | {f.name for f in dataclasses.fields(FinalRecord)}  # FinalRecord.to_attrs
    written |= {name for name, value in vars(records).items() if isinstance(value, str) and value in by_record}
    keys = {getattr(records, name): name for name in read}
    declared = set(records.STUDY_ATTRS_READ) | set(records.TRIAL_ATTRS_READ)
    assert read - written == set()
    undeclared = {name for value, name in keys.items() if value not in declared and value not in records.CANDIDATES}
    assert undeclared <= ON_EVENT | UNDER_SETTING | NOT_ATTRS  # candidate names index the final record's maps
    readers = ("report.py", "export/", "reproduce/", "cli/", "tune/_studies.py")
    outside = set().union(*(rw["reads"] for m, rw in scan.items() if m.startswith(readers)))
    assert {getattr(records, name) for name in outside - UNDER_SETTING} <= declared  # readers .get() the others


TINY = {
    "scores.epochs": 1, "scores.networks": 1,
    "experts.num_experts": 1, "experts.model.width": 8,
    "distill.max_start_epoch": 2, "distill.syn_steps": 3, "distill.batch_syn": 20,
    "distill.iterations": 4, "distill.eval_every": 2, "distill.checkpoint_every": 2,
    "evaluate.model.width": 8, "evaluate.epochs": 10, "evaluate.runs": 1,
    "tune.trial_iterations": 2, "tune.beta_seeds": 1, "tune.pruner": "none",
    "tune.beta_grid": [0.2, 0.3], "tune.alpha_grid": [0.5, 0.6], "tune.beta_trials": 2, "tune.alpha_trials": 2,
    "tune.refine_beta": True,
}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A real tune of digits at IPC 5 on tiny budgets: the studies as a reader finds them."""
    from autoselmatch.tune import tune

    root = tmp_path_factory.mktemp("records")
    cfg = apply_overrides(load_preset("digits"), {**TINY, "cache_dir": str(root / "cache"), "device": "cpu"})
    url = f"sqlite:///{root / 'studies.db'}"
    result = tune(cfg, [5], storage=url)
    assert result.complete
    return {stage: optuna.load_study(study_name=study_name("digits", 5, stage), storage=url)
            for stage in records.STAGES} | {"result": result}


@pytest.mark.slow
def test_a_real_tune_writes_every_declared_key(tuned):
    for key, stages in records.STUDY_ATTRS_READ.items():
        for stage in stages:
            assert key in tuned[stage].user_attrs, f"{stage} study lacks {key!r}"
    for key, stages in records.TRIAL_ATTRS_READ.items():
        for stage in stages:
            done = [t for t in tuned[stage].trials if t.state == optuna.trial.TrialState.COMPLETE]
            assert done and all(key in t.user_attrs for t in done), f"a finished {stage} trial lacks {key!r}"


@pytest.mark.slow
def test_a_real_tune_records_a_final_record_that_reads_back(tuned):
    alpha = tuned[records.ALPHA]
    final = FinalRecord.from_attrs(alpha.user_attrs)
    distilled = final.chosen in (records.SELMATCH, records.MTT)  # the others' sets are selection only
    trial = {records.SELMATCH: tuned["result"].ipcs[0].alpha.best_trial,
             records.MTT: final.baselines[records.MTT]["trial"]}.get(final.chosen)  # the others': the beta study's
    assert final is not None and final.ipc == 5 and final.trial == trial and final.choose_on == "final"
    assert final.to_dict() == tuned["result"].ipcs[0].final == alpha.user_attrs[records.FINAL]
    assert all(alpha.user_attrs[k] == v for k, v in final.to_attrs().items())
    assert Path(final.result_path).is_file() and final.iterations == (4 if distilled else 0)
    assert final.evaluation["runs"] == 1 and final.selmatch[records.ITERATIONS] == 4  # made whichever won
    assert parse_study_name(alpha.study_name) == StudyName("digits", 5, records.ALPHA)


@pytest.mark.slow
def test_a_real_tune_measures_both_baselines_and_evaluates_their_sets(tuned):
    final = FinalRecord.from_attrs(tuned[records.ALPHA].user_attrs)
    assert final.chosen in records.CANDIDATES and final.summary
    assert set(final.baselines) == {records.WINDOW, records.RANDOM, records.MTT}
    for name, stage in ((records.RANDOM, records.BETA), (records.MTT, records.ALPHA)):
        baseline = final.baselines[name]
        (trial,) = [t for t in tuned[stage].trials if t.user_attrs[records.BASELINE] == name]
        assert baseline["trial"] == trial.number and baseline[records.VAL_ACCURACY] == trial.value
        assert trial.params == {records.INIT: "random"}
        assert Path(baseline[records.RESULT_PATH]).is_file() and baseline[records.EVALUATION]["runs"] == 1
        assert 0.0 <= baseline[records.TEST_ACCURACY]["mean"] <= 1.0
    assert final.baselines[records.MTT][records.ITERATIONS] == 4  # continued to distill.iterations like the winner
    assert final.baselines[records.RANDOM][records.ITERATIONS] == 0  # selection only: nothing distilled
    # scored as its beta trial trained (tune.beta_augment, DSA), not with crop + flip alone under `combined`
    assert final.baselines[records.RANDOM][records.EVALUATION]["augment"] == "dsa"
    assert final.baselines[records.MTT][records.EVALUATION]["augment"] == "combined"


@pytest.mark.slow
def test_a_real_tune_makes_stage_1s_window_alone_from_its_best_beta_trial(tuned):
    from autoselmatch.synset import SyntheticSet

    final = FinalRecord.from_attrs(tuned[records.ALPHA].user_attrs)
    outcome = tuned["result"].ipcs[0].beta
    window = final.baselines[records.WINDOW]
    assert (window["trial"], window[records.BETA]) == (outcome.best_trial, outcome.best_point)
    assert tuned[records.BETA].trials[window["trial"]].params == {records.BETA: outcome.best_point}
    assert window[records.VAL_ACCURACY] == pytest.approx(outcome.best_value)
    assert window[records.ITERATIONS] == 0 and window[records.EVALUATION]["augment"] == "dsa"  # as its beta trials
    made = SyntheticSet.load(window[records.RESULT_PATH])
    assert not made.distill_mask.any() and made.settings["beta"] == outcome.best_point and made.settings["alpha"] == 0.0


@pytest.mark.slow
def test_a_real_tune_choosing_on_final_sets_scores_each_candidate_on_validation(tmp_path):
    from autoselmatch.tune import tune

    cfg = apply_overrides(load_preset("digits"), {**TINY, "evaluate.runs": 2, "tune.choose_on": "final",
                                                  "cache_dir": str(tmp_path / "cache"), "device": "cpu"})
    final = FinalRecord.from_dict(tune(cfg, [5], storage=f"sqlite:///{tmp_path / 'studies.db'}").ipcs[0].final)
    scores = {records.SELMATCH: final.selmatch[records.FINAL_VAL_ACCURACY],
              **{n: b[records.FINAL_VAL_ACCURACY] for n, b in final.baselines.items()}}
    assert set(scores) == set(records.CANDIDATES) and final.choose_on == "final"
    assert all(len(v["accuracies"]) == 2 and 0.0 <= v["mean"] <= 1.0 for v in scores.values())
    best = max(v["mean"] for v in scores.values())
    assert scores[final.chosen]["mean"] == best
    assert final.chosen == next(n for n in records.CANDIDATES if scores[n]["mean"] == best)  # ties: the first


def test_the_mtt_baseline_is_named_after_the_study_s_base_method():
    from autoselmatch.choices import DISTILL_METHOD_TITLES, DISTILL_METHODS
    from autoselmatch.records import LABELS, MTT, RANDOM, RUN_CONFIG, SETTINGS, label, study_method

    assert tuple(DISTILL_METHOD_TITLES) == DISTILL_METHODS
    assert label(MTT) == LABELS[MTT] == "MTT (alpha 1, random init)"  # what studies stored before methods
    assert [label(MTT, m) for m in ("dsa", "sre2l")] == ["DSA (alpha 1, random init)", "SRe2L (alpha 1, random init)"]
    assert label(RANDOM, "dsa") == LABELS[RANDOM] and label("other", "dsa") == "other"
    assert study_method({SETTINGS: {"distill": {"method": "dsa"}}}) == "dsa"
    assert study_method({SETTINGS: {"distill": {"lr_img": 1000.0}}}) == "mtt"  # stored before distill.method
    assert study_method({SETTINGS: {"stage": "beta"}, RUN_CONFIG: {"distill": {"method": "sre2l"}}}) == "sre2l"
    assert study_method({}) == "mtt"
