"""The genome: layout, sampling policies, repair, validation, decode/encode, string form."""
from __future__ import annotations

import numpy as np
import pytest

from natv2.errors import Natv2Error
from natv2.space import Arch, SearchSpace

SPACES = [
    SearchSpace(),
    SearchSpace(resolutions=(32, 40, 48), widths=(1.0, 1.2)),
    SearchSpace(resolutions=(48, 64), n_exits=5),
    SearchSpace(resolutions=(32, 40), n_exits=5, levels=(1, 2, 3)),  # EE_P / EE_DP
]


def test_layout_is_derived_from_fields():
    s = SearchSpace(resolutions=(32, 40, 48), widths=(1.0, 1.2))
    assert s.n_var == 22
    assert s.xl.tolist() == [0, 0] + [1, 1, 0, 0] * 5
    assert s.xu.tolist() == [2, 1] + [9] * 20
    e = SearchSpace(n_exits=5)
    assert e.n_var == 23 and e.exit_position == 22
    assert (e.xl[22], e.xu[22]) == (1, 5)
    small = SearchSpace(kernels=(3, 5), expands=(4,), depths=(1, 2, 3), n_stages=3, max_blocks=3)
    assert small.n_var == 11
    assert small.xu.tolist() == [0, 0] + [2] * 9
    assert small.xl.tolist() == [0, 0] + [1, 0, 0] * 3


def test_block_codes():
    s = SearchSpace()
    # code = 3 * idx(expand) + idx(kernel) + 1 (design.md §3)
    assert s.code(3, 3) == 1 and s.code(7, 3) == 3 and s.code(3, 4) == 4 and s.code(7, 6) == 9
    assert [s.block(c) for c in (1, 5, 9)] == [(3, 3), (5, 4), (7, 6)]


@pytest.mark.parametrize("space", SPACES, ids=["ofa", "multi", "exits", "parallel"])
@pytest.mark.parametrize("policy", ["nat", "natv2", "balanced"])
def test_samples_are_valid_and_round_trip(space, policy):
    X = space.sample(1000, np.random.default_rng(1), policy=policy)
    assert X.shape == (1000, space.n_var) and X.dtype == np.int64
    assert (X >= space.xl).all() and (X <= space.xu).all()
    for g in X[:100]:
        assert space.is_valid(g)
        arch = space.decode(g)
        assert np.array_equal(space.encode(arch), g)
        s = space.to_string(g)
        assert "," not in s and " " not in s
        assert np.array_equal(space.from_string(s), g)
        assert Arch.from_dict(arch.to_dict()) == arch
    # every value of every gene shows up (nat: P(slot 3 skipped) = 0.01); with 63 parallel-block
    # codes 1000 samples leave some rare ones out, so there only the gene's own values are checked
    for pos in range(space.n_var):
        values, allowed = set(np.unique(X[:, pos]).tolist()), set(range(space.xl[pos], space.xu[pos] + 1))
        assert values == allowed if space.n_choices <= 9 else values <= allowed, pos


def test_sampling_is_seeded():
    s = SearchSpace(resolutions=(32, 40))
    a = s.sample(10, np.random.default_rng(7), "natv2")
    b = s.sample(10, np.random.default_rng(7), "natv2")
    c = s.sample(10, np.random.default_rng(8), "natv2")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def _depth_shares(space, X):
    depths = np.stack([[len(st) for st in space.decode(g).stages] for g in X])
    return {d: float(np.mean(depths == d)) for d in space.depths}


def test_balanced_depths_and_biased_nat():
    s = SearchSpace()
    n = 2000
    bal = _depth_shares(s, s.sample(n, np.random.default_rng(0), "balanced"))
    for d in (2, 3, 4):
        assert abs(bal[d] - 1 / 3) < 0.03, bal
    uni = _depth_shares(s, s.sample(n, np.random.default_rng(0), "nat"))
    # uniform genes: P(depth 4) = 0.9^2 = 0.81, P(depth 2) = 0.01
    assert abs(uni[4] - 0.81) < 0.03 and uni[2] < 0.03, uni


