"""Surrogate search, subset selection, candidate choice and the search/update CLI steps."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from synthetic_nas import SPACE, costs, error, evaluate

from natv2 import archive as A
from natv2 import archive_policies as P
from natv2 import survival as S
from natv2.cli import main
from natv2.config import load_settings
from natv2.errors import Natv2Error
from natv2.search import CostCache, SurrogateProblem, choose_candidates, initial_population, search_candidates, spread_score, subset_selection
from natv2.surrogate import fit_surrogate


@pytest.fixture(scope="module")
def base_cfg():
    # small populations and generations: the tests check behaviour, not search quality
    # archive_size 27: NATv2's initial survival keeps 25 = pop_size, one set of reference directions
    return dataclasses.replace(load_settings().search, archive_size=27, pop_size=25, generations=4, candidates=5,
                               surrogate_folds=3, subset_pop_size=20, subset_generations=10)


def make_archive(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return P.select_initial(evaluate(SPACE, P.init_genomes(SPACE, cfg, rng), rng), SPACE, cfg, rng)


def cost_fn(X):
    return costs(SPACE, X)


def run_once(cfg, archive, seed):
    rng = np.random.default_rng(seed)
    surrogate = fit_surrogate(A.genomes_of(archive, SPACE), archive["top1_err"].to_numpy(), cfg.surrogate_kind, rng,
                              folds=cfg.surrogate_folds, pool=cfg.surrogate_pool, lgbm_params=cfg.lgbm_params)
    return surrogate, search_candidates(archive, SPACE, surrogate, cost_fn, cfg, rng)


def test_cost_cache_computes_each_genome_once():
    calls = []

    def counted(X):
        calls.append(len(X))
        return costs(SPACE, X)

    cache = CostCache(counted, ["params", "latency_ms"])
    X = SPACE.sample(6, np.random.default_rng(0), "natv2")
    first = cache(np.concatenate([X, X[:2]]))
    again = cache(X[::-1])
    assert calls == [6] and cache.n_computed == 6
    assert np.allclose(first[:6], np.column_stack([costs(SPACE, X)["params"], costs(SPACE, X)["latency_ms"]]))
    assert np.allclose(again, first[:6][::-1])
    with pytest.raises(Natv2Error, match=r"missing \['macs'\]"):
        CostCache(lambda X: {"params": np.ones(len(X))}, ["macs"])(X)


def test_problem_predicts_error_and_computes_costs_exactly():
    cache = CostCache(cost_fn, ["params"])
    problem = SurrogateProblem(SPACE, ("params", "top1_err"), lambda X: error(SPACE, X), cache)
    X = SPACE.sample(7, np.random.default_rng(1), "natv2")
    out = {}
    problem._evaluate(X.astype(float), out)
    assert out["F"].shape == (7, 2)
    assert np.allclose(out["F"][:, 0], costs(SPACE, X)["params"])
    assert np.allclose(out["F"][:, 1], error(SPACE, X))


def test_subset_selection_k_distinct_and_spread():
    rng = np.random.default_rng(0)
    pool = rng.random((40, 1)) ** 3  # crowded near 0: a random subset spreads badly
    reference = np.array([[0.0], [1.0]])
    chosen = subset_selection(pool, reference, 6, rng, pop_size=30, generations=20)
    assert len(chosen) == 6 and len(set(chosen.tolist())) == 6
    assert chosen.min() >= 0 and chosen.max() < 40
    lo, span = 0.0, 1.0  # pool and reference already span [0, 1]
    best = spread_score((pool[chosen] - lo) / span, reference)
    random_scores = [spread_score(pool[rng.permutation(40)[:6]], reference) for _ in range(200)]
    assert best <= np.percentile(random_scores, 5)


def test_choose_candidates_drops_archive_genomes_and_keeps_k():
    rng = np.random.default_rng(0)
    objectives = ("top1_err", "params")
    pool_X = SPACE.sample(12, rng, "natv2")
    pool_X = np.concatenate([pool_X, pool_X[:2]])  # repeated genomes count once
    pool_F = np.column_stack([error(SPACE, pool_X), costs(SPACE, pool_X)["params"]])
    archive_X = pool_X[:3]
    archive_F = pool_F[:3]
    idx, source = choose_candidates(pool_X, pool_F, archive_X, archive_F, 8, objectives, rng,
                                    subset_pop_size=20, subset_generations=5)
    chosen = {pool_X[i].tobytes() for i in idx}
    assert len(idx) == 8 and len(chosen) == 8 and set(source.tolist()) == {"subset"}
    assert not chosen & {g.tobytes() for g in archive_X}
    # K or fewer new genomes: all of them, nothing invented
    idx, source = choose_candidates(pool_X[:5], pool_F[:5], archive_X, archive_F, 8, objectives, rng)
    assert sorted(idx.tolist()) == [3, 4] and source.tolist() == ["all", "all"]


def test_choose_candidates_spreads_over_the_whole_population_not_its_front():
    """The original subset-selects from the whole final population (msunas.py:291-302, ``pop``
    = ``res.pop[not_duplicate]``, costs of every member at :240), not from its predicted front."""
    rng = np.random.default_rng(0)
    n = 20
    pool_X = SPACE.sample(n, rng, "natv2")
    cost = np.arange(1.0, n + 1)  # 1 .. 20
    err = np.full(n, 5.0)
    err[0] = 4.0  # genome 0 dominates every other: the predicted front is genome 0 alone
    pool_F = np.column_stack([err, cost])
    # the archive's front brackets the pool's costs; even gaps fill the whole range
    archive_X, archive_F = SPACE.sample(2, np.random.default_rng(1), "natv2"), np.array([[6.0, 0.5], [3.0, 20.5]])
    idx, _ = choose_candidates(pool_X, pool_F, archive_X, archive_F, 4, ("top1_err", "params"), rng,
                               subset_pop_size=30, subset_generations=20)
    # front + best predicted errors would be costs 1-4; the spread reaches the expensive end
    assert pool_F[idx, 1].max() >= 15, pool_F[idx, 1]


def test_spread_score_takes_the_worst_cost_axis():
    """NAT's SubsetSelectionProblem: max over the cost objectives of the std of the gaps (msunas.py:99-102)."""
    ref = np.array([[0.0, 0.0], [1.0, 1.0]])
    uneven = np.array([[0.2, 0.1]])  # gaps 0.2 / 0.8 (std 0.3) and 0.1 / 0.9 (std 0.4)
    assert spread_score(uneven, ref) == pytest.approx(0.4)  # the worse axis, not the sum 0.7
    assert spread_score(np.array([[0.5, 0.5]]), ref) == pytest.approx(0.0)


