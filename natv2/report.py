"""Plots and headline metrics of a finished run (PNG files via matplotlib's Agg backend).

    natv2 report --pareto results/cifar10/pareto.csv --ensembles results/cifar10/ensembles.csv \
        --hv results/cifar10/search/hv.csv --tau results/cifar10/search/surrogate.csv \
        --out results/cifar10/report

Writes ``front.png`` (val and test top-1, before and after fine-tune, against params, MACs
and latency, one panel each), ``ensembles.png`` (ensembles against the single nets, a panel per mode),
``hypervolume.png`` (hv.csv: iteration, hypervolume), ``surrogate_tau.png`` (iteration,
cv_tau, tau_candidates; from --tau, else from hv.csv when it has them) and ``metrics.json``.
An optional input that is absent gives a placeholder PNG saying so (the workflow declares them all).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from natv2.errors import Natv2Error
from natv2.io import atomic_path, read_csv, write_json

log = logging.getLogger(__name__)

COSTS = {"params": "parameters", "macs": "MACs", "latency_ms": "latency (ms)"}
ACCURACIES = {"val_top1": "val", "test_top1": "test, before fine-tune", "test_top1_finetuned": "test, fine-tuned"}


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise Natv2Error(f"{what}: column(s) {', '.join(missing)} missing (has {', '.join(map(str, frame.columns))})")


def _figure(n_panels: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_panels, figsize=(5.2 * n_panels, 4.2), dpi=110, squeeze=False)
    for ax in axes[0]:
        ax.grid(True, alpha=0.3)
    return plt, fig, list(axes[0])


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def placeholder(path: Path, message: str) -> Path:
    """A figure that only says why there is nothing to plot (the workflow declares every PNG)."""
    plt, fig, (ax,) = _figure()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    log.warning("report: %s: %s", path.name, message)
    return _save(plt, fig, path)


#: how each cost is shown: (axis label, divisor) so the ticks read 0.5, 1.2 rather than 1.2x10^6
UNITS = {"params": ("parameters (M)", 1e6), "macs": ("MACs (M)", 1e6), "latency_ms": ("latency (ms)", 1.0)}


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def label_offsets(x, y, *, near: float = 0.04) -> list[tuple[int, int]]:
    """Text offsets (points) for labels of the points ``x, y`` sorted along x: above right, and
    below right for a point within ``near`` of both axes' spans from the previous one (digits:
    nets of 2.40 and 2.47 M params at one accuracy read as one label "21")."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = ~np.isnan(y)
    span_x = float(np.ptp(x[ok])) if ok.any() else 0.0
    span_y = float(np.ptp(y[ok])) if ok.any() else 0.0
    out: list[tuple[int, int]] = []
    prev: tuple[float, float, tuple[int, int]] | None = None
    for xi, yi in zip(x, y):
        offset = (4, 4)
        if prev is not None and not np.isnan(yi):
            close = abs(xi - prev[0]) <= near * (span_x or 1.0) and abs(yi - prev[1]) <= near * (span_y or 1.0)
            if close and prev[2] == (4, 4):
                offset = (4, -11)
        out.append(offset)
        if not np.isnan(yi):
            prev = (xi, yi, offset)
    return out


def measured_latencies(pareto: pd.DataFrame, archive: pd.DataFrame | None) -> dict[str, float]:
    """Genome -> ``latency_ms`` as this run measured it (archive rows, then the front's own)."""
    out: dict[str, float] = {}
    for table in (archive, pareto):
        if table is not None and {"genome", "latency_ms"} <= set(table.columns):
            for genome, ms in zip(table["genome"], table["latency_ms"]):
                if pd.notna(ms):
                    out[str(genome)] = float(ms)
    return out