def test_natv2_initial_sampling_skips_optional_slots_with_one_third():
    """NATv2's initial sampling (NAT_extended/search/search_spaces/ea_ofa_search_spaces.py:196-211,
    ``set_initial_probs``: slots 3 and 4 of every stage are 0 with probability 1/3, each block
    code (2/3)/9; used by NAT_extended/search/algorithms/nat_new.py:97-139) followed by the "fill"
    repair (ea_ofa_search_spaces.py:146-163): depth 2 w.p. 1/3, 3 w.p. 2/3 * 1/3 = 2/9, 4 w.p. 4/9."""
    s = SearchSpace(resolutions=(32, 40), n_exits=5)
    X = s.sample(4000, np.random.default_rng(0), "natv2")  # 20000 stages
    shares = _depth_shares(s, X)
    for d, p in {2: 1 / 3, 3: 2 / 9, 4: 4 / 9}.items():
        assert abs(shares[d] - p) < 0.015, shares
    assert all(s.is_valid(g) for g in X[:200])
    # the active blocks' codes stay uniform over the 9 (kernel, expand) choices
    codes = X[:, s.slot_position(0, 0)]
    assert set(np.unique(codes)) == set(range(1, 10)) and abs(np.mean(codes == 9) - 1 / 9) < 0.02
    # the exit gene is uniform over 1..5
    exits = X[:, s.exit_position]
    assert set(np.unique(exits)) == {1, 2, 3, 4, 5} and abs(np.mean(exits == 5) - 0.2) < 0.03


def test_smallest_and_largest():
    s = SearchSpace(resolutions=(32, 40, 48), widths=(1.0, 1.2), n_exits=5)
    small, large = s.decode(s.smallest()), s.decode(s.largest())
    assert small.resolution == 32 and small.width == 1.0 and small.exit == 1
    assert small.stages == ((((3, 3),) * 2),) * 5
    assert large.resolution == 48 and large.width == 1.2 and large.exit == 5
    assert large.stages == ((((7, 6),) * 4),) * 5


def test_repair_push_and_fill():
    s = SearchSpace()
    g = np.array([0, 0, 5, 0, 0, 7, 9, 9, 9, 9, 1, 2, 0, 3, 0, 0, 0, 4, 2, 3, 4, 5])
    # stage 1 [5,0,0,7]; stage 3 [1,2,0,3]; stage 4 [0,0,0,4]
    push = s.repair(g, "push")
    assert push[2:6].tolist() == [5, 7, 0, 0]
    assert push[10:14].tolist() == [1, 2, 3, 0]
    assert push[14:18].tolist() == [4, 1, 0, 0]  # a lone block moves up, the mandatory slot gets code 1
    fill = s.repair(g, "fill")
    assert fill[2:6].tolist() == [5, 1, 0, 0]
    assert fill[10:14].tolist() == [1, 2, 0, 0]
    assert fill[14:18].tolist() == [1, 1, 0, 0]
    for r in (push, fill):
        assert s.is_valid(r)


@pytest.mark.parametrize("mode", ["push", "fill"])
def test_repair_is_idempotent_and_vectorised(mode):
    s = SearchSpace(resolutions=(32, 40), n_exits=5)
    rng = np.random.default_rng(3)
    # noisy floats outside the bounds, as crossover / mutation produce
    X = rng.uniform(-3, 12, size=(500, s.n_var))
    R = s.repair(X, mode)
    assert R.shape == X.shape and R.dtype == np.int64
    assert all(s.is_valid(g) for g in R)
    assert np.array_equal(s.repair(R, mode), R)
    # row by row gives the same as the whole matrix
    assert np.array_equal(np.stack([s.repair(x, mode) for x in X[:20]]), R[:20])
    # valid genomes are fixed points
    V = s.sample(100, rng, "natv2")
    assert np.array_equal(s.repair(V, mode), V)


@pytest.mark.parametrize(
    "genome, message",
    [
        ([0] * 21, "expected 22 genes"),
        ([0, 0] + [1] * 19 + [10], r"position 21 \(stage 5 block 4\): value 10 out of range; allowed 0..9"),
        ([3, 0] + [1] * 20, r"position 0 \(resolution gene\): value 3 out of range; allowed 0..2"),
        ([0, 0, 1, 1, 1, 1, 1, 0] + [1] * 14, r"position 7 \(stage 2 block 2\): 0 = skipped is not allowed in the first 2 slots of a stage; allowed 1..9"),
        ([0, 0, 1, 1, 0, 1] + [1] * 16, r"position 5 \(stage 1 block 4\): active block after a skipped slot"),
        ([0, 0] + [1.5] * 20, "integer genes"),
    ],
)
def test_validate_names_position_and_allowed_values(genome, message):
    s = SearchSpace(resolutions=(32, 40, 48))
    with pytest.raises(Natv2Error, match=message):
        s.validate(genome)
    assert not s.is_valid(genome)


