"""tests/cluster/check_slurm_run.py, the checks of the SLURM cluster test, on a made-up run."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

SPEC = importlib.util.spec_from_file_location("check_slurm_run", Path(__file__).parent / "cluster" / "check_slurm_run.py")
check_slurm_run = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(check_slurm_run)

LOG = """
rule split:
    output: results/digits/data/split.json
    jobid: 4
    wildcards: ds=digits
Job 4 has been submitted with SLURM jobid 2 (log: /x/.snakemake/slurm_logs/rule_split/digits/2.log).
Finished jobid: 4 (Rule: split)
rule pareto:
    jobid: 1
Job 1 has been submitted with SLURM jobid 7 (log: /x/7.log).
Finished jobid: 1 (Rule: pareto)
"""


def _run(tmp_path: Path, log: str, jobcomp_states: dict[str, str], local_top1: float = 0.5) -> list[str]:
    slurm_run, local_run = tmp_path / "slurm", tmp_path / "local"
    for folder, top1 in ((slurm_run, 0.5), (local_run, local_top1)):
        (folder / "results").mkdir(parents=True)
        pd.DataFrame({"id": [0], "val_top1": [top1], "latency_ms": [hash(str(folder)) % 7], "path": [str(folder)]}).to_csv(
            folder / "results" / "pareto.csv", index=False)
    (tmp_path / "smk.log").write_text(log)
    (tmp_path / "jobcomp.txt").write_text("".join(
        f"JobId={i} UserId=root(0) Name=u JobState={state} Partition=gpu WorkDir={slurm_run} ExitCode=0:0\n"
        for i, state in jobcomp_states.items()))
    return check_slurm_run.check(slurm_run, local_run, tmp_path / "jobcomp.txt", tmp_path / "smk.log", "results/pareto.csv")


def test_a_run_whose_jobs_all_completed_on_slurm_passes(tmp_path):
    assert _run(tmp_path, LOG, {"2": "COMPLETED", "7": "COMPLETED"}) == []


def test_a_job_run_outside_slurm_or_not_completed_fails(tmp_path):
    local_job = LOG.replace("Job 1 has been submitted with SLURM jobid 7 (log: /x/7.log).\n", "")
    assert _run(tmp_path, local_job, {"2": "COMPLETED"}) == ["job 1 (rule pareto) finished without a SLURM job id"]
    problems = _run(tmp_path / "b", LOG, {"2": "FAILED", "7": "COMPLETED"})
    assert len(problems) == 1 and problems[0].startswith("job 4 (rule split): SLURM job 2 has JobState=FAILED")


def test_a_different_pareto_fails(tmp_path):
    problems = _run(tmp_path, LOG, {"2": "COMPLETED", "7": "COMPLETED"}, local_top1=0.25)
    assert len(problems) == 1 and problems[0].startswith("results/pareto.csv differs from the local run's")
