"""The `natv2` command line: every workflow step is a subcommand; errors are one line, exit 2."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from natv2.cli import build_parser, main

STEPS = {"split", "supernet", "warmup", "init", "init-select", "evaluate", "search", "update", "adapt",
         "collect", "front", "hypervolume", "finetune", "pareto", "ensembles", "report", "predict", "dvc"}


def test_every_workflow_step_is_a_subcommand():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert STEPS <= set(sub.choices)


def test_no_step_imports_another_step():
    """Steps are the CLI: what two steps share lives in a library module (issue 14)."""
    import ast
    from pathlib import Path

    import natv2.steps

    offenders = []
    for path in sorted(Path(natv2.steps.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] if node.level == 0 else ["natv2.steps." + node.module]
                if node.level == 1 and node.module is None or node.module in ("natv2", "natv2.steps"):
                    names += [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [f"natv2.steps.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.startswith("natv2.steps.")]
    assert offenders == []


def test_threads_option_limits_torch(tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        shard = tmp_path / "a.csv"
        pd.DataFrame({"genome": ["x", "y"], "top1_err": [1.0, 2.0], "row": [1, 0]}).to_csv(shard, index=False)
        assert main(["--threads", "1", "collect", "--inputs", str(shard), "--out", str(tmp_path / "out.csv")]) == 0
        assert torch.get_num_threads() == 1
        assert list(pd.read_csv(tmp_path / "out.csv")["genome"]) == ["y", "x"]  # back in row order
    finally:
        torch.set_num_threads(before)


def test_table_steps_do_not_load_torch_and_a_later_torch_gets_the_threads(tmp_path):
    """A fresh process, as a workflow job: collect never loads torch (2.5-3.7 s of a light job),
    and torch loaded after ``--threads 1`` runs 1 intra-op thread (it reads OMP_NUM_THREADS; torch
    caps that variable at the machine's cores, so 1 is the value that differs from the default)."""
    import os
    import subprocess
    import sys

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: torch's default is 1 thread already")
    shard = tmp_path / "a.csv"
    pd.DataFrame({"genome": ["x"], "top1_err": [1.0], "row": [0]}).to_csv(shard, index=False)
    code = ("import sys; from natv2.cli import main; "
            "rc = main(['--threads', '1', 'collect', '--inputs', sys.argv[1], '--out', sys.argv[2]]); "
            "print(rc, 'torch' in sys.modules); import torch; print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code, str(shard), str(tmp_path / "out.csv")], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "False", "1"]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    rc = main(["collect", "--inputs", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "out.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("natv2: error: ") and "missing.csv" in err and "\n" not in err
    assert not (tmp_path / "out.csv").exists()


def test_pareto_needs_every_member(tmp_path, capsys):
    front = tmp_path / "front.csv"
    pd.DataFrame({"id": [0, 1], "genome": ["a", "b"], "top1_err": [10.0, 20.0]}).to_csv(front, index=False)
    net = tmp_path / "nets" / "0"
    net.mkdir(parents=True)
    metrics = {"id": "0", "resolution": 32, "params": 10, "macs": 20, "latency_ms": 1.0, "val_top1": 88.5,
               "test_top1": 80.0, "test_top1_finetuned": 85.0}
    (net / "metrics.json").write_text(json.dumps(metrics))
    assert main(["pareto", "--front", str(front), "--nets", str(net), "--out", str(tmp_path / "p.csv")]) == 2
    assert "front member 1" in capsys.readouterr().err
    pd.DataFrame({"id": [0], "genome": ["a"], "top1_err": [10.0]}).to_csv(front, index=False)
    # no val_top1 in metrics.json: an error, never the search's 100 - top1_err in its place
    (net / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "val_top1"}))
    assert main(["pareto", "--front", str(front), "--nets", str(net / "metrics.json"), "--out", str(tmp_path / "p.csv")]) == 2
    assert "nets/0/metrics.json: key 'val_top1' missing" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
    (net / "metrics.json").write_text(json.dumps(metrics))
    assert main(["pareto", "--front", str(front), "--nets", str(net / "metrics.json"), "--out", str(tmp_path / "p.csv")]) == 0
    table = pd.read_csv(tmp_path / "p.csv")
    assert table.loc[0, "val_top1"] == pytest.approx(88.5) and table.loc[0, "test_top1_finetuned"] == 85.0
