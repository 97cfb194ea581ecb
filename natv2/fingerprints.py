"""The config keys behind each workflow rule's rerun fingerprint: one table, two readers.

``workflow/rules/common.smk`` hashes a job's entries of these keys into its ``fingerprint``
param (so editing another key reruns nothing), and :mod:`natv2.dvcgen` makes them the DVC
params of the rule's stage. A ``{ds}`` in a key is the job's dataset wildcard. Rules not listed
(collect, part_costs, pareto, report) read no config.
"""
from __future__ import annotations

SUPERNET_KEYS = ("seed", "supernet", "supernet_train", "evaluation", "data", "datasets.{ds}")
#: ``search`` never includes ``search.iterations``: adding iterations reruns only the new ones
SEARCH_KEYS = ("seed", "supernet", "evaluation", "search")
POST_KEYS = ("seed", "supernet", "evaluation", "finetune", "data", "datasets.{ds}")

RULE_KEYS: dict[str, tuple[str, ...]] = {
    "split": ("seed", "data", "datasets.{ds}"),
    "supernet_phase": SUPERNET_KEYS,
    "supernet_source": SUPERNET_KEYS,
    "warmup": (*SUPERNET_KEYS, "warmup"),
    "init_sample": SEARCH_KEYS,
    "evaluate_pool": SEARCH_KEYS,
    "init_select": SEARCH_KEYS,
    "surrogate_search": SEARCH_KEYS,
    "evaluate_candidates": SEARCH_KEYS,
    "update": SEARCH_KEYS,
    "adapt": (*SEARCH_KEYS, "adapt", "data", "datasets.{ds}"),
    "reevaluate": SEARCH_KEYS,
    "hypervolume": SEARCH_KEYS,
    "front": SEARCH_KEYS,
    "finetune": POST_KEYS,
    "ensembles": ("seed", "ensemble", "evaluation", "finetune.selection_holdout"),
}
