"""The Snakemake workflow end to end, in temporary copies of the repository's workflow files.

tests/configs/tiny.yaml keeps every phase of the default config but shrinks epochs, archive and
iterations, so a whole run takes about a minute on 2 cores. One DVC-driven run (module fixture)
serves several tests; the kill-and-resume test compares its own run against it.
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
BIN = Path(sys.executable).parent
ENV = dict(os.environ, PYTHONUNBUFFERED="1", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
PARETO_COLUMNS = ["id", "genome", "resolution", "params", "macs", "latency_ms", "val_top1", "test_top1",
                  "test_top1_finetuned", "path"]
ENSEMBLE_COLUMNS = ["id", "members", "mode", "params", "macs", "latency_ms", "val_top1", "test_top1"]
TARGETS = ["results/digits/pareto.csv", "results/digits/ensembles.csv", "results/digits/report/metrics.json"]


def make_workdir(tmp: Path) -> Path:
    """Copy what the workflow needs (no results/, logs/ or .snakemake/) into ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "profiles", "natv2"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, tmp / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp / name)
    shutil.copy(TINY, tmp / "tiny.yaml")
    return tmp


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)


def smk(workdir: Path, *args: str, configfiles=("tiny.yaml",), check: bool = True) -> subprocess.CompletedProcess:
    proc = run([str(BIN / "snakemake"), "--cores", "2", *args, "--configfile", *configfiles], workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def natv2_jobs_ran(workdir: Path, since: float) -> list[str]:
    """Benchmark files (one per finished job) written after ``since``."""
    return sorted(str(p.relative_to(workdir)) for p in (workdir / "benchmarks").rglob("*.tsv") if p.stat().st_mtime > since)


def job_counts(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule name -> job count from a dry run's `--quiet rules` table."""
    counts: dict[str, int] = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("job", "total"):
            counts[parts[0]] = int(parts[1])
    return counts


def rule_counts(workdir: Path, *args: str, configfiles=("tiny.yaml",)) -> dict[str, int]:
    """Rule name -> job count of a forced dry run."""
    return job_counts(smk(workdir, "-n", "--forceall", "--quiet", "rules", *args, configfiles=configfiles))


def comparable(pareto: pd.DataFrame) -> pd.DataFrame:
    """pareto.csv without what is measured rather than computed (latency) and the run's paths."""
    return pareto.drop(columns=["latency_ms", "path"])


@pytest.fixture(scope="module")
def dvc_run(tmp_path_factory) -> Path:
    """A DVC repository (no git) whose generated pipeline has been reproduced once."""
    work = make_workdir(tmp_path_factory.mktemp("dvc"))
    proc = run([str(BIN / "dvc"), "init", "--no-scm", "-q"], work)
    assert proc.returncode == 0, proc.stderr
    proc = run([str(BIN / "natv2"), "dvc", "--config", "tiny.yaml"], work)
    assert proc.returncode == 0, proc.stderr
    start = time.time()
    proc = run([str(BIN / "dvc"), "repro"], work, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (work / "first_repro_seconds").write_text(f"{time.time() - start:.1f}")
    return work


def test_config_error_stops_before_any_job(tmp_path: Path):
    work = make_workdir(tmp_path)
    (work / "bad.yaml").write_text("data: {val_size: many}\n")
    proc = smk(work, "-n", configfiles=("tiny.yaml", "bad.yaml"), check=False)
    assert proc.returncode != 0
    assert "config key data.val_size" in proc.stdout + proc.stderr
    assert not (work / "results").exists()


def test_dry_run_of_the_paper_config_has_every_phase(tmp_path: Path):
    from natv2.config import load_settings
    from natv2.shrinking import phases_for
    from natv2.space import SearchSpace

    work = make_workdir(tmp_path)
    paper = load_settings([REPO / "config" / "config.yaml", REPO / "config" / "paper.yaml"])
    datasets = paper.raw["workflow"]["datasets"]
    n_iter = paper.search.iterations
    n_phases = len(phases_for(SearchSpace.from_config(paper.supernet)))
    counts = rule_counts(work, configfiles=("config/paper.yaml",))
    n_ds = len(datasets)
    assert counts["split"] >= n_ds
    assert counts["warmup"] == n_ds
    assert counts["init_sample"] == counts["init_select"] == n_ds
    assert counts["part_costs"] == n_ds  # once per run, read by the pool and every iteration's search
    for rule in ("surrogate_search", "update", "adapt", "collect"):
        assert counts[rule] == n_ds * n_iter, rule
    assert counts["evaluate_candidates"] == counts["reevaluate"] == n_ds * n_iter * paper.raw["workflow"]["eval_shards"]
    # the source supernet is trained once per source dataset, shared by the targets
    assert counts["supernet_phase"] == n_phases * len({paper.supernet_train.dataset or d for d in datasets})
    assert counts["front"] == n_ds and counts["pareto"] == n_ds


def test_the_default_digits_run_has_no_job_for_its_0_epoch_phases(tmp_path: Path):
    """config/config.yaml's digits recipe gives depth1 and expand1 0 epochs: no job (and no checkpoint)
    of their own; depth2 and expand2 read the phase before them (natv2.shrinking.trained_phases)."""
    from natv2.config import DEFAULT_CONFIG, load_settings

    phases = load_settings(DEFAULT_CONFIG).for_dataset("digits").supernet_train.phases
    assert phases.depth1.epochs == phases.expand1.epochs == 0
    work = make_workdir(tmp_path)
    (work / "plain.yaml").write_text("seed: 0\n")
    target = "results/digits/supernet/source.pt"
    assert job_counts(smk(work, target, "-n", "--forceall", "--quiet", "rules", configfiles=("plain.yaml",)))["supernet_phase"] == 4
    proc = smk(work, target, "-n", "--forceall", configfiles=("plain.yaml",))
    made = {p for p in ("full", "kernel", "depth1", "depth2", "expand1", "expand2") if f"supernet/phases/{p}.pt" in proc.stdout}
    assert made == {"full", "kernel", "depth2", "expand2"}
    depth2 = "input: results/digits/data/split.json, results/digits/supernet/phases/kernel.pt\n    output: results/digits/supernet/phases/depth2.pt"
    assert depth2 in proc.stdout


def _write_shapes(root: Path, n_classes: int = 3, per_class: int = 20) -> Path:
    """A tiny ImageFolder source dataset: ``n_classes`` solid-colour classes, noise on top."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(n_classes):
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((16, 16, 3), 60 * (c + 1), dtype=np.int16) + rng.integers(-20, 20, (16, 16, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def test_cross_dataset_source_runs_only_the_variants_phases(tmp_path: Path):
    """config/paper.yaml's layout in small: the EE_D supernet trained on another dataset than the target."""
    from natv2.config import load_settings
    from natv2.nets.checkpoint import load_supernet
    from natv2.shrinking import phases_for
    from natv2.space import SearchSpace

    work = make_workdir(tmp_path / "work")
    source = _write_shapes(tmp_path / "shapes")
    (work / "cross.yaml").write_text(yaml.safe_dump({
        "datasets": {"shapes": {"kind": "imagefolder", "root": str(source), "image_size": 16}},
        "supernet": {"variant": "EE_D"},
        "supernet_train": {"dataset": "shapes"},
    }))
    files = ("tiny.yaml", "cross.yaml")
    smk(work, "results/digits/supernet/source.pt", configfiles=files)  # the target's job reads the source's phases
    settings = load_settings([work / "config" / "config.yaml", work / "tiny.yaml", work / "cross.yaml"])
    phases = phases_for(SearchSpace.from_config(settings.supernet))
    assert not any(p.startswith("level") for p in phases) and "exit4" in phases
    # the source's phases, exactly the declared ones; none under the target
    assert sorted(p.name for p in (work / "results/shapes/supernet/phases").glob("*.pt")) == sorted(f"{p}.pt" for p in phases)
    assert not (work / "results/digits/supernet/phases").exists()
    _, meta = load_supernet(work / "results/digits/supernet/source.pt")
    assert meta["classes"] == ["class0", "class1", "class2"] and [p["phase"] for p in meta["phases"]] == phases


def test_dvc_repro_runs_everything_then_nothing_then_restores(dvc_run: Path):
    work = dvc_run
    pareto = pd.read_csv(work / "results/digits/pareto.csv")
    assert list(pareto.columns[: len(PARETO_COLUMNS)]) == PARETO_COLUMNS and len(pareto) >= 1
    ensembles = pd.read_csv(work / "results/digits/ensembles.csv")
    assert list(ensembles.columns[: len(ENSEMBLE_COLUMNS)]) == ENSEMBLE_COLUMNS
    for png in ("front", "ensembles", "hypervolume", "surrogate_tau"):
        assert (work / f"results/digits/report/{png}.png").stat().st_size > 1000
    assert (work / "results/digits/report/metrics.json").is_file()

    # a second snakemake run and a second dvc repro have nothing to do
    proc = smk(work, *TARGETS, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    before = time.time()
    proc = run([str(BIN / "dvc"), "repro"], work)
    assert proc.returncode == 0, proc.stderr
    assert "Running stage" not in proc.stdout, proc.stdout
    assert natv2_jobs_ran(work, before) == []

    # every phase restored from DVC's cache, nothing trained or evaluated
    reference = pareto.copy()
    shutil.rmtree(work / "results")
    before = time.time()
    proc = run([str(BIN / "dvc"), "repro"], work, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert natv2_jobs_ran(work, before) == []
    pd.testing.assert_frame_equal(pd.read_csv(work / "results/digits/pareto.csv"), reference)
    for phase in ("supernet/warmup.pt", "search/iter0/archive.csv", "search/iter2/supernet.pt", "front.csv"):
        assert (work / "results/digits" / phase).is_file(), phase
    # restored files have new modification times: snakemake must still see nothing to do
    proc = smk(work, *TARGETS, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_finetune_jobs_carry_their_members_macs_as_priority(dvc_run: Path):
    """The costliest member's fine-tune starts first (natv2.front.finetune_priority): the
    scheduler picks ready jobs by priority, so no core idles while the last long job runs."""
    import re

    proc = smk(dvc_run, TARGETS[0], "-n", "--forcerun", "finetune")
    text = proc.stdout + proc.stderr
    printed = {m[0]: float(m[1]) for m in re.findall(r"id=(\d+)\n\s+priority: ([0-9.]+)", text)}
    front = pd.read_csv(dvc_run / "results/digits/front.csv")
    members = front[front["finetune"].astype(bool)]  # natv2.steps.front marks them
    assert len(members) >= 1 and set(printed) == {str(i) for i in members["id"]}, text[-2000:]
    for _, row in members.iterrows():
        assert printed[str(row["id"])] == pytest.approx(row["macs"] / 1e6, rel=1e-6)


def test_killed_run_resumes_without_recomputing(dvc_run: Path, tmp_path: Path):
    work = make_workdir(tmp_path)
    cmd = [str(BIN / "snakemake"), "--cores", "2", *TARGETS, "--configfile", "tiny.yaml"]
    proc = subprocess.Popen(cmd, cwd=work, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marker = work / "results/digits/search/iter1/candidates.csv"
    deadline = time.time() + 900
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert marker.exists(), "the run never reached iteration 1"
    time.sleep(2)  # into the middle of iteration 1's evaluation
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    finished = sorted(p for p in (work / "results/digits").rglob("*") if p.is_file() and "iter0" in str(p))
    stamps = {p: p.stat().st_mtime for p in finished}
    # no partial file under a declared output name: every table and checkpoint present reads whole
    from natv2.io import load_torch

    for path in (work / "results").rglob("*"):
        if path.name.startswith("."):
            continue
        if path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".pt":
            load_torch(path)

    # the README's recipe after a kill: release Snakemake's lock, then the same command again
    # (the profile sets --rerun-incomplete)
    smk(work, "--unlock")
    smk(work, *TARGETS)
    assert {p: p.stat().st_mtime for p in finished} == stamps, "a finished phase was recomputed"
    resumed = pd.read_csv(work / "results/digits/pareto.csv")
    reference = pd.read_csv(dvc_run / "results/digits/pareto.csv")
    pd.testing.assert_frame_equal(comparable(resumed), comparable(reference))


def test_more_iterations_rerun_only_the_new_ones(dvc_run: Path):
    more = dvc_run / "more.yaml"
    more.write_text(yaml.safe_dump({"search": {"iterations": 3}}))
    counts = {}
    proc = smk(dvc_run, *TARGETS, "-n", "--quiet", "rules", configfiles=("tiny.yaml", "more.yaml"))
    for line in (proc.stdout + proc.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("job", "total"):
            counts[parts[0]] = int(parts[1])
    assert counts.get("surrogate_search") == 1 and counts.get("adapt") == 1
    for rule in ("split", "supernet_phase", "warmup", "init_sample", "evaluate_pool", "part_costs"):
        assert rule not in counts, rule


def test_committed_dvc_pipeline_is_up_to_date():
    proc = run([str(BIN / "natv2"), "dvc", "--config", "config/paper.yaml", "--check"], REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