def baseline_cost(entry: dict, cost: str, run_latency: dict[str, float]) -> float | None:
    """Where a baseline net sits on a cost axis, or None when it cannot be placed there.

    Params and MACs are properties of the net. A measured latency is a property of the machine
    and the moment as well: the baseline's own ``latency_ms`` comes from another run (the CIFAR-10
    largest net measured 4.1 ms there, 8.6 ms in a later run on a slower machine), so the star takes
    this run's measurement of the same genome, and is left out when the run never measured it.
    """
    if cost == "latency_ms":
        value = run_latency.get(str(entry.get("genome")))
    else:
        value = entry.get(cost)
    return None if value is None else float(value)


def plot_front(pareto: pd.DataFrame, path: Path, *, archive: pd.DataFrame | None = None,
               baseline: Sequence[dict] = ()) -> Path:
    """Top-1 of the front against every measured cost, one panel each.

    Each panel sorts the front along its own x axis and draws the search's val top-1 as a step
    line (the attainment front: the best accuracy at most that cost), the test top-1 before and
    after fine-tuning as markers, the members' ids beside the fine-tuned points, every evaluated
    archive genome (``archive``: ``top1_err`` and the costs) as grey dots behind, and each
    ``baseline`` entry (``{"name", "genome", "params", "test_top1", ...}``, bench/baseline.py) as a
    star (on the measured-latency panel only where this run measured its genome: baseline_cost).
    """
    _require(pareto, ["val_top1"], "pareto.csv")
    costs = [c for c in COSTS if c in pareto.columns and pareto[c].notna().any()]
    if not costs:
        raise Natv2Error(f"pareto.csv: no cost column measured (expected one of {', '.join(COSTS)})")
    run_latency = measured_latencies(pareto, archive)
    plt, fig, axes = _figure(len(costs))
    for ax, cost in zip(axes, costs):
        label, scale = UNITS[cost]
        if archive is not None and {cost, "top1_err"} <= set(archive.columns):
            ax.scatter(archive[cost] / scale, 100.0 - archive["top1_err"], s=10, color="0.75", zorder=1,
                       label=f"evaluated subnets ({len(archive)})")
        frame = pareto.dropna(subset=[cost]).sort_values(cost)
        x = frame[cost] / scale
        ax.plot(x, frame["val_top1"], drawstyle="steps-post", marker="o", zorder=3, label="val (search)")
        for column, style in (("test_top1", "s"), ("test_top1_finetuned", "D")):
            if column in frame.columns and frame[column].notna().any():
                ax.plot(x, frame[column], style, linestyle="none", zorder=4, label=ACCURACIES[column])
        ids_on = "test_top1_finetuned" if "test_top1_finetuned" in frame.columns else "val_top1"
        if "id" in frame.columns:
            for xi, yi, name, offset in zip(x, frame[ids_on], frame["id"], label_offsets(x, frame[ids_on])):
                if pd.notna(yi):
                    ax.annotate(str(name), (xi, yi), textcoords="offset points", xytext=offset, fontsize=8, zorder=5)
        for entry in baseline:
            x_base = baseline_cost(entry, cost, run_latency)
            if x_base is not None and entry.get("test_top1") is not None:
                ax.plot(x_base / scale, float(entry["test_top1"]), "*", markersize=13, zorder=6,
                        label=f"baseline: {entry.get('name', 'static net')}")
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"front ({len(frame)} nets): top-1 vs {COSTS[cost]}")
        ax.legend(fontsize=8, loc="lower right")
    return _save(plt, fig, path)