def test_bad_strings_and_archs():
    s = SearchSpace(resolutions=(32, 40))
    g = s.largest()
    text = s.to_string(g)
    assert text.startswith("r40-w1.0-k7e6.k7e6.k7e6.k7e6-")
    with pytest.raises(Natv2Error, match=r"resolution 36: expected one of \[32, 40\]"):
        s.from_string(text.replace("r40", "r36"))
    with pytest.raises(Natv2Error, match="kernel 9: expected one of"):
        s.from_string(text.replace("k7e6", "k9e6", 1))
    with pytest.raises(Natv2Error, match="expected 7 '-'-separated parts"):
        s.from_string("r32-w1.0")
    with pytest.raises(Natv2Error, match="not of the form"):
        s.from_string(text.replace("k7e6", "bogus", 1))
    arch = s.decode(g)
    with pytest.raises(Natv2Error, match=r"stage 1: depth 1 not allowed; expected one of \[2, 3, 4\]"):
        s.encode(Arch(arch.resolution, arch.width, (((3, 3),),) + arch.stages[1:]))
    with pytest.raises(Natv2Error, match="sampling policy 'bogus'"):
        s.sample(1, np.random.default_rng(0), "bogus")
    with pytest.raises(Natv2Error, match="repair mode 'x'"):
        s.repair(g, "x")


def test_bad_space_definitions():
    with pytest.raises(Natv2Error, match="depths"):
        SearchSpace(depths=(2, 4))
    with pytest.raises(Natv2Error, match="resolutions: must not be empty"):
        SearchSpace(resolutions=())
    s = SearchSpace.from_config({"resolutions": [32, 64], "widths": [1.2], "n_exits": 0})
    assert s.resolutions == (32, 64) and s.widths == (1.2,)
    assert s == SearchSpace(resolutions=(32, 64), widths=(1.2,))


def test_parallel_slot_codes_are_the_originals():
    """OFAv2's parallel search space, ``NAT_extended/search/search_spaces/ea_ofa_search_spaces.py:264-286``
    and ``:483-519``: no extra genes (22 = r, w, 20 slots); a slot code enumerates nw keys
    (``get_valid_nw_keys([1, 2, 3])`` = 1, 2, 4, 3, 5, 6, 7; ``OFA_mbv3_extended/networks/nets/
    my_networks.py:403-454``), then expand ratios, then kernel sizes, from 1 (0 = skip)."""
    space = SearchSpace.from_config({"variant": "SE_P"})
    assert space.n_var == 22 and space.xu.tolist() == [0, 0] + [63] * 20
    assert SearchSpace.from_config({"variant": "EE_DP"}).n_var == 23  # + the exit gene, as EE_B
    nw_bits = {1: (0, 0, 1), 2: (0, 1, 0), 3: (0, 1, 1), 4: (1, 0, 0), 5: (1, 0, 1), 6: (1, 1, 0), 7: (1, 1, 1)}
    original, increment = {}, 1  # assign_mappings, transcribed
    for nw in [k for n in (1, 2, 3) for k, v in nw_bits.items() if sum(v) == n]:
        for e in (3, 4, 6):
            for ks in (3, 5, 7):
                original[(ks, e, nw)] = increment
                increment += 1
    assert len(original) == 63
    for (ks, e, nw), code in original.items():
        assert space.code(ks, e, nw) == code
        assert (space.block(code), space.branches(code)) == ((ks, e), nw)
    # the largest subnet runs every branch (OFAv2 max nw = 7), the string names each block's key
    g = space.largest()
    assert space.decode(g).branches == ((7,) * 4,) * 5
    assert space.to_string(g).split("-")[2] == "k7e6b7.k7e6b7.k7e6b7.k7e6b7"
    assert np.array_equal(space.from_string(space.to_string(g)), g)
    # levels restrict the subset sizes (OFAv2 net_width_list), e.g. two or three branches
    two_three = SearchSpace(levels=(2, 3))
    assert two_three.branch_keys == (3, 5, 6, 7) and two_three.xu[2] == 36
    with pytest.raises(Natv2Error, match="branches 4: expected one of"):
        two_three.code(3, 3, 4)
    with pytest.raises(Natv2Error, match="plain blocks"):
        SearchSpace().code(3, 3, 7)
    with pytest.raises(Natv2Error, match="not of the form"):
        space.from_string(SearchSpace().to_string(SearchSpace().largest()))
