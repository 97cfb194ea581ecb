"""The workflow with a latency table and hard constraints (issue 15), end to end on digits.

One tiny run searches on (top1_err, latency_lut) with a table measured here; a second run in the
same folder adds a params budget at the median of the first pareto.csv (the supernet phases are
reused), and every member of its pareto.csv must be within it.
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


def test_latency_lut_search_then_a_params_budget_that_halves_the_front(tmp_path):
    from natv2.config import load_settings
    from natv2.latency_table import load_table

    work = make_workdir(tmp_path)
    proc = run([str(BIN / "natv2"), "--threads", "1", "latency-table", "--config", "config/config.yaml",
                "--config", "tiny.yaml", "--out", "table.json", "--repeats", "1", "--warmup", "0"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (work / "cheap.yaml").write_text(yaml.safe_dump(CHEAP))
    (work / "lut.yaml").write_text(yaml.safe_dump(
        {"search": {"objectives": ["top1_err", "latency_lut"], "latency_table": "table.json"}}))
    smk(work, PARETO, configfiles=("tiny.yaml", "cheap.yaml", "lut.yaml"))

    free = pd.read_csv(work / PARETO)
    archive = pd.read_csv(work / "results/digits/search/iter1/archive.csv")
    candidates = pd.read_csv(work / "results/digits/search/iter1/candidates.csv")
    assert "latency_lut" in free.columns and "latency_lut" in candidates.columns
    # latency_lut is the table's prediction, in the archive and in pareto.csv alike
    space = load_settings([work / "config/config.yaml", work / "tiny.yaml"]).supernet_for("digits").space()
    table = load_table(work / "table.json")
    assert np.allclose(archive["latency_lut"], table.predict(space, list(archive["genome"])))
    assert (archive["latency_lut"] > 0).all() and archive["latency_lut"].nunique() > 1
    assert np.allclose(free["latency_lut"], table.predict(space, list(free["genome"])))

    budget = float(np.median(free["params"]))
    assert (free["params"] > budget).any() and (free["params"] <= budget).any()
    (work / "budget.yaml").write_text(yaml.safe_dump({"search": {"constraints": {"params": budget}}}))
    smk(work, PARETO, configfiles=("tiny.yaml", "cheap.yaml", "lut.yaml", "budget.yaml"))
    bounded = pd.read_csv(work / PARETO)
    front = pd.read_csv(work / "results/digits/front.csv")
    assert len(bounded) >= 1
    assert (bounded["params"] <= budget).all(), bounded[["id", "params"]]
    assert (front["params"] <= budget).all()