def plot_ensembles(pareto: pd.DataFrame, ensembles: pd.DataFrame, path: Path) -> Path:
    """Ensembles against the fine-tuned single nets on latency, one panel per mode.

    Filled markers: held-out val (the selection split, which no member trained on; ensembles.csv's
    ``val_top1`` and pareto.csv's ``select_top1_finetuned``), the fair comparison. Open markers: test.
    """
    _require(ensembles, ["mode", "latency_ms", "val_top1"], "ensembles.csv")
    _require(pareto, ["latency_ms"], "pareto.csv")
    groups = list(ensembles.groupby("mode"))
    plt, fig, axes = _figure(len(groups))
    single_test = "test_top1_finetuned" if "test_top1_finetuned" in pareto.columns else "test_top1"
    # markers only: the single nets are a front in params, not in latency, so a line through
    # them zig-zags (a smaller net can time slower); the ensembles are few points per mode
    for ax, (mode, group) in zip(axes, groups):
        if "select_top1_finetuned" in pareto.columns and pareto["select_top1_finetuned"].notna().any():
            ax.plot(pareto["latency_ms"], pareto["select_top1_finetuned"], "o", label="single nets, held-out val")
        if single_test in pareto.columns:
            ax.plot(pareto["latency_ms"], pareto[single_test], "o", mfc="none", label=f"single nets, {ACCURACIES[single_test]}")
        ax.plot(group["latency_ms"], group["val_top1"], "s", label="ensembles, held-out val")
        if "test_top1" in group.columns:
            ax.plot(group["latency_ms"], group["test_top1"], "s", mfc="none", label="ensembles, test")
        ax.set_xlabel(f"latency (ms; {mode}: {'max' if mode == 'parallel' else 'sum'} of members)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"OFA3 ensembles ({mode}) vs single nets")
        # below the axes: inside, "best" still covers the best ensemble's point on some fronts
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize="small")
    return _save(plt, fig, path)


def plot_series(table: pd.DataFrame, columns: Sequence[str], ylabel: str, title: str, path: Path) -> Path:
    """Lines of ``columns`` against ``iteration``."""
    _require(table, ["iteration", *columns], path.stem)
    plt, fig, (ax,) = _figure()
    table = table.sort_values("iteration")
    for column in columns:
        # an undefined value (NaN, e.g. a tau over fewer than two candidates) is a gap, not a zero
        ax.plot(table["iteration"], table[column], marker="o", label=column)
    _integer_ticks(ax)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(columns) > 1:
        ax.legend()
    return _save(plt, fig, path)


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def metrics(pareto: pd.DataFrame, *, ensembles: pd.DataFrame | None = None, hv: pd.DataFrame | None = None,
            search_seconds: float | None = None, workflow_seconds: float | None = None) -> dict:
    """Headline numbers: best top-1 (val, test, fine-tuned), final hypervolume, search wall-clock."""
    out: dict = {"n_front": int(len(pareto))}
    for column in ACCURACIES:
        if column in pareto.columns and pareto[column].notna().any():
            best = pareto.loc[pareto[column].idxmax()]
            out[f"best_{column}"] = _finite(best[column])
            out[f"best_{column}_id"] = str(best["id"]) if "id" in pareto.columns else None
    if ensembles is not None and len(ensembles):
        from natv2.ensemble_selection import dominated_pairs

        out["n_ensembles"] = int(len(ensembles))
        for column in ("val_top1", "test_top1"):
            if column in ensembles.columns:
                out[f"best_ensemble_{column}"] = _finite(ensembles[column].max())
        # which single nets an ensemble dominates on (error, latency), on the same images for both
        for key, single, ens in (("held_out_val", "select_top1_finetuned", "val_top1"),
                                 ("test", "test_top1_finetuned", "test_top1")):
            if {single, "latency_ms", "id"} <= set(pareto.columns) and {ens, "latency_ms", "id", "mode"} <= set(ensembles.columns):
                pairs = dominated_pairs(pareto.dropna(subset=[single]), ensembles, single_top1=single, ensemble_top1=ens)
                out[f"ensembles_dominating_nets_{key}"] = [
                    {"ensemble": str(p.ensemble), "mode": str(p.mode), "net": str(p.net)} for p in pairs.itertuples()
                ]
    if hv is not None and len(hv):
        last = hv.sort_values("iteration").iloc[-1]
        out["hypervolume"] = _finite(last["hypervolume"])
        out["hypervolume_iteration"] = int(last["iteration"])
    if search_seconds is not None:
        out["search_wallclock_s"] = float(search_seconds)
    if workflow_seconds is not None:
        out["workflow_wallclock_s"] = float(workflow_seconds)
    return out


