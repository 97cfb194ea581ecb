"""natv2.pareto_table: pareto.csv's columns and rows from the front and the members' metrics."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from natv2.errors import Natv2Error
from natv2.pareto_table import COLUMNS, assemble


def metrics(mid: str, params: int, **extra) -> dict:
    return {"id": mid, "resolution": 32, "params": params, "macs": 2 * params, "latency_ms": 1.5, "val_top1": 80.0,
            "test_top1": 78.0, "test_top1_finetuned": 81.0, **extra}


def test_one_row_per_fine_tuned_member_sorted_by_params():
    front = pd.DataFrame({"id": [0, 1, 2], "genome": ["g0", "g1", "g2"], "top1_err": [10.0, 20.0, 30.0],
                          "params": [300, 100, 50], "macs": [600, 200, 100], "finetune": [True, True, False],
                          "latency_lut": [3.0, 1.0, 0.5]})
    table = assemble(front, {"0": metrics("0", 300, genome="g0-aep", select_top1_finetuned=79.0),
                             "1": metrics("1", 100)},
                     {"0": "nets/0", "1": "nets/1"})
    assert list(table.columns) == COLUMNS + ["latency_lut"]
    assert table["id"].tolist() == ["1", "0"]  # member 2 not fine-tuned; sorted by params
    first, second = table.iloc[0], table.iloc[1]
    assert (first["path"], first["latency_lut"], first["macs"]) == ("nets/1", 1.0, 200)
    # no search_* in metrics.json: the front's own numbers, val top-1 from its top1_err
    assert (first["genome"], first["search_genome"], first["search_params"]) == ("g1", "g1", 100)
    assert first["search_val_top1"] == pytest.approx(80.0) and math.isnan(first["search_test_top1"])
    assert math.isnan(first["select_top1_finetuned"])
    # the exported net's genome (AEP) in the row, the searched one in search_genome
    assert (second["genome"], second["search_genome"], second["select_top1_finetuned"]) == ("g0-aep", "g0", 79.0)


def test_no_extras_without_them_in_the_front():
    front = pd.DataFrame({"id": ["a"], "genome": ["g"]})
    assert list(assemble(front, {"a": metrics("a", 10)}, {"a": "nets/a"}).columns) == COLUMNS


def test_missing_member_missing_key_and_empty_front_are_errors():
    front = pd.DataFrame({"id": [0, 1], "genome": ["a", "b"]})
    with pytest.raises(Natv2Error, match="front member 1"):
        assemble(front, {"0": metrics("0", 10)}, {"0": "nets/0"})
    broken = {k: v for k, v in metrics("0", 10).items() if k != "test_top1"}
    with pytest.raises(Natv2Error, match="nets/0/metrics.json: key 'test_top1' missing"):
        assemble(front.iloc[:1], {"0": broken}, {"0": "nets/0"})
    with pytest.raises(Natv2Error, match="empty"):
        assemble(front.iloc[:0], {}, {})
