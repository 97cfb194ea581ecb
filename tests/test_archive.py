"""The archive table and the NAT / NATv2 policies: survival, initialisation, update."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
from synthetic_nas import SPACE, evaluate

from natv2 import adapt as AD
from natv2 import archive as A
from natv2 import archive_policies as P
from natv2 import survival as S
from natv2.config import load_settings
from natv2.errors import Natv2Error


@pytest.fixture(scope="module")
def base_cfg():
    return load_settings().search


def cfg_for(base, **changes):
    return dataclasses.replace(base, **changes)


def brute_force_non_dominated(F: np.ndarray) -> set[int]:
    """Rows no other row dominates (<= everywhere, < somewhere): the definition, no library."""
    out = set()
    for i, f in enumerate(F):
        dominated = np.any(np.all(F <= f, axis=1) & np.any(F < f, axis=1))
        if not dominated:
            out.add(i)
    return out


def random_table(rng, n, objectives, start=0):
    F = rng.random((n, len(objectives)))
    frame = pd.DataFrame(F, columns=list(objectives))
    frame.insert(0, "genome", [f"g{start + i}" for i in range(n)])
    return frame


@pytest.mark.parametrize("m", [2, 3])
def test_survival_keeps_the_non_dominated_set(m):
    rng = np.random.default_rng(m)
    for trial in range(5):
        F = rng.random((60, m))
        pymoo_front = set(NonDominatedSorting().do(F, only_non_dominated_front=True).tolist())
        assert pymoo_front == brute_force_non_dominated(F)  # the independent check agrees
        n = 25
        assert len(pymoo_front) <= n  # precondition: the front fits
        kept = S.survive(F, n, np.random.default_rng(trial))
        assert len(kept) == n and len(set(kept.tolist())) == n
        assert pymoo_front <= set(kept.tolist())
        assert set(np.flatnonzero(S.non_dominated(F)).tolist()) == pymoo_front


def test_survival_keeps_whole_fronts_in_rank_order():
    rng = np.random.default_rng(5)
    F = rng.random((80, 2))
    fronts = NonDominatedSorting().do(F)
    n = len(fronts[0]) + len(fronts[1]) + 1  # first two fronts fit, the third is split
    kept = set(S.survive(F, n, rng).tolist())
    assert set(fronts[0]) | set(fronts[1]) <= kept
    assert len(kept - set(fronts[0]) - set(fronts[1])) == 1
    assert (kept - set(fronts[0]) - set(fronts[1])) <= set(fronts[2])


def test_survival_thins_a_front_that_does_not_fit():
    x = np.linspace(0, 1, 30)
    F = np.column_stack([x, 1 - x])  # all 30 mutually non-dominated
    kept = S.survive(F, 10, np.random.default_rng(0))
    assert len(kept) == 10
    assert {0, 29} <= set(kept.tolist())  # crowding distance keeps the extremes


@pytest.mark.parametrize("objectives", [("top1_err", "params"), ("top1_err", "params", "latency_ms")])
def test_natv2_archive_bounded_and_keeps_non_dominated_members(base_cfg, objectives):
    size = 25  # NSGA-III reference directions for 25 points are cached: shared with the test above
    cfg = cfg_for(base_cfg, algorithm="natv2", archive_size=size, objectives=objectives)
    rng = np.random.default_rng(11)
    archive = random_table(rng, size, objectives)
    start = size
    for step in range(15):
        k = int(rng.integers(1, 12))
        candidates = random_table(rng, k, objectives, start=start)
        start += k
        union = pd.concat([archive, candidates], ignore_index=True)
        front = {union["genome"][i] for i in brute_force_non_dominated(union[list(objectives)].to_numpy())}
        assert len(front) <= size  # precondition of "never loses a member"
        archive = P.update_archive(archive, candidates, cfg, rng)
        assert len(archive) == size
        assert front <= set(archive["genome"]), f"step {step}: lost {front - set(archive['genome'])}"
        assert not archive["genome"].duplicated().any()


def test_nat_archive_grows_and_ignores_known_genomes(base_cfg):
    cfg = cfg_for(base_cfg, algorithm="nat", archive_size=10)
    rng = np.random.default_rng(0)
    archive = random_table(rng, 10, cfg.objectives)
    candidates = random_table(rng, 4, cfg.objectives, start=10)
    candidates.loc[0, "genome"] = "g3"  # already in the archive: keep the archive's row
    new = P.update_archive(archive, candidates, cfg, rng)
    assert len(new) == 13
    assert new.loc[new.genome == "g3", "top1_err"].item() == archive.loc[3, "top1_err"]
    assert list(new["genome"][:10]) == list(archive["genome"])


def test_init_genomes_nat_and_natv2(base_cfg):
    nat = P.init_genomes(SPACE, cfg_for(base_cfg, algorithm="nat", archive_size=20), np.random.default_rng(0))
    assert nat.shape == (20, SPACE.n_var)
    assert (nat[0] == SPACE.smallest()).all() and (nat[1] == SPACE.largest()).all()
    assert len(np.unique(nat, axis=0)) == 20
    assert all(SPACE.is_valid(g) for g in nat)
    v2 = P.init_genomes(SPACE, cfg_for(base_cfg, algorithm="natv2", archive_size=20, preprocess_mult=4),
                        np.random.default_rng(0))
    assert v2.shape == (80, SPACE.n_var) and len(np.unique(v2, axis=0)) == 80
    # NATv2's balanced sampling: stage depth 2 is common, NAT's uniform genes make it rare
    def depth(X):
        return (X[:, SPACE.block_offset:SPACE.block_offset + SPACE.n_blocks] > 0).reshape(len(X), SPACE.n_stages, -1).sum(-1)

    big_nat = P.init_genomes(SPACE, cfg_for(base_cfg, algorithm="nat", archive_size=400), np.random.default_rng(1))
    assert (depth(v2[2:]) == 2).mean() > 0.2 > (depth(big_nat[2:]) == 2).mean()


def test_init_is_deterministic(base_cfg):
    cfg = cfg_for(base_cfg, algorithm="natv2", archive_size=10)
    a = P.init_genomes(SPACE, cfg, np.random.default_rng(3))
    b = P.init_genomes(SPACE, cfg, np.random.default_rng(3))
    assert (a == b).all()


def test_select_initial_natv2_preprocessing(base_cfg):
    cfg = cfg_for(base_cfg, algorithm="natv2", archive_size=25, preprocess_mult=3)
    rng = np.random.default_rng(2)
    evaluated = evaluate(SPACE, P.init_genomes(SPACE, cfg, rng), rng)
    chosen = P.select_initial(evaluated, SPACE, cfg, rng)
    assert len(evaluated) == 75 and len(chosen) == 25
    assert {SPACE.to_string(SPACE.smallest()), SPACE.to_string(SPACE.largest())} <= set(chosen["genome"])
    others = evaluated.iloc[2:].reset_index(drop=True)
    front = {others["genome"][i] for i in brute_force_non_dominated(others[list(cfg.objectives)].to_numpy())}
    assert len(front) <= 23  # precondition: the front fits beside smallest and largest
    assert front <= set(chosen["genome"])
    # NAT keeps everything it evaluated
    nat = cfg_for(cfg, algorithm="nat")
    assert len(P.select_initial(evaluated, SPACE, nat, rng)) == len(evaluated)


def test_read_write_round_trip_and_errors(tmp_path, base_cfg):
    rng = np.random.default_rng(0)
    frame = A.tag_rows(evaluate(SPACE, SPACE.sample(5, rng, "natv2")), supernet="iter0", seed=0, iteration=0)
    path = tmp_path / "archive.csv"
    A.write_archive(path, frame[frame.columns[::-1]])
    back = A.read_archive(path, base_cfg.objectives)
    assert list(back.columns[:8]) == list(A.COLUMNS)
    assert back["genome"].tolist() == frame["genome"].tolist()
    assert (A.genomes_of(back, SPACE) == np.stack([SPACE.from_string(s) for s in frame.genome])).all()

    frame.drop(columns="params").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(Natv2Error, match=r"bad.csv: missing column\(s\) \['params'\]"):
        A.read_archive(tmp_path / "bad.csv", ("top1_err", "params"))
    bad = frame.copy()
    bad["top1_err"] = bad["top1_err"].astype(object)
    bad.loc[2, "top1_err"] = "oops"
    bad.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(Natv2Error, match="column 'top1_err' row 2: expected a finite number, got 'oops'"):
        A.read_archive(tmp_path / "nan.csv", ("top1_err",))
    with pytest.raises(Natv2Error, match="appears more than once"):
        A.check_table(pd.concat([frame, frame.iloc[:1]]), ("top1_err",), "x")


def test_objective_list_is_checked():
    assert A.check_objectives(["top1_err", "macs"]) == ("top1_err", "macs")
    with pytest.raises(Natv2Error, match="must include 'top1_err'"):
        A.check_objectives(["params", "macs"])
    with pytest.raises(Natv2Error, match="unknown"):
        A.check_objectives(["top1_err", "flops"])
    with pytest.raises(Natv2Error, match="2 to 4 distinct"):
        A.check_objectives(["top1_err"])


def test_config_section_rejects_bad_values():
    with pytest.raises(Natv2Error, match="search.objectives"):
        load_settings(overrides={"search": {"objectives": ["params", "macs"]}})
    with pytest.raises(Natv2Error, match="search.hv_reference: expected 2 values"):
        load_settings(overrides={"search": {"hv_reference": [1.0]}})
    with pytest.raises(Natv2Error, match="search.algorithm"):
        load_settings(overrides={"search": {"algorithm": "nat3"}})
    s = load_settings(overrides={"search": {"algorithm": "nat"}}).search
    assert (s.surrogate_kind, s.repair_mode, s.sampling_policy) == ("adaptive", "push", "nat")


def test_gene_distribution_and_sampling():
    rng = np.random.default_rng(0)
    top = SPACE.sample(50, rng, "natv2")
    probs = AD.gene_distribution(top, SPACE)
    assert len(probs) == SPACE.n_var
    pos = SPACE.slot_position(0, 0)
    expected = np.bincount(top[:, pos] - SPACE.xl[pos], minlength=SPACE.xu[pos] - SPACE.xl[pos] + 1) / 50
    assert np.allclose(probs[pos], expected)
    same = np.repeat(top[:1], 10, axis=0)
    drawn = AD.sample_distribution(AD.gene_distribution(same, SPACE), SPACE, 5, rng, "fill")
    assert (drawn == top[0]).all()
    smooth = AD.gene_distribution(same, SPACE, pseudo_count=1.0)
    assert all((p > 0).all() for p in smooth)
