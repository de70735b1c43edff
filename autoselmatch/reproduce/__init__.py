"""Reproduce the paper's tables on any dataset: every method at the same IPC, one protocol.

One run of :func:`reproduce` fills a folder with the main table (SelMatch
Table 1 style: test accuracy per method and IPC), the ablation (Table 3:
selection-based init, partial update and combined augmentation on and off)
and the coverage of each set on the easy and hard halves of the test set
(Figure 1); with ``plan.models``, also the cross-architecture table (Table 2:
every main-table set scored with each listed network, ``cross_arch.md``).
Every number comes from a *cell*: one network trained from
scratch on one set with one seed, or one coverage measurement. A cell is
saved as its own JSON file (with its seed, wall time and the shell command
that reruns it alone) and is never recomputed once it is there, so an
interrupted run resumes where it stopped. Runs started on one folder at once
share the cells out: each holds a lock per cell while it computes it, and
evaluates other sets' cells while another run distils a set they both need.

Methods (all at the same IPC; evaluated by the ``evaluate`` section of the
config on the **test** split, one network per seed):

==========  ================================================================
random      class-balanced random real samples (the seed ``cfg.seed`` draw,
            which is also MTT's initial set)
hardest     the IPC hardest samples of each class (the window at beta 0)
window      the selection-only window at beta (alpha 0)
mtt         distillation of the whole random set (alpha 1, random init)
mtt-init    distillation of the whole window (alpha 1, window init at beta)
merge       SelMatch's "merge" ablation: D_distill distilled alone, then
            concatenated with D_select (alpha, beta)
selmatch    SelMatch (window init at beta, partial update of alpha)
full        the whole training split (one row; ``reproduce.full_epochs``)
==========  ================================================================

Other base methods (``distill.method``, ``--method``; paper App. D.2): under ``dsa`` and
``sre2l`` the main table is the paper's Table 7 / 8 instead (:data:`BASE_LAYOUTS`): the
method's own baseline at alpha 1 (DSA: random real init; SRe2L: noise init and random
real init), select init (window at beta, alpha 1) and SelMatch, per IPC, with the method
and its evaluation protocol in the header; every cell is scored by that protocol
(``distill.evaluate_distilled``: SRe2L's students learn from its teacher).

Sets made elsewhere (MTT, FTD, DATM's ``images_best.pt``/``labels_best.pt``)
join the main table as extra rows, scored by the same cells
(``ReproducePlan.extras``, ``--extra NAME=PATH``; see ``_extras``).

alpha and beta per IPC are given, or read from finished tune studies
``{prefix}-ipc{N}-beta|alpha`` in a storage, or tuned into ``OUT/studies.db``
with :func:`autoselmatch.tune.tune`; each cell records where they came from.
Distilled sets are made once per (method, IPC) with seed ``cfg.seed`` and
cached in ``OUT/sets/`` (in the set-file format ``autoselmatch evaluate``
reads); seeds vary the evaluation network only. When a set's D_syn (or
D_distill in ``merge``) is smaller than ``distill.batch_syn``, the student
batch is the whole set (recorded in the set's settings).

Runs made with other ``--seed`` values (another split draw, scores, experts and
distillations) combine into one table of means across the seeds, with paired
differences against one method: :func:`combine_seeds` (``bench combine``).

Coverage is measured in the feature space of one reference network (the
evaluation model trained on the whole training split with the ``full``
budget, seed ``cfg.seed``); the test set is split into easy and hard halves
by that network's EL2N on each test sample, ``||softmax - onehot||_2``.

    plan = ReproducePlan(cfg=load_preset("digits"), ipcs=("5%", "10%"), out=Path("bench-out"),
                         alphas=(0.5,), betas=(0.2,))
    result = reproduce(plan)
    print(result.table_md)
"""


from ._checks import parse_base_method, parse_floats, parse_ipc_tokens, parse_methods, parse_models, resolve_ipcs
from ._cells import plan_cells
from ._command import rerun_command
from ._extras import parse_extras
from ._knobs import given_knobs, resolve_knobs, study_knobs
from ._plan import ABLATION_GRID, BASE_LAYOUTS, BaseLayout, Cell, Knobs, ReproducePlan, ReproduceResult, SetSpec
from ._run import reproduce
from ._seeds import SeedsResult, combine_seeds
from ._sets import METHODS, Recipe, distill_recipe, set_key

__all__ = [
    "ABLATION_GRID",
    "BASE_LAYOUTS",
    "BaseLayout",
    "METHODS",
    "Cell",
    "Knobs",
    "Recipe",
    "ReproducePlan",
    "ReproduceResult",
    "SeedsResult",
    "SetSpec",
    "combine_seeds",
    "distill_recipe",
    "given_knobs",
    "parse_base_method",
    "parse_extras",
    "parse_floats",
    "parse_ipc_tokens",
    "parse_methods",
    "parse_models",
    "plan_cells",
    "rerun_command",
    "reproduce",
    "resolve_ipcs",
    "resolve_knobs",
    "set_key",
    "study_knobs",
]
