"""The Snakemake workflow end to end, in a temporary copy of the repository's workflow files.

A tiny config (tests/configs/tiny.yaml) keeps every phase but shrinks epochs, archive and
iterations so a whole run takes well under a minute on 2 cores.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def make_workdir(tmp: Path) -> Path:
    """Copy what the workflow needs (not results/, logs/ or .snakemake/)."""
    for name in ("Snakefile", "workflow", "config", "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, tmp / name)
        else:
            shutil.copy(src, tmp / name)
    shutil.copy(TINY, tmp / "tiny.yaml")
    return tmp


def smk(workdir: Path, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [*SNAKEMAKE, "--cores", "2", "--configfile", "tiny.yaml", *args],
        cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def dry_run_jobs(workdir: Path, *args: str, configfile: str = "tiny.yaml") -> dict[str, int]:
    """Rule name -> job count of a dry run."""
    proc = subprocess.run(
        [*SNAKEMAKE, "-n", "--forceall", "--quiet", "rules", "--configfile", configfile, *args],
        cwd=workdir, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts: dict[str, int] = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("job", "total"):
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return make_workdir(tmp_path)


def test_config_error_stops_before_any_job(workdir: Path):
    (workdir / "bad.yaml").write_text("data: {val_size: many}\n")
    proc = smk(workdir, "--configfile", "bad.yaml", "-n", check=False)
    assert proc.returncode != 0
    assert "data.val_size" in proc.stdout + proc.stderr
    assert not (workdir / "results").exists()
