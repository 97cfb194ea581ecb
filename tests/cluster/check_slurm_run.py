"""Checks of tests/cluster/run_slurm.sh: every job ran as a SLURM job, and the SLURM run's pareto.csv equals the local one's.

Every job Snakemake finished must have been submitted with a SLURM job id (the executor's
`Job <n> has been submitted with SLURM jobid <id>` line) and that SLURM job must be recorded
COMPLETED by slurmctld's job completion log (jobcomp/filetxt), in the SLURM run's folder.
pareto.csv is compared like tests/test_workflow.py does: all columns but the measured latency and
the run's own paths, exactly.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

# pareto.csv columns that differ between two correct runs: measured (latency), or the run's folder
VOLATILE_COLUMNS = ["latency_ms", "path"]


def snakemake_jobs(log: str) -> tuple[dict[int, str], dict[int, str], set[int]]:
    """(snakemake job id -> rule, snakemake job id -> SLURM job id, finished snakemake job ids) from a run's log."""
    rules: dict[int, str] = {}
    current_rule = None
    for line in log.splitlines():
        if m := re.match(r"^\s*(?:local)?(?:rule|checkpoint) (\w+):\s*$", line):
            current_rule = m.group(1)
        elif (m := re.match(r"^\s+jobid: (\d+)\s*$", line)) and current_rule:
            rules[int(m.group(1))] = current_rule
            current_rule = None
    submitted = {int(a): b for a, b in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\S+?)[ .]", log)}
    finished = {int(n) for n in re.findall(r"Finished jobid: (\d+)", log)}
    return rules, submitted, finished


def completed_slurm_jobs(jobcomp: str) -> dict[str, dict[str, str]]:
    """SLURM job id -> fields of its line in the job completion log."""
    jobs = {}
    for line in jobcomp.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


def check(slurm_run: Path, local_run: Path, jobcomp: Path, snakemake_log: Path, target: str) -> list[str]:
    problems = []
    rules, submitted, finished = snakemake_jobs(snakemake_log.read_text())
    completed = completed_slurm_jobs(jobcomp.read_text() if jobcomp.exists() else "")
    if not finished:
        problems.append(f"{snakemake_log}: no finished job found")
    for jobid in sorted(finished):
        rule = rules.get(jobid, "?")
        slurm_id = submitted.get(jobid)
        if slurm_id is None:
            problems.append(f"job {jobid} (rule {rule}) finished without a SLURM job id")
            continue
        record = completed.get(slurm_id)
        if record is None:
            problems.append(f"job {jobid} (rule {rule}): SLURM job {slurm_id} is not in {jobcomp}")
        elif record.get("JobState") != "COMPLETED" or Path(record.get("WorkDir", "")).resolve() != slurm_run.resolve():
            problems.append(f"job {jobid} (rule {rule}): SLURM job {slurm_id} has JobState={record.get('JobState')} "
                            f"WorkDir={record.get('WorkDir')}")
    per_rule = Counter(rules.get(j, "?") for j in finished)
    print(f"slurm: {len(finished)} jobs, {len(set(submitted.values()))} SLURM job ids, "
          f"{sum(r.get('JobState') == 'COMPLETED' for r in completed.values())} COMPLETED in the job completion log; "
          + ", ".join(f"{rule} {n}" for rule, n in sorted(per_rule.items())))

    ours, reference = pd.read_csv(slurm_run / target), pd.read_csv(local_run / target)
    try:
        pd.testing.assert_frame_equal(ours.drop(columns=VOLATILE_COLUMNS), reference.drop(columns=VOLATILE_COLUMNS))
    except AssertionError as err:
        problems.append(f"{target} differs from the local run's:\n{err}")
    else:
        print(f"slurm: {target} ({len(ours)} rows) equals the local run's, apart from {', '.join(VOLATILE_COLUMNS)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slurm-run", type=Path, required=True)
    parser.add_argument("--local-run", type=Path, required=True)
    parser.add_argument("--jobcomp", type=Path, required=True)
    parser.add_argument("--snakemake-log", type=Path, required=True)
    parser.add_argument("--target", required=True)
    args = parser.parse_args(argv)
    problems = check(args.slurm_run, args.local_run, args.jobcomp, args.snakemake_log, args.target)
    for problem in problems:
        print(f"slurm: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