def test_initial_population_is_fresh_and_random_by_default(base_cfg):
    """NAT/NATv2 start each iteration's surrogate search from a fresh population: ``_next``
    (NAT_extended/search/algorithms/msunas.py:274-287) builds a new NSGA-II from
    ``select_solver`` (msunas.py:178-229, ``get_sampling('int_lhs')``) every iteration; the
    archive enters only through the surrogate."""
    cfg = dataclasses.replace(base_cfg, algorithm="natv2")
    assert cfg.initial_population == "random" and load_settings().search.initial_population == "random"
    archive = make_archive(cfg)
    X, F = A.genomes_of(archive, SPACE), A.objective_matrix(archive, cfg.objectives)
    a = initial_population(X, F, SPACE, cfg, np.random.default_rng(0))
    b = initial_population(X, F, SPACE, cfg, np.random.default_rng(1))
    assert a.shape == (cfg.pop_size, SPACE.n_var) and len(np.unique(a, axis=0)) == cfg.pop_size
    assert all(SPACE.is_valid(g) for g in a)
    assert not np.array_equal(a, b)  # a new population per iteration (seed)
    front = {g.tobytes() for g in X[S.non_dominated(F)]}
    assert not front & {g.tobytes() for g in a}  # no archive genome seeds it
    # Latin hypercube: the resolution gene (3 values) is stratified, every value shows up
    assert set(a[:, 0].tolist()) == {0, 1, 2}
    with pytest.raises(Natv2Error, match="search.initial_population"):
        initial_population(X, F, SPACE, dataclasses.replace(cfg, initial_population="bogus"), np.random.default_rng(0))


def test_initial_population_is_seeded_with_the_archive_front(base_cfg):
    cfg = dataclasses.replace(base_cfg, algorithm="natv2", initial_population="archive")
    archive = make_archive(cfg)
    X, F = A.genomes_of(archive, SPACE), A.objective_matrix(archive, cfg.objectives)
    init = initial_population(X, F, SPACE, cfg, np.random.default_rng(0))
    assert init.shape == (cfg.pop_size, SPACE.n_var) and len(np.unique(init, axis=0)) == cfg.pop_size
    front = {g.tobytes() for g in X[S.non_dominated(F)]}
    assert front <= {g.tobytes() for g in init}


