"""Plots and headline metrics of a finished run (PNG files via matplotlib's Agg backend).

    natv2 report --pareto results/cifar10/pareto.csv --ensembles results/cifar10/ensembles.csv \
        --hv results/cifar10/search/hv.csv --tau results/cifar10/search/surrogate.csv \
        --out results/cifar10/report

Writes ``front.png`` (val and test top-1, before and after fine-tune, against params, MACs
and latency, one panel each), ``ensembles.png`` (ensembles against the single nets, a panel per mode),
``hypervolume.png`` (hv.csv: iteration, hypervolume), ``surrogate_tau.png`` (iteration,
cv_tau, tau_candidates and their row counts cv_n, n_candidates; from --tau, else from hv.csv when
it has them) and ``metrics.json``.
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


def _save(plt, fig, path: Path, *, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    fig.tight_layout(rect=rect)
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


#: where an id label may sit, tried in order: text offset from its point (points) and the text's
#: horizontal alignment. Above right, below right, above left, below left.
LABEL_SPOTS: tuple[tuple[int, int, str], ...] = ((4, 4, "left"), (4, -11, "left"), (-4, 4, "right"), (-4, -11, "right"))


def _text_box(x: float, y: float, spot: tuple[int, int, str], text: str, fontsize: float) -> tuple[float, ...]:
    """The box (x0, y0, x1, y1), in points, of ``text`` annotated at ``spot`` from ``(x, y)``
    (baseline-anchored digits: about 0.62 em wide each and 0.75 em tall)."""
    dx, dy, ha = spot
    width, height = 0.62 * fontsize * len(text), 0.75 * fontsize
    x0 = x + dx if ha == "left" else x + dx - width
    return (x0, y + dy, x0 + width, y + dy + height)


def _box_hits_circle(box: Sequence[float], cx: float, cy: float, r: float) -> bool:
    nearest_x, nearest_y = min(max(cx, box[0]), box[2]), min(max(cy, box[1]), box[3])
    return (nearest_x - cx) ** 2 + (nearest_y - cy) ** 2 < r * r


def _boxes_overlap(a: Sequence[float], b: Sequence[float], pad: float = 1.0) -> bool:
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def label_spots(points: Sequence[tuple[float, float]], texts: Sequence[str],
                markers: Sequence[tuple[float, float, float]], bounds: Sequence[float], *,
                fontsize: float = 8.0) -> list[tuple[int, int, str]]:
    """A spot of ``LABEL_SPOTS`` for each label of ``points`` (display coordinates in points).

    Each label takes the first spot whose text box stays inside ``bounds`` (x0, y0, x1, y1, the
    axes) and covers no marker (``markers``: centre and radius) and no label placed before it;
    when every spot collides, the one with the fewest collisions (in the order tried). The digits
    front had member 3's label above right of it, under member 1's marker 0.1 M params away.
    """
    placed: list[tuple[float, ...]] = []
    out: list[tuple[int, int, str]] = []
    for (x, y), text in zip(points, texts):
        best, best_hits = LABEL_SPOTS[0], None
        for spot in LABEL_SPOTS:
            box = _text_box(x, y, spot, text, fontsize)
            outside = box[0] < bounds[0] or box[1] < bounds[1] or box[2] > bounds[2] or box[3] > bounds[3]
            hits = (int(outside) + sum(_box_hits_circle(box, *m) for m in markers)
                    + sum(_boxes_overlap(box, other) for other in placed))
            if best_hits is None or hits < best_hits:
                best, best_hits = spot, hits
            if hits == 0:
                break
        placed.append(_text_box(x, y, best, text, fontsize))
        out.append(best)
    return out


def _annotate_ids(ax, x, y, ids, *, fontsize: float = 8.0) -> None:
    """Label the points ``(x, y)`` with ``ids`` at spots that avoid every marker and label drawn
    on ``ax`` (call it once the figure's layout is final: it works in display points)."""
    fig = ax.figure
    ax.get_xlim(), ax.get_ylim()  # settles autoscaled limits before data are turned into points
    to_points = 72.0 / fig.dpi
    data = np.column_stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)])
    keep = np.isfinite(data).all(axis=1)
    if not keep.any():
        return
    data, texts = data[keep], [str(name) for name, kept in zip(ids, keep) if kept]
    points = [tuple(p) for p in ax.transData.transform(data) * to_points]
    markers = []
    for line in ax.get_lines():
        if line.get_marker() in (None, "", "None", " "):
            continue
        drawn = np.column_stack([np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)])
        drawn = drawn[np.isfinite(drawn).all(axis=1)]
        if len(drawn):
            radius = line.get_markersize() / 2 + 1.0  # markersize is a diameter in points; 1 pt clearance
            markers += [(px, py, radius) for px, py in ax.transData.transform(drawn) * to_points]
    extent = ax.get_window_extent()
    bounds = (extent.x0 * to_points, extent.y0 * to_points, extent.x1 * to_points, extent.y1 * to_points)
    for (xi, yi), text, (dx, dy, ha) in zip(data, texts, label_spots(points, texts, markers, bounds, fontsize=fontsize)):
        ax.annotate(text, (float(xi), float(yi)), textcoords="offset points", xytext=(dx, dy), ha=ha,
                    fontsize=fontsize, zorder=5)


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
    ids_on = "test_top1_finetuned" if "test_top1_finetuned" in pareto.columns else "val_top1"
    id_labels = []  # (ax, x, y, ids): placed once the layout is final
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
        if "id" in frame.columns:
            id_labels.append((ax, x, frame[ids_on], list(frame["id"])))
        for entry in baseline:
            x_base = baseline_cost(entry, cost, run_latency)
            if x_base is not None and entry.get("test_top1") is not None:
                ax.plot(x_base / scale, float(entry["test_top1"]), "*", markersize=13, zorder=6,
                        label=f"baseline: {entry.get('name', 'static net')}")
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"front ({len(frame)} nets): top-1 vs {COSTS[cost]}")
        ax.margins(y=0.08)  # room above the best net for its label
    # one legend under the panels: inside one, it covered the front (CIFAR-10: the step line at 6 M params)
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, handle)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    rect = (0, 0.07, 1, 1)
    fig.tight_layout(rect=rect)  # the final layout first: the ids are placed in display points
    for ax, x, y, ids in id_labels:
        _annotate_ids(ax, x, y, ids)
    return _save(plt, fig, path, rect=rect)


