"""The final front, its knee points, and the hypervolume table (+ the front/hypervolume steps)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from natv2.cli import main
from natv2.errors import Natv2Error
from natv2.front import knee_points, pareto_front
from natv2.hypervolume import hypervolume, hypervolume_table

OBJ = ("top1_err", "params")


def table(F, start=0):
    frame = pd.DataFrame(np.asarray(F, dtype=float), columns=list(OBJ[: np.shape(F)[1]]))
    frame.insert(0, "genome", [f"g{start + i}" for i in range(len(frame))])
    return frame


def elbow_front():
    """A 2-objective front with one obvious knee at (0.2, 0.2): steep on one side, flat on the other."""
    a = np.linspace(0, 0.2, 6)
    b = np.linspace(0.2, 1.0, 9)[1:]
    return np.concatenate([np.column_stack([a, 1 - 4 * a]), np.column_stack([b, 0.2 - 0.25 * (b - 0.2)])])


def test_front_is_exactly_the_non_dominated_rows_sorted_with_ids():
    rng = np.random.default_rng(0)
    F = rng.random((50, 2))
    front = pareto_front(table(F), OBJ)
    expected = {i for i, f in enumerate(F) if not np.any(np.all(F <= f, axis=1) & np.any(F < f, axis=1))}
    assert set(front["genome"]) == {f"g{i}" for i in expected}
    assert front["top1_err"].is_monotonic_increasing
    assert front["params"].is_monotonic_decreasing  # along a 2-D front the other objective falls
    assert front["id"].tolist() == list(range(len(front)))
    assert front["knee"].dtype == bool


def test_knee_of_an_elbow_and_none_on_a_line():
    F = elbow_front()
    assert np.flatnonzero(knee_points(F)).tolist() == [5]
    x = np.linspace(0, 1, 20)
    assert not knee_points(np.column_stack([x, 1 - x])).any()  # pymoo alone flags float noise here
    assert not knee_points(F[:2]).any()
    # units do not matter: the measure works on the normalised front
    assert np.flatnonzero(knee_points(F * [100.0, 3e6])).tolist() == [5]
    front = pareto_front(table(F * [100.0, 3e6]), OBJ)
    assert front.loc[front["knee"], "top1_err"].tolist() == [pytest.approx(20.0)]


def test_hypervolume_known_values():
    assert hypervolume(np.array([[0.5, 0.5]]), [1.0, 1.0]) == pytest.approx(0.25)
    assert hypervolume(np.array([[0.0, 0.5], [0.5, 0.0]]), [1.0, 1.0]) == pytest.approx(0.75)
    assert hypervolume(np.array([[2.0, 2.0]]), [1.0, 1.0]) == 0.0  # beyond the reference
    assert hypervolume(np.zeros((0, 2)), [1.0, 1.0]) == 0.0


def test_hypervolume_table_one_reference_per_run_and_monotone_for_growing_archives():
    rng = np.random.default_rng(1)
    base = table(rng.random((20, 2)) + 0.5)
    archives = [base]
    for i in range(4):  # NAT: every archive contains the previous one
        archives.append(pd.concat([archives[-1], table(rng.random((5, 2)) + 0.3 - 0.05 * i, start=100 * (i + 1))]))
    hv = hypervolume_table(archives, OBJ)
    assert hv["iteration"].tolist() == [0, 1, 2, 3, 4]
    assert np.all(np.diff(hv["hypervolume"]) >= 0)
    assert hv["hypervolume"].iloc[-1] > hv["hypervolume"].iloc[0]
    for col in ("ideal_top1_err", "reference_params"):
        assert hv[col].nunique() == 1  # one reference point for the whole run
    union = pd.concat(archives)
    assert hv["reference_top1_err"].iloc[0] == pytest.approx(
        union.top1_err.min() + 1.1 * (union.top1_err.max() - union.top1_err.min()))
    # an explicit reference: objectives divided by it, reference point 1
    ref = hypervolume_table([table([[0.5, 0.5]])], OBJ, reference=[1.0, 2.0])
    assert ref["hypervolume"].item() == pytest.approx(0.5 * 0.75)
    with pytest.raises(Natv2Error, match="expected 2 positive values"):
        hypervolume_table(archives, OBJ, reference=[1.0])
    with pytest.raises(Natv2Error, match="no archives"):
        hypervolume_table([], OBJ)


def test_front_and_hypervolume_steps(tmp_path):
    rng = np.random.default_rng(2)
    paths = []
    frame = table(elbow_front() * [100.0, 1e6])
    frame["macs"] = 1.0
    frame["latency_ms"] = 1.0
    for i in range(3):
        extra = table(rng.random((10, 2)) * [100.0, 1e6] + [30.0, 3e5], start=100 + 50 * i)
        extra["macs"] = extra["latency_ms"] = 1.0
        path = tmp_path / f"archive{i}.csv"
        pd.concat([extra, frame.iloc[: 5 * (i + 1)]]).to_csv(path, index=False)
        paths.append(str(path))
    updates = []
    for i in (1, 2):
        path = tmp_path / f"update{i}.json"
        path.write_text(json.dumps({"iteration": i, "surrogate": {"cv_tau": 0.5 + i / 10, "n_train": 20 + i},
                                    "candidates": {"tau": 0.1 * i, "n": 4}}))
        updates.append(str(path))
    assert main(["front", "--archive", paths[-1], "--out", str(tmp_path / "front.csv")]) == 0
    front = pd.read_csv(tmp_path / "front.csv")
    assert front["id"].tolist() == list(range(len(front))) and front["knee"].dtype == bool
    assert main(["hypervolume", "--archives", *paths, "--updates", *updates, "--out", str(tmp_path / "hv.csv")]) == 0
    hv = pd.read_csv(tmp_path / "hv.csv")
    assert hv["iteration"].tolist() == [0, 1, 2]
    assert np.isnan(hv["cv_tau"][0]) and hv["cv_tau"][1:].tolist() == pytest.approx([0.6, 0.7])
    assert hv["tau_candidates"][1:].tolist() == pytest.approx([0.1, 0.2])
    # each tau with the rows it ranks (the report's chance band), written as integers
    assert (tmp_path / "hv.csv").read_text().splitlines()[2].endswith(",0.6,21,0.1,4")
    assert hv["cv_n"].isna()[0] and hv["cv_n"][1:].tolist() == [21, 22] and hv["n_candidates"][1:].tolist() == [4, 4]
    assert main(["front", "--archive", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "f.csv")]) == 2


def test_spread_members_keeps_the_extremes_and_the_knee_and_spreads_the_rest():
    import numpy as np
    import pandas as pd

    from natv2.front import spread_members

    front = pd.DataFrame({"top1_err": np.arange(10.0)[::-1], "params": np.arange(10.0), "knee": False})
    front.loc[5, "knee"] = True
    chosen = np.flatnonzero(spread_members(front, ["top1_err", "params"], 4))
    assert len(chosen) == 4
    assert {9, 0, 5} <= set(chosen)  # most accurate (row 9), cheapest (row 0), the knee
    assert spread_members(front, ["top1_err", "params"], 0).all()
    assert spread_members(front, ["top1_err", "params"], 20).all()
    even = np.flatnonzero(spread_members(front.assign(knee=False), ["top1_err", "params"], 4))
    assert list(even) == [0, 3, 6, 9]


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no All-NaN warning from nanmin
def test_a_front_of_tied_points_has_no_knee():
    # e.g. an untrained supernet (every subnet at chance) ranked by a latency table that rounds to 0
    assert knee_points(np.zeros((5, 2))).tolist() == [False] * 5
    tied = pd.DataFrame({"genome": [f"g{i}" for i in range(4)], "top1_err": [90.0] * 4, "latency_lut": [0.0] * 4})
    assert pareto_front(tied, ["top1_err", "latency_lut"])["knee"].tolist() == [False] * 4


def test_finetune_priority_is_the_members_macs_so_the_costliest_starts_first(tmp_path):
    from natv2.front import finetune_priority

    front = tmp_path / "front.csv"
    pd.DataFrame({"id": [0, 1, 2], "genome": ["a", "b", "c"], "macs": [9.1e6, 3.9e6, float("nan")]}).to_csv(front, index=False)
    assert finetune_priority(str(front), "0") == pytest.approx(9.1)
    assert finetune_priority(str(front), 1) == pytest.approx(3.9)
    assert finetune_priority(str(front), "2") == 0.0  # NaN MACs
    assert finetune_priority(str(front), "7") == 0.0  # not a member
    assert finetune_priority(str(tmp_path / "missing.csv"), "0") == 0.0  # before the checkpoint ran
    pd.DataFrame({"id": [0]}).to_csv(tmp_path / "nomacs.csv", index=False)
    assert finetune_priority(str(tmp_path / "nomacs.csv"), "0") == 0.0
