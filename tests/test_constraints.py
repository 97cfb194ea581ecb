"""Hard constraints (search.constraints, issue 15): survival, the surrogate search, the front, `natv2 pick`."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from synthetic_nas import SPACE, costs, evaluate

from natv2 import archive as A
from natv2 import archive_policies as P
from natv2 import constraints as C
from natv2 import survival as S
from natv2.cli import main
from natv2.config import load_settings
from natv2.errors import Natv2Error
from natv2.front import pareto_front
from natv2.search import CostCache, SurrogateProblem, search_candidates
from natv2.surrogate import fit_surrogate


@pytest.fixture(scope="module")
def base_cfg():
    return dataclasses.replace(load_settings().search, archive_size=27, pop_size=25, generations=4, candidates=5,
                               surrogate_folds=3, subset_pop_size=20, subset_generations=10)


def make_archive(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return P.select_initial(evaluate(SPACE, P.init_genomes(SPACE, cfg, rng), rng), SPACE, cfg, rng)


def test_constraints_are_checked_in_the_config():
    cfg = load_settings(overrides={"search": {"constraints": {"params": 1.0e6, "latency_ms": 5}}}).search
    assert cfg.constraints == {"params": 1.0e6, "latency_ms": 5.0}
    assert load_settings().search.constraints == {}
    with pytest.raises(Natv2Error, match="search.constraints"):
        load_settings(overrides={"search": {"constraints": {"flops": 1}}})
    with pytest.raises(Natv2Error, match="search.latency_table: required"):
        load_settings(overrides={"search": {"constraints": {"latency_lut": 3.0}}})


def test_survival_keeps_feasible_rows_before_better_infeasible_ones():
    rng = np.random.default_rng(0)
    # rows 0-4 dominate rows 5-9, but only 5-9 satisfy params <= 10
    frame = pd.DataFrame({"top1_err": [1, 2, 3, 4, 5, 11, 12, 13, 14, 15.0],
                          "params": [50, 49, 48, 47, 46, 10, 9, 8, 7, 6.0]})
    F = A.objective_matrix(frame, ["top1_err", "params"])
    G = C.constraint_matrix(frame, {"params": 10.0})
    assert S.survive(F, 4, rng).tolist() != [5, 6, 7, 8]  # without constraints the mixed front survives
    assert set(S.survive(F, 4, rng, G).tolist()) <= {5, 6, 7, 8, 9}
    # more survivors than feasible rows: the least violating infeasible ones fill up
    assert S.survive(F, 7, rng, G).tolist() == [3, 4, 5, 6, 7, 8, 9]


def test_problem_reports_constraints_to_pymoo():
    X = SPACE.sample(6, np.random.default_rng(1), policy="natv2")
    exact = costs(SPACE, X)
    cache = CostCache(lambda Y: costs(SPACE, Y), ("params", "latency_ms"))  # latency_ms: constrained, no objective
    problem = SurrogateProblem(SPACE, ("top1_err", "params"), lambda Y: np.full(len(Y), 7.0), cache,
                               {"latency_ms": 2.0, "top1_err": 5.0})
    assert problem.n_ieq_constr == 2
    out = problem.evaluate(X.astype(float), return_as_dictionary=True)
    assert np.allclose(out["F"][:, 1], exact["params"])
    assert np.allclose(out["G"][:, 0], exact["latency_ms"] - 2.0)
    assert np.allclose(out["G"][:, 1], 2.0)  # predicted error 7 against a bound of 5


@pytest.mark.parametrize("constraint", ["params", "latency_ms"])
def test_constrained_search_proposes_feasible_candidates(base_cfg, constraint):
    archive = make_archive(base_cfg)
    bound = float(np.median(archive[constraint]))
    cfg = dataclasses.replace(base_cfg, constraints={constraint: bound})
    rng = np.random.default_rng(2)
    surrogate = fit_surrogate(A.genomes_of(archive, SPACE), archive["top1_err"].to_numpy(), cfg.surrogate_kind, rng,
                              folds=cfg.surrogate_folds)
    cands = search_candidates(archive, SPACE, surrogate, lambda X: costs(SPACE, X), cfg, rng)
    assert len(cands) == cfg.candidates
    exact = costs(SPACE, A.genomes_of(cands, SPACE))[constraint]
    assert (exact <= bound).all(), (exact, bound)


def test_update_keeps_the_feasible_genomes(base_cfg):
    archive = make_archive(base_cfg)
    bound = float(np.quantile(archive["params"], 0.3))
    cfg = dataclasses.replace(base_cfg, constraints={"params": bound}, archive_size=12)
    rng = np.random.default_rng(3)
    new = evaluate(SPACE, SPACE.sample(10, rng, policy="natv2"), rng)
    new = new[~new["genome"].isin(archive["genome"])]
    updated = P.update_archive(archive, new, cfg, rng)
    merged = pd.concat([archive, new], ignore_index=True)
    n_feasible = int((merged["params"] <= bound).sum())
    assert 0 < n_feasible < 12 and len(updated) == 12
    assert int((updated["params"] <= bound).sum()) == n_feasible  # every feasible genome survived


def test_front_keeps_feasible_members_only_and_says_when_there_is_none(base_cfg):
    archive = make_archive(base_cfg)
    bound = float(np.median(archive["params"]))
    free = pareto_front(archive, base_cfg.objectives)
    front = pareto_front(archive, base_cfg.objectives, {"params": bound})
    assert (front["params"] <= bound).all() and len(front) >= 1
    assert (free["params"] > bound).any()  # the budget does cut the unconstrained front
    with pytest.raises(Natv2Error, match=r"archive: no genome satisfies search.constraints \(params <= 1\); "
                                         r"of 27 genomes: min params \d+"):
        pareto_front(archive, base_cfg.objectives, {"params": 1.0})


PARETO = pd.DataFrame({
    "id": ["0", "1", "2", "3"], "genome": ["a", "b", "c", "d"], "resolution": [32] * 4,
    "params": [3e6, 1.5e6, 8e5, 4e5], "macs": [9e7, 5e7, 2e7, 1e7], "latency_ms": [9.0, 6.0, 4.0, 2.0],
    "val_top1": [90, 88, 85, 80], "test_top1": [89, 87, 84, 79], "test_top1_finetuned": [92, 90, 86, 83],
    "path": [f"results/x/nets/{i}" for i in range(4)], "select_top1_finetuned": [91, 89, 87, 82],
})


def test_pick_prints_the_best_net_within_the_budget(tmp_path, capsys):
    path = tmp_path / "pareto.csv"
    PARETO.to_csv(path, index=False)
    assert main(["pick", "--max-latency-ms", "5", str(path)]) == 0
    assert capsys.readouterr().out.startswith("2 results/x/nets/2 (select_top1_finetuned 87.00;")
    assert main(["pick", "--max-latency-ms", "7", "--max-params", "1e6", str(path)]) == 0
    assert capsys.readouterr().out.startswith("2 results/x/nets/2 ")
    assert main(["pick", "--max-params", "2e6", str(path)]) == 0
    assert capsys.readouterr().out.startswith("1 results/x/nets/1 ")
    assert main(["pick", "--max-latency-ms", "1", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["natv2: error: pareto.csv: no network within the budget (latency_ms <= 1); smallest latency_ms 2"]
    assert main(["pick", "--max-latency-lut", "1", str(path)]) == 2
    assert "no column 'latency_lut'" in capsys.readouterr().err