def plot_ensembles(pareto: pd.DataFrame, ensembles: pd.DataFrame, path: Path) -> Path:
    """Ensembles against the fine-tuned single nets on latency, one panel per mode.

    Filled markers: held-out val (the selection split, which no member trained on; ensembles.csv's
    ``val_top1`` and pareto.csv's ``select_top1_finetuned``), the fair comparison. Open markers: test.
    Single nets are labelled with their ids, ensembles with their members ("4+3").
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
        ax.margins(y=0.08)
    fig.tight_layout()  # the final layout first: the labels are placed in display points
    # which net is which: single nets by id, ensembles by their members ("4+3")
    single_on = next((c for c in ("select_top1_finetuned", single_test) if c in pareto.columns), None)
    for ax, (_mode, group) in zip(axes, groups):
        x, y, names = [], [], []
        if single_on is not None and "id" in pareto.columns:
            x, y, names = list(pareto["latency_ms"]), list(pareto[single_on]), [str(i) for i in pareto["id"]]
        if "members" in group.columns:
            x += list(group["latency_ms"])
            y += list(group["val_top1"])
            names += [str(m).replace(";", "+") for m in group["members"]]
        _annotate_ids(ax, x, y, names)  # one call: each label avoids the labels placed before it
    return _save(plt, fig, path)


def plot_series(table: pd.DataFrame, columns: Sequence[str], ylabel: str, title: str, path: Path, *,
                note: str | None = None) -> Path:
    """Lines of ``columns`` against ``iteration``, with an optional ``note`` under the axes."""
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
    if note:
        ax.text(0.5, -0.2, note, transform=ax.transAxes, ha="center", va="top", fontsize=8, color="0.3", wrap=True)
    return _save(plt, fig, path)


#: why the curve may fall: every iteration re-measures the archive on the adapted supernet (NAT)
HV_NOTE = ("Each iteration re-measures the whole archive on the supernet adapted to it,\n"
           "so the hypervolume can fall as well as rise (one reference point per run).")

#: the surrogate's taus in hv.csv: column -> (legend text, column of the number of rows it ranks)
TAU_SERIES = {"cv_tau": ("cross-validation on the archive", "cv_n"),
              "tau_candidates": ("measured candidates", "n_candidates")}


def kendall_chance_band(n) -> np.ndarray:
    """Half-width of the band holding 95 % of Kendall taus of a random ranking of ``n`` rows
    (normal approximation: variance 2(2n+5) / (9n(n-1)), Kendall 1938; scipy.stats.kendalltau's
    asymptotic test uses it). NaN for fewer than 2 rows. 4 rows: 0.96, 24 rows: 0.29."""
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = 1.96 * np.sqrt(2.0 * (2.0 * n + 5.0) / (9.0 * n * (n - 1.0)))
    return np.where(n >= 2, np.minimum(half, 1.0), np.nan)


def _counts(values: pd.Series) -> str:
    values = values.dropna().astype(int)
    if values.empty:
        return ""
    low, high = int(values.min()), int(values.max())
    return f" (n = {low})" if low == high else f" (n = {low}-{high})"


def plot_tau(table: pd.DataFrame, path: Path) -> Path:
    """The surrogate's Kendall taus per iteration on their full scale (-1..1), each with the band
    where 95 % of random rankings of as many rows fall (when hv.csv has the counts): a tau inside
    its band is indistinguishable from chance (the digits run ranks 4 candidates: 0.82, then -0.18)."""
    columns = [c for c in TAU_SERIES if c in table.columns]
    _require(table, ["iteration", *columns], path.stem)
    plt, fig, (ax,) = _figure()
    table = table.sort_values("iteration")
    banded = False
    for column in columns:
        name, n_column = TAU_SERIES[column]
        counts = table[n_column] if n_column in table.columns else pd.Series(dtype=float)
        (line,) = ax.plot(table["iteration"], table[column], marker="o", label=name + _counts(counts))
        if not counts.dropna().empty:
            half = kendall_chance_band(counts)
            ax.fill_between(table["iteration"], -half, half, color=line.get_color(), alpha=0.12, linewidth=0)
            banded = True
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set_ylim(-1.05, 1.05)
    _integer_ticks(ax)
    ax.set_xlabel("iteration")
    ax.set_ylabel("Kendall tau (predicted vs measured error)")
    ax.set_title("surrogate rank correlation per iteration")
    handles, labels = ax.get_legend_handles_labels()
    if banded:
        from matplotlib.patches import Patch

        handles.append(Patch(facecolor="0.5", alpha=0.25))
        labels.append("shaded: where 95 % of random rankings of n rows fall")
    # below the axes: inside, it covered a tau near +1 (digits, iteration 1)
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False)
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
        written.append(plot_series(hv, ["hypervolume"], "hypervolume (normalised objectives)",
                                   "hypervolume of the archive per iteration", out_dir / "hypervolume.png",
                                   note=HV_NOTE))
    else:
        written.append(placeholder(out_dir / "hypervolume.png", "no hypervolume table (hv.csv) given"))
    tau = read_csv(tau_csv) if tau_csv is not None else hv
    columns = [c for c in TAU_SERIES if tau is not None and c in tau.columns]
    if tau_csv is not None and not columns:
        raise Natv2Error(f"{tau_csv}: expected columns iteration and cv_tau and/or tau_candidates")
    if columns:
        written.append(plot_tau(tau, out_dir / "surrogate_tau.png"))
    else:
        written.append(placeholder(out_dir / "surrogate_tau.png", "no surrogate tau recorded (cv_tau, tau_candidates)"))
    result = metrics(pareto, ensembles=ensembles, hv=hv, search_seconds=search_seconds,
                     workflow_seconds=workflow_seconds)
    result["plots"] = [p.name for p in written]
    write_json(out_dir / "metrics.json", result)
    return result