@pytest.mark.parametrize("algorithm,objectives", [
    ("natv2", ("top1_err", "params")),
    ("nat", ("top1_err", "params")),
    ("natv2", ("top1_err", "params", "latency_ms")),
])
def test_search_returns_k_distinct_new_valid_candidates(base_cfg, algorithm, objectives):
    cfg = dataclasses.replace(base_cfg, algorithm=algorithm, objectives=objectives)
    archive = make_archive(cfg)
    surrogate, cands = run_once(cfg, archive, seed=1)
    assert len(cands) == cfg.candidates
    assert not cands["genome"].duplicated().any()
    assert not set(cands["genome"]) & set(archive["genome"])
    X = A.genomes_of(cands, SPACE)
    assert all(SPACE.is_valid(g) for g in X)
    exact = costs(SPACE, X)
    for name in objectives[1:]:
        assert np.allclose(cands[name], exact[name])
    assert np.allclose(cands["predicted_top1_err"], surrogate.predict(X))
    if cfg.repair_mode == "fill":  # NATv2 repair: fill keeps the same genomes valid as push
        assert (SPACE.repair(X, mode="fill") == X).all()


def test_search_finds_better_predicted_points_than_the_archive(base_cfg):
    cfg = dataclasses.replace(base_cfg, generations=8)
    archive = make_archive(cfg)
    _, cands = run_once(cfg, archive, seed=3)
    X = A.genomes_of(cands, SPACE)
    true_F = np.column_stack([error(SPACE, X), costs(SPACE, X)["params"]])
    archive_F = A.objective_matrix(archive, cfg.objectives)
    # at least one candidate is truly non-dominated by the whole archive
    both = np.concatenate([archive_F, true_F])
    assert S.non_dominated(both)[len(archive_F):].any()


def test_same_seed_same_candidates(base_cfg):
    cfg = dataclasses.replace(base_cfg, algorithm="natv2")
    archive = make_archive(cfg)
    _, a = run_once(cfg, archive, seed=5)
    _, b = run_once(cfg, archive, seed=5)
    pd.testing.assert_frame_equal(a, b)


def test_search_and_update_steps_from_the_command_line(tmp_path, monkeypatch, base_cfg):
    import natv2.search as step

    config = tmp_path / "config.yaml"
    config.write_text("search: {archive_size: 25, pop_size: 20, generations: 3, candidates: 4,"
                      " surrogate_folds: 3, subset_pop_size: 12, subset_generations: 4}\n")
    settings = load_settings(["config/config.yaml", config])
    archive = A.tag_rows(make_archive(settings.search), supernet="iter0", seed=0, iteration=0)
    A.write_archive(tmp_path / "archive0.csv", archive)
    tables = []
    monkeypatch.setattr(step, "supernet_costs", lambda settings, path, part_costs: tables.append(part_costs) or (SPACE, cost_fn))
    args = ["--config", "config/config.yaml", "--config", str(config)]
    assert main(["search", *args, "--archive", str(tmp_path / "archive0.csv"), "--supernet", "unused.pt",
                 "--part-costs", "unused.json", "--iteration", "1", "--out", str(tmp_path / "candidates.csv"),
                 "--surrogate-out", str(tmp_path / "surrogate.json")]) == 0
    assert tables == ["unused.json"]  # the run's part counts reach the cost function
    cands = pd.read_csv(tmp_path / "candidates.csv")
    summary = json.loads((tmp_path / "surrogate.json").read_text())
    assert len(cands) == 4 and (cands["iteration"] == 1).all()
    assert summary["kind"] == "lgbm" and -1 <= summary["cv_tau"] <= 1 and summary["cv_rmse"] > 0
    assert set(summary["predicted"]) == set(cands["genome"])
    # the same step again writes the same bytes: the fit's time goes to the log, not surrogate.json
    assert main(["search", *args, "--archive", str(tmp_path / "archive0.csv"), "--supernet", "unused.pt",
                 "--part-costs", "unused.json", "--iteration", "1", "--out", str(tmp_path / "again.csv"),
                 "--surrogate-out", str(tmp_path / "again.json")]) == 0
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "surrogate.json").read_bytes()
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "candidates.csv").read_bytes()

    # the evaluate step's shards (here: the synthetic truth), then the update
    measured = evaluate(SPACE, A.genomes_of(cands, SPACE))
    measured.iloc[:2].assign(row=[0, 1]).to_csv(tmp_path / "cand.0.csv", index=False)
    measured.iloc[2:].assign(row=[2, 3]).to_csv(tmp_path / "cand.1.csv", index=False)
    assert main(["update", *args, "--archive", str(tmp_path / "archive0.csv"),
                 "--candidates", str(tmp_path / "cand.1.csv"), str(tmp_path / "cand.0.csv"),
                 "--surrogate", str(tmp_path / "surrogate.json"), "--iteration", "1",
                 "--out", str(tmp_path / "archive1.csv"), "--report", str(tmp_path / "update.json")]) == 0
    new = pd.read_csv(tmp_path / "archive1.csv")
    report = json.loads((tmp_path / "update.json").read_text())
    assert len(new) == 25  # NATv2: fixed size
    assert report["n_candidates"] == 4 and report["candidates"]["n"] == 4
    assert -1 <= report["candidates"]["tau"] <= 1
    assert (new.loc[new.genome.isin(cands.genome), "iteration"] == 1).all()

    # bad input: one line, exit 2
    (tmp_path / "broken.csv").write_text("genome,params\nx,1\n")
    assert main(["update", *args, "--archive", str(tmp_path / "broken.csv"), "--candidates",
                 str(tmp_path / "cand.0.csv"), "--iteration", "1", "--out", str(tmp_path / "x.csv")]) == 2