def evaluated_genomes(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Every genome of the given archive tables once (the last row of a genome wins)."""
    frames = [read_csv(p) for p in paths]
    frame = pd.concat(frames, ignore_index=True)
    _require(frame, ["genome", "top1_err"], "archive.csv")
    return frame.drop_duplicates("genome", keep="last").reset_index(drop=True)


def read_baseline(path: str | Path) -> list[dict]:
    """bench/baseline.py's JSON: ``{"runs": [{"name", "params", "macs", "latency_ms", "test_top1"}, ...]}``."""
    import json

    try:
        runs = json.loads(Path(path).read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Natv2Error(f"{path}: expected bench/baseline.py's JSON with a 'runs' list ({e})") from None
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise Natv2Error(f"{path}: 'runs' must be a list of objects")
    return runs


def benchmark_seconds(paths: Sequence[str | Path]) -> float:
    """Total wall-clock of Snakemake ``benchmark:`` files (tab-separated, column ``s``); folders are searched."""
    files: list[Path] = []
    for path in map(Path, paths):
        files += sorted(path.rglob("*.tsv")) if path.is_dir() else [path]
    total = 0.0
    for path in files:
        try:
            table = pd.read_csv(path, sep="\t")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            table = None
        if table is None or "s" not in table.columns:
            raise Natv2Error(f"{path}: not a Snakemake benchmark file (tab-separated with a column 's')")
        total += float(table["s"].mean())  # mean over the repeats of one job
    return total


def make_report(
    pareto_csv: str | Path,
    out_dir: str | Path,
    *,
    ensembles_csv: str | Path | None = None,
    hv_csv: str | Path | None = None,
    tau_csv: str | Path | None = None,
    search_seconds: float | None = None,
    workflow_seconds: float | None = None,
    archive_csvs: Sequence[str | Path] = (),
    baseline_json: str | Path | None = None,
) -> dict:
    """Write front.png, ensembles.png, hypervolume.png, surrogate_tau.png and metrics.json into ``out_dir``.

    A missing optional input gives a placeholder figure that says so (the workflow declares every
    PNG). The surrogate tau columns are read from ``tau_csv``, else from ``hv_csv`` when it has them.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pareto = read_csv(pareto_csv)
    if len(pareto) == 0:
        raise Natv2Error(f"{pareto_csv}: the front is empty; nothing to report")
    archive = evaluated_genomes(archive_csvs) if archive_csvs else None
    baseline = read_baseline(baseline_json) if baseline_json is not None else []
    written = [plot_front(pareto, out_dir / "front.png", archive=archive, baseline=baseline)]
    ensembles = read_csv(ensembles_csv) if ensembles_csv is not None else None
    if ensembles is not None and len(ensembles):
        written.append(plot_ensembles(pareto, ensembles, out_dir / "ensembles.png"))
    else:
        written.append(placeholder(out_dir / "ensembles.png", "no ensembles (ensembles.csv absent or empty)"))
    hv = read_csv(hv_csv) if hv_csv is not None else None
    if hv is not None:
        written.append(plot_series(hv, ["hypervolume"], "hypervolume", "hypervolume per iteration", out_dir / "hypervolume.png"))
    else:
        written.append(placeholder(out_dir / "hypervolume.png", "no hypervolume table (hv.csv) given"))
    tau = read_csv(tau_csv) if tau_csv is not None else hv
    columns = [c for c in ("cv_tau", "tau_candidates") if tau is not None and c in tau.columns]
    if tau_csv is not None and not columns:
        raise Natv2Error(f"{tau_csv}: expected columns iteration and cv_tau and/or tau_candidates")
    if columns:
        written.append(plot_series(tau, columns, "Kendall tau", "surrogate rank correlation per iteration",
                                   out_dir / "surrogate_tau.png"))
    else:
        written.append(placeholder(out_dir / "surrogate_tau.png", "no surrogate tau recorded (cv_tau, tau_candidates)"))
    result = metrics(pareto, ensembles=ensembles, hv=hv, search_seconds=search_seconds,
                     workflow_seconds=workflow_seconds)
    result["plots"] = [p.name for p in written]
    write_json(out_dir / "metrics.json", result)
    return result
