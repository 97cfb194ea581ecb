"""OFA3 ensembles: sparse scoring, the NSGA-II selection, costs per mode, the ensembles.csv table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from natv2.config import load_settings
from natv2.ensemble_selection import (
    CSV_COLUMNS,
    EnsembleScorer,
    ensemble_costs,
    ensembles_table,
    select_ensembles,
    topk_from_probs,
)
from natv2.errors import Natv2Error
from natv2.io import read_csv, write_csv
from natv2.survival import non_dominated


def random_members(n_members, n_images, n_classes, k, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes, (n_images,), generator=gen).numpy()
    dense, tables = [], {}
    for m in range(n_members):
        logits = torch.randn(n_images, n_classes, generator=gen) * 2
        logits[torch.arange(n_images), torch.as_tensor(labels)] += 1.0
        p = logits.softmax(1)
        dense.append(p)
        tables[f"m{m}"] = topk_from_probs(p, k)
    return tables, labels, torch.stack(dense)


def test_sparse_scoring_equals_dense_mean_when_k_covers_all_classes():
    tables, labels, dense = random_members(6, 300, 7, k=7)
    scorer = EnsembleScorer(list(tables.values()), labels)
    rng = np.random.default_rng(0)
    X = rng.random((20, 6)) < 0.5
    X[X.sum(1) == 0, 0] = True
    expected = [
        float((dense[torch.as_tensor(x)].mean(0).argmax(1).numpy() == labels).mean() * 100) for x in X
    ]
    np.testing.assert_allclose(scorer.top1(X), expected, atol=1e-9)
    # a single member scores its own top-1
    assert scorer.top1(np.eye(6, dtype=bool)[:1])[0] == pytest.approx(tables["m0"].top1(labels))


def test_sparse_top3_matches_full_softmax_on_confident_members():
    """With k < classes the dropped mass is small; on confident members the argmax is unchanged."""
    tables, labels, dense = random_members(5, 400, 20, k=20, seed=1)
    sharp = {m: topk_from_probs((dense[i].log() * 4).softmax(1), 3) for i, m in enumerate(tables)}
    full = {m: topk_from_probs((dense[i].log() * 4).softmax(1), 20) for i, m in enumerate(tables)}
    X = np.ones((1, 5), dtype=bool)
    a = EnsembleScorer(list(sharp.values()), labels).top1(X)[0]
    b = EnsembleScorer(list(full.values()), labels).top1(X)[0]
    assert abs(a - b) <= 1.0  # at most 1 % of 400 images change their argmax


def known_pair_case(n_images=200, n_classes=5, n_noise=6, seed=0):
    """Members a and b are each right on half of the images and complementary: their mean is always right.

    The noise members are individually more accurate (60 %) but all make the same mistakes,
    so no ensemble without both a and b reaches 100 %.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n_images)
    wrong = (labels + 1) % n_classes
    half = np.arange(n_images) < n_images // 2
    members = {}

    def table(correct_mask, strong):
        p = np.full((n_images, n_classes), 0.0)
        rows = np.arange(n_images)
        p[rows, labels] = np.where(correct_mask, strong, 0.4)
        p[rows, wrong] = np.where(correct_mask, 0.0, 0.5)
        rest = (1 - p.sum(1)) / (n_classes - 2)
        for c in range(n_classes):
            free = (labels != c) & (wrong != c)
            p[free, c] = rest[free]
        return topk_from_probs(torch.tensor(p), 3)

    members["a"] = table(half, 0.9)
    members["b"] = table(~half, 0.9)
    shared = rng.random(n_images) < 0.6  # the same 60 % for every noise member
    for i in range(n_noise):
        members[f"n{i}"] = table(shared, 0.7)
    costs = pd.DataFrame({"params": 100, "macs": 1000, "latency_ms": 1.0}, index=list(members))
    return members, labels, costs


def test_selection_finds_the_known_best_pair():
    members, labels, costs = known_pair_case()
    table = select_ensembles(members, labels, costs, mode="sequential", population=16, generations=15,
                             max_members=4, rng=np.random.default_rng(3))
    pairs = table[table["members"].str.count(";") == 1]
    assert len(pairs) == 1
    assert set(pairs.iloc[0]["members"].split(";")) == {"a", "b"}
    assert pairs.iloc[0]["val_top1"] == pytest.approx(100.0)
    assert pairs.iloc[0]["latency_ms"] == pytest.approx(2.0)  # sequential: the sum
    # nothing cheaper than the pair exists, nothing costlier can be more accurate: a single row
    assert len(table) == 1