def test_search_step_cost_wiring_with_a_real_supernet(tmp_path, monkeypatch):
    """The CLI's own cost function: the supernet's space and natv2.costs on extracted subnets.

    (The whole search step runs in the test above with synthetic costs: extracting a subnet
    takes ~0.3-0.8 s on a loaded 2-core machine, so here only two genomes are measured.)
    """
    from natv2.costs import count_macs, count_params
    from natv2.nets import build_supernet
    from natv2.nets.checkpoint import save_supernet
    from natv2.search import supernet_costs

    net = build_supernet({"variant": "ofa_mbv3", "resolutions": [32, 40], "widths": [1.0]}, 10)
    save_supernet(tmp_path / "supernet.pt", net)
    settings = load_settings(overrides={"search": {"objectives": ["top1_err", "params", "macs"]}})
    space, fn = supernet_costs(settings, tmp_path / "supernet.pt")
    assert space == net.space
    other = space.sample(1, np.random.default_rng(0), "natv2")[0]
    assert not (other == space.smallest()).all()
    out = fn(np.stack([space.smallest(), other]))
    assert set(out) == {"params", "macs"}  # only the run's cost objectives
    small = net.extract(space.smallest())
    assert out["params"][0] == count_params(small) < out["params"][1]
    assert out["macs"][0] == count_macs(small, 32) <= out["macs"][1]
    # candidates.csv gets the exact costs that are not objectives (their evaluation reuses them)
    other_net = net.extract(other)
    expected = {"params": [count_params(other_net)], "macs": [count_macs(other_net, space.decode(other).resolution)]}
    assert fn.architecture([space.to_string(other)]) == expected
    # with the run's table of part counts (natv2 part-costs) the same integers, no net counted
    import natv2.part_costs as pc
    from natv2.io import write_json

    write_json(tmp_path / "part_costs.json", pc.part_cost_table(net))
    _, tabled = supernet_costs(settings, tmp_path / "supernet.pt", tmp_path / "part_costs.json")
    monkeypatch.setattr(pc, "count_parts", lambda *a, **k: pytest.fail("a net was counted"))
    assert tabled.architecture([space.to_string(other)]) == expected
    assert {k: list(v) for k, v in tabled(np.stack([space.smallest()])).items()} == \
        {"params": [out["params"][0]], "macs": [out["macs"][0]]}


def test_candidates_get_the_exact_params_and_macs_that_are_not_objectives():
    from natv2.search import with_architecture_costs

    def cost_fn(genomes):  # a synthetic cost function: no part counts, the table stays as it is
        return {"params": np.ones(len(genomes))}

    cost_fn.architecture = lambda genomes: {"params": [10 * len(g) for g in genomes], "macs": [len(g) for g in genomes]}
    cands = pd.DataFrame({"genome": ["ab", "abc"], "predicted_top1_err": [5.0, 4.0], "params": [2.0, 3.0],
                          "source": ["subset", "subset"]})
    out = with_architecture_costs(cands, cost_fn)
    assert list(out.columns) == ["genome", "predicted_top1_err", "params", "macs", "source"]
    assert list(out["params"]) == [2.0, 3.0] and list(out["macs"]) == [2, 3]  # an objective's column stays
    assert "macs" not in cands  # a copy
    del cost_fn.architecture
    assert with_architecture_costs(cands, cost_fn) is cands


def test_paper_config_has_the_originals_search_settings():
    """The original's surrogate search and subset selection (NAT_extended/search/algorithms/msunas.py):
    NSGA-II population 100 (``select_solver``, :181) for 20 generations (``_next``, :287); the
    subset-selection GA with population 500 (:247) for 200 generations (:255), started afresh."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    paper = load_settings([root / "config" / "config.yaml", root / "config" / "paper.yaml"]).search
    assert (paper.pop_size, paper.generations) == (100, 20)
    assert (paper.subset_pop_size, paper.subset_generations) == (500, 200)
    assert paper.initial_population == "random" and paper.surrogate_kind == "lgbm" and paper.lgbm_params == {}
    assert paper.surrogate_folds == 10
