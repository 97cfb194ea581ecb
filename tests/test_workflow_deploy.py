"""The workflow with a latency table and hard constraints (issue 15), end to end on digits.

One tiny run searches on (top1_err, latency_lut) with a table measured here (the search only);
a second run in the same folder, to pareto.csv, adds a params budget at the median of the first
run's final archive (the supernet phases are reused): every member of its front and pareto.csv
must be within it, and its initial archive must hold every feasible genome of the pool (survival
prefers feasible genomes).
Two runs of the workflow: minutes on 2 free cores, much longer on a loaded machine.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import yaml
from test_workflow import BIN, make_workdir, run

#: on top of tiny.yaml: one iteration, so two runs stay cheap
CHEAP = {"search": {"iterations": 1}}


def smk(workdir, *args, configfiles):
    proc = run([str(BIN / "snakemake"), "--cores", "2", *args, "--configfile", *configfiles], workdir, timeout=2400)
    assert proc.returncode == 0, f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc

PARETO = "results/digits/pareto.csv"


def test_latency_lut_search_then_a_params_budget_at_the_median(tmp_path):
    from natv2.config import load_settings
    from natv2.latency_table import load_table

    work = make_workdir(tmp_path)
    proc = run([str(BIN / "natv2"), "--threads", "1", "latency-table", "--config", "config/config.yaml",
                "--config", "tiny.yaml", "--out", "table.json", "--repeats", "1", "--warmup", "0"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (work / "cheap.yaml").write_text(yaml.safe_dump(CHEAP))
    (work / "lut.yaml").write_text(yaml.safe_dump(
        {"search": {"objectives": ["top1_err", "latency_lut"], "latency_table": "table.json"}}))
    # the search only: fine-tuning its front would cost a minute and the second run does it
    archive_csv = "results/digits/search/iter1/archive.csv"
    smk(work, archive_csv, configfiles=("tiny.yaml", "cheap.yaml", "lut.yaml"))

    archive = pd.read_csv(work / archive_csv)
    candidates = pd.read_csv(work / "results/digits/search/iter1/candidates.csv")
    assert "latency_lut" in candidates.columns
    # latency_lut is the table's prediction, in the archive and (below) in pareto.csv alike
    space = load_settings([work / "config/config.yaml", work / "tiny.yaml"]).supernet_for("digits").space()
    table = load_table(work / "table.json")
    assert np.allclose(archive["latency_lut"], table.predict(space, list(archive["genome"])))
    assert (archive["latency_lut"] > 0).all() and archive["latency_lut"].nunique() > 1

    # the budget: half of the unconstrained run's final archive is above it (at the tiny config's
    # near-chance accuracy the front itself may be a single net, so the archive is what it halves)
    budget = float(np.median(archive["params"]))
    assert (archive["params"] > budget).any() and (archive["params"] <= budget).any()
    pool = pd.concat([pd.read_csv(p) for p in sorted((work / "results/digits/search/iter0/eval").glob("pool.*.csv"))])
    n_feasible = int((pool["params"] <= budget).sum())
    (work / "budget.yaml").write_text(yaml.safe_dump({"search": {"constraints": {"params": budget}}}))
    smk(work, PARETO, configfiles=("tiny.yaml", "cheap.yaml", "lut.yaml", "budget.yaml"))

    bounded = pd.read_csv(work / PARETO)
    front = pd.read_csv(work / "results/digits/front.csv")
    assert len(bounded) >= 1
    assert (bounded["params"] <= budget).all(), bounded[["id", "params"]]
    assert np.allclose(bounded["latency_lut"], table.predict(space, list(bounded["genome"])))
    assert (front["params"] <= budget).all()
    # survival prefers feasible genomes: the initial archive holds the smallest and largest genomes
    # whatever the budget (archive_policies.select_initial), and fills the rest of its places with
    # feasible genomes of the pool first
    initial = pd.read_csv(work / "results/digits/search/iter0/archive.csv")
    extremes = [space.to_string(space.smallest()), space.to_string(space.largest())]
    forced = pool[pool["genome"].isin(extremes)]
    assert len(forced) == 2 and set(forced["genome"]) <= set(initial["genome"])
    feasible_forced = int((forced["params"] <= budget).sum())
    assert feasible_forced == 1  # the budget is below the largest net and above the smallest
    expected = feasible_forced + min(n_feasible - feasible_forced, len(initial) - len(forced))
    assert int((initial["params"] <= budget).sum()) == expected
