"""profiles/*: every rule a profile names exists, and the multi-GPU profile gives each GPU rule a GPU."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PROFILES = sorted((REPO / "profiles").glob("*/config.yaml"))
# per-rule settings of a profile: {rule: ...}
PER_RULE_KEYS = ("set-resources", "set-threads")


def _rule_sources() -> dict[str, str]:
    """Each rule (or checkpoint) of the workflow -> its text, from the Snakefile and workflow/rules."""
    text = "\n".join(p.read_text() for p in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))])
    heads = list(re.finditer(r"^(?:rule|checkpoint)\s+(\w+)\s*:", text, flags=re.M))
    return {m.group(1): text[m.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
            for i, m in enumerate(heads)}


def test_the_workflow_rules_are_found():
    rules = _rule_sources()
    assert {"split", "supernet_phase", "evaluate_pool", "adapt", "finetune", "front"} <= set(rules)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.parent.name)
def test_every_rule_a_profile_names_exists(profile):
    settings = yaml.safe_load(profile.read_text())
    rules = set(_rule_sources())
    named = {rule for key in PER_RULE_KEYS for rule in (settings.get(key) or {})}
    assert named - rules == set(), f"{profile.relative_to(REPO)} names rules the workflow does not have"


def _gpu_rules() -> set[str]:
    """Rules whose resources are those of a training, evaluation or fine-tuning step (they run torch on the device)."""
    return {name for name, body in _rule_sources().items()
            if re.search(r"resources_for\(\"(train|evaluate|finetune)\"\)", body)}


@pytest.mark.parametrize("name", ["multigpu", "slurm"])
def test_gpu_profiles_give_every_gpu_rule_one_gpu(name):
    settings = yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())
    gpu_rules = _gpu_rules()
    assert {"supernet_phase", "warmup", "evaluate_pool", "evaluate_candidates", "reevaluate", "adapt",
            "finetune", "ensembles"} == gpu_rules
    per_rule = settings["set-resources"]
    assert {rule: per_rule.get(rule, {}).get("gpu") for rule in gpu_rules} == dict.fromkeys(gpu_rules, 1)


def test_multigpu_profile_limits_concurrent_gpu_jobs():
    settings = yaml.safe_load((REPO / "profiles" / "multigpu" / "config.yaml").read_text())
    assert settings["resources"]["gpu"] > 1


@pytest.mark.parametrize("name", ["multigpu", "slurm"])
def test_the_default_workflow_profile_does_not_override_a_cluster_profile(name):
    """Snakemake loads profiles/default after --profile, and a top-level key there replaces the other's."""
    default = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    other = yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())
    effective = {**other, **default}
    assert {key: effective[key] for key in other} == other
