"""``natv2 dvc``: write dvc.yaml (one stage per phase) from the Snakemake DAG of a config."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dvc", help="generate dvc.yaml from the Snakemake DAG (one stage per phase)")
    p.add_argument("--params", default="params.yaml", metavar="YAML",
                   help="the config DVC runs with (its keys are the stages' params)")
    p.add_argument("--out", default="dvc.yaml", metavar="YAML")
    p.add_argument("--check", action="store_true", help="exit 1 if --out differs from what would be generated")
    p.set_defaults(func=run)


def render(params: str) -> str:
    from natv2.config import load_settings
    from natv2.dvcgen import build_stages, to_dvc_yaml, workflow_jobs

    settings = load_settings([params])
    results = settings.results_dir
    datasets = list(settings.raw["workflow"]["datasets"])
    targets = []
    for ds in datasets:
        targets += [f"{results}/{ds}/report/metrics.json", f"{results}/{ds}/ensembles.csv"]
    jobs = workflow_jobs([params], targets)
    stages = build_stages(jobs, results, params)
    metrics = [f"{results}/{ds}/report/metrics.json" for ds in datasets]
    plots = []
    for ds in datasets:
        plots += [
            {f"{results}/{ds}/pareto.csv": {"x": "params", "y": ["val_top1", "test_top1", "test_top1_finetuned"]}},
            {f"{results}/{ds}/search/hv.csv": {"x": "iteration", "y": "hypervolume"}},
            f"{results}/{ds}/report/front.png",
        ]
    return to_dvc_yaml(stages, params, metrics, plots)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from natv2.io import write_text

    text = render(args.params)
    if args.check:
        current = Path(args.out).read_text() if Path(args.out).exists() else ""
        if current != text:
            print(f"{args.out} is stale: regenerate with `natv2 dvc --params {args.params} --out {args.out}`",
                  file=sys.stderr)
            return 1
        return 0
    write_text(args.out, text)
    return 0