def test_parallel_latency_is_max_and_sequential_is_sum():
    member_costs = pd.DataFrame({"params": [10, 20, 30], "macs": [1, 2, 3], "latency_ms": [1.5, 4.0, 2.5]})
    X = np.array([[1, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=bool)
    par = ensemble_costs(member_costs, X, "parallel")
    seq = ensemble_costs(member_costs, X, "sequential")
    np.testing.assert_allclose(par["latency_ms"], [4.0, 2.5, 4.0])
    np.testing.assert_allclose(seq["latency_ms"], [5.5, 4.0, 8.0])
    # params and MACs add up in both modes
    np.testing.assert_array_equal(par["params"], [30, 40, 60])
    np.testing.assert_array_equal(seq["macs"], [3, 4, 6])
    with pytest.raises(Natv2Error, match="mode"):
        ensemble_costs(member_costs, X, "pipelined")


def test_ensembles_csv_rows_are_mutually_non_dominated(tmp_path):
    tables, labels, _ = random_members(10, 300, 10, k=5, seed=2)
    test_tables, test_labels, _ = random_members(10, 100, 10, k=5, seed=3)
    rng = np.random.default_rng(0)
    pareto = pd.DataFrame({"id": list(tables), "params": rng.integers(1e4, 1e5, 10),
                           "macs": rng.integers(1e5, 1e6, 10), "latency_ms": rng.uniform(1, 5, 10)})
    cfg = load_settings(overrides={"ensemble": {"population": 12, "generations": 8}}).ensemble
    table = ensembles_table(pareto, tables, labels, test_tables, test_labels, cfg, rng=np.random.default_rng(1))
    write_csv(tmp_path / "ensembles.csv", table)
    back = read_csv(tmp_path / "ensembles.csv")
    assert list(back.columns) == CSV_COLUMNS
    assert set(back["mode"]) == {"parallel", "sequential"}
    assert back["id"].is_unique
    for mode, group in back.groupby("mode"):
        F = np.column_stack([100 - group["val_top1"], group["latency_ms"]])
        assert non_dominated(F).all(), mode
        assert len(np.unique(F, axis=0)) == len(F)
        sizes = group["members"].str.split(";").map(len)
        assert sizes.between(cfg.min_members, cfg.max_members).all()
    assert back["test_top1"].between(0, 100).all()
    # same seed, same table
    again = ensembles_table(pareto, tables, labels, test_tables, test_labels, cfg, rng=np.random.default_rng(1))
    pd.testing.assert_frame_equal(again, table)


def test_bad_costs_and_too_small_fronts_are_clear_errors():
    members, labels, costs = known_pair_case(n_noise=1)
    no_latency = costs.drop(columns="latency_ms")
    with pytest.raises(Natv2Error, match="latency_ms.*not measured"):
        select_ensembles(members, labels, no_latency, mode="parallel", rng=np.random.default_rng(0))
    nan_latency = costs.copy()
    nan_latency.loc["b", "latency_ms"] = np.nan
    with pytest.raises(Natv2Error, match="member\\(s\\) b"):
        select_ensembles(members, labels, nan_latency, mode="parallel", rng=np.random.default_rng(0))
    with pytest.raises(Natv2Error, match="at least 2"):
        select_ensembles({"a": members["a"]}, labels, costs, mode="parallel", rng=np.random.default_rng(0))
    cfg = load_settings().ensemble
    with pytest.raises(Natv2Error, match="empty"):
        ensembles_table(pd.DataFrame(columns=["id", "latency_ms"]), {}, labels, {}, labels, cfg,
                        rng=np.random.default_rng(0))


def test_dominated_pairs_compare_accuracy_and_cost_on_the_same_split():
    from natv2.ensemble_selection import dominance_lines, dominated_pairs

    singles = pd.DataFrame({"id": ["a", "b", "c"], "select_top1": [80.0, 85.0, 90.0], "latency_ms": [1.0, 2.0, 3.0]})
    ensembles = pd.DataFrame({"id": ["e0", "e1"], "mode": ["parallel", "sequential"], "members": ["a;b", "a;c"],
                              "val_top1": [88.0, 90.0], "latency_ms": [2.0, 4.0]})
    pairs = dominated_pairs(singles, ensembles, single_top1="select_top1")
    # e0 (88 % at 2 ms) beats b (85 % at 2 ms) and nothing else; e1 (90 % at 4 ms) only ties c on accuracy
    assert pairs[["ensemble", "net"]].values.tolist() == [["e0", "b"]]
    assert dominance_lines(singles, ensembles)[0].startswith("ensemble e0 (parallel, members a;b) dominates net b")
    worse = ensembles.assign(val_top1=[70.0, 75.0])
    assert dominated_pairs(singles, worse, single_top1="select_top1").empty
    assert dominance_lines(singles, worse) == ["no ensemble dominates a single net of the front on "
                                               "(held-out val error, latency_ms)"]


def test_ofa3_search_settings_start_and_mutation():
    """OFA3's ensemble search (ito-rafael/once-for-all-3, jupyter-notebooks/ofa3-max-latency.ipynb):
    NSGA-II with P = 100, N = 2000 generations, mutation_prob 0.01 (cell 29); the initial population
    is the all-members ensemble (``np.ones((P, P))``, cell 49); ``ChoiceRandomMutation(prob=1.0,
    prob_var=0.01)`` (cell 38) redraws each bit uniformly, so a bit flips with probability 0.005."""
    from pathlib import Path

    from natv2.ensemble_selection import RedrawMutation

    root = Path(__file__).resolve().parents[1]
    paper = load_settings([root / "config" / "config.yaml", root / "config" / "paper.yaml"]).ensemble
    assert (paper.population, paper.generations, paper.mutation_prob, paper.initial) == (100, 2000, 0.01, "all")
    assert paper.max_members == 0 and load_settings().ensemble.initial == "all"
    # generation 1 = the initial population only: the all-members ensemble (no cap)
    members, labels, costs = known_pair_case()
    table = select_ensembles(members, labels, costs, mode="parallel", population=10, generations=1, max_members=0,
                             rng=np.random.default_rng(0))
    assert table["members"].tolist() == [";".join(members)]
    # the mutation redraws bits: about half of the redrawn ones change
    X = np.zeros((200, 1000), dtype=bool)
    flipped = RedrawMutation(0.01)._do(None, X, random_state=np.random.default_rng(0))
    assert abs(flipped.mean() - 0.005) < 0.001
    with pytest.raises(Natv2Error, match="ensemble.initial"):
        select_ensembles(members, labels, costs, mode="parallel", initial="none", rng=np.random.default_rng(0))
