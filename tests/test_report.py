"""`natv2 report`: the PNGs the workflow declares, metrics.json, clear errors on bad tables."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from natv2.cli import main
from natv2.errors import Natv2Error
from natv2.report import benchmark_seconds, make_report

PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = ["front.png", "ensembles.png", "hypervolume.png", "surrogate_tau.png"]


def tables(tmp_path):
    rng = np.random.default_rng(0)
    n = 5
    pareto = pd.DataFrame({
        "id": [f"{i}" for i in range(n)], "genome": [f"g{i}" for i in range(n)], "resolution": 32,
        "params": np.sort(rng.integers(1e5, 1e6, n)), "macs": np.sort(rng.integers(1e6, 1e7, n)),
        "latency_ms": np.linspace(1, 3, n), "val_top1": np.linspace(60, 80, n),
        "test_top1": np.linspace(58, 78, n), "test_top1_finetuned": np.linspace(61, 83, n),
        "select_top1_finetuned": np.linspace(62, 82, n), "path": "nets/x",
    })
    ensembles = pd.DataFrame({
        "id": ["e000", "e001"], "members": ["0;1", "3;4"], "mode": ["parallel", "sequential"],
        "params": [3e5, 1.5e6], "macs": [3e6, 1.5e7], "latency_ms": [1.5, 5.5], "val_top1": [70.0, 84.0],
        "test_top1": [69.0, 82.5],
    })
    hv = pd.DataFrame({"iteration": [0, 1, 2], "hypervolume": [0.2, 0.35, 0.4],
                       "cv_tau": [0.3, 0.5, 0.6], "tau_candidates": [0.1, 0.4, np.nan]})
    paths = {}
    for name, frame in (("pareto", pareto), ("ensembles", ensembles), ("hv", hv)):
        paths[name] = tmp_path / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return paths


def test_report_writes_every_plot_and_the_headline_metrics(tmp_path):
    paths = tables(tmp_path)
    bench = tmp_path / "benchmarks" / "search"
    bench.mkdir(parents=True)
    for i, seconds in enumerate([10.5, 20.0]):
        (bench / f"job{i}.tsv").write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:10\t100\n")
    (tmp_path / "benchmarks" / "report.tsv").write_text("s\th:m:s\n4.0\t0:00:04\n")  # not part of the search
    rc = main(["report", "--pareto", str(paths["pareto"]), "--ensembles", str(paths["ensembles"]),
               "--hv", str(paths["hv"]), "--benchmarks", str(tmp_path / "benchmarks"), "--out", str(tmp_path / "r")])
    assert rc == 0
    for name in PLOTS:
        data = (tmp_path / "r" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["best_test_top1_finetuned"] == pytest.approx(83.0)
    assert metrics["best_test_top1_finetuned_id"] == "4"
    assert metrics["best_val_top1"] == pytest.approx(80.0)
    assert metrics["best_ensemble_val_top1"] == pytest.approx(84.0)
    assert metrics["hypervolume"] == pytest.approx(0.4) and metrics["hypervolume_iteration"] == 2
    assert metrics["search_wallclock_s"] == pytest.approx(30.5)
    # e000 (70 % held-out val, 69 % test at 1.5 ms) beats net 1 (67 % / 66.5 % at 1.5 ms) on both splits;
    # e001 is the most accurate but slower than every net
    one = [{"ensemble": "e000", "mode": "parallel", "net": "1"}]
    assert metrics["ensembles_dominating_nets_held_out_val"] == one
    assert metrics["ensembles_dominating_nets_test"] == one
    assert metrics["workflow_wallclock_s"] == pytest.approx(34.5)
    assert metrics["n_front"] == 5 and metrics["n_ensembles"] == 2


def test_missing_optional_inputs_give_placeholders(tmp_path):
    paths = tables(tmp_path)
    result = make_report(paths["pareto"], tmp_path / "r", search_seconds=12.0)
    assert all((tmp_path / "r" / name).read_bytes().startswith(PNG) for name in PLOTS)
    assert "hypervolume" not in result and result["search_wallclock_s"] == 12.0


def test_bad_tables_are_clear_errors(tmp_path):
    paths = tables(tmp_path)
    empty = tmp_path / "empty.csv"
    pd.DataFrame(columns=["id", "val_top1", "params"]).to_csv(empty, index=False)
    with pytest.raises(Natv2Error, match="front is empty"):
        make_report(empty, tmp_path / "r")
    no_costs = tmp_path / "no_costs.csv"
    pd.read_csv(paths["pareto"]).drop(columns=["params", "macs", "latency_ms"]).to_csv(no_costs, index=False)
    with pytest.raises(Natv2Error, match="no cost column"):
        make_report(no_costs, tmp_path / "r")
    hv_bad = tmp_path / "hv_bad.csv"
    pd.DataFrame({"iteration": [0], "hv": [0.1]}).to_csv(hv_bad, index=False)
    with pytest.raises(Natv2Error, match="hypervolume.*missing"):
        make_report(paths["pareto"], tmp_path / "r", hv_csv=hv_bad)
    not_bench = tmp_path / "x.tsv"
    not_bench.write_text("a\tb\n1\t2\n")
    with pytest.raises(Natv2Error, match="not a Snakemake benchmark"):
        benchmark_seconds([not_bench])
    assert main(["report", "--pareto", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "r")]) == 2


def _captured_figure(monkeypatch):
    """Run a plot with ``natv2.report._save`` replaced by a capture of its figure."""
    import natv2.report as report

    captured = {}

    def keep(plt, fig, path, **layout):
        captured["fig"] = fig
        return path

    monkeypatch.setattr(report, "_save", keep)
    return captured


def test_front_plot_sorts_each_panel_labels_ids_and_shows_archive_and_baseline(tmp_path, monkeypatch):
    """Issue 13: the front is a step line sorted along its own x axis (not table order), in M units,
    over every evaluated genome in grey, with the members' ids and the baseline as a star."""
    from natv2.report import plot_front

    paths = tables(tmp_path)
    pareto = pd.read_csv(paths["pareto"])
    pareto["latency_ms"] = [3.0, 1.0, 2.5, 1.5, 2.0]  # not in the order of params: the V of table order
    archive = pd.DataFrame({"genome": [f"a{i}" for i in range(7)], "top1_err": np.linspace(50, 20, 7),
                            "params": np.linspace(1e5, 1e6, 7), "macs": np.linspace(1e6, 1e7, 7),
                            "latency_ms": np.linspace(1, 3, 7)})
    # the baseline's latency_ms comes from its own run: the star takes this run's measurement of its genome
    baseline = [{"name": "largest", "genome": "a6", "params": 2.0e6, "macs": 2e7, "latency_ms": 4.0, "test_top1": 85.0}]
    captured = _captured_figure(monkeypatch)
    plot_front(pareto, tmp_path / "front.png", archive=archive, baseline=baseline)
    axes = captured["fig"].axes
    assert [ax.get_xlabel() for ax in axes] == ["parameters (M)", "MACs (M)", "latency (ms)"]
    for ax in axes:
        val_line = next(line for line in ax.get_lines() if line.get_label() == "val (search)")
        x = np.asarray(val_line.get_xdata(), dtype=float)
        assert np.all(np.diff(x) >= 0), ax.get_xlabel()
        assert val_line.get_drawstyle() == "steps-post"
        grey = ax.collections[0]
        assert len(grey.get_offsets()) == 7
        assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "2", "3", "4"]
        star = next(line for line in ax.get_lines() if line.get_label().startswith("baseline"))
        assert float(star.get_ydata()[0]) == 85.0
    latency_star = next(line for line in axes[2].get_lines() if line.get_label().startswith("baseline"))
    assert float(latency_star.get_xdata()[0]) == 3.0  # archive row a6, not the baseline run's 4.0
    latency_val = next(line for line in axes[2].get_lines() if line.get_label() == "val (search)")
    assert list(latency_val.get_xdata()) == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert float(axes[0].get_lines()[0].get_xdata().max()) == pytest.approx(pareto["params"].max() / 1e6)


def test_a_baseline_the_run_never_timed_has_no_latency_star(tmp_path, monkeypatch):
    """A measured latency belongs to its machine and moment: a baseline genome this run did not
    measure is drawn on the params and MACs panels only, never at its own run's latency_ms."""
    from natv2.report import plot_front

    pareto = pd.read_csv(tables(tmp_path)["pareto"])
    pareto["latency_ms"] = [3.0, 1.0, 2.5, 1.5, 2.0]
    baseline = [{"name": "mid", "genome": "not-measured", "params": 2.0e6, "macs": 2e7, "latency_ms": 4.0,
                 "test_top1": 85.0}]
    captured = _captured_figure(monkeypatch)
    plot_front(pareto, tmp_path / "front.png", baseline=baseline)
    stars = [[line for line in ax.get_lines() if line.get_label().startswith("baseline")] for ax in captured["fig"].axes]
    assert [len(s) for s in stars] == [1, 1, 0]
    assert float(stars[0][0].get_xdata()[0]) == 2.0


def test_series_plot_has_integer_iteration_ticks(tmp_path, monkeypatch):
    from natv2.report import plot_series

    hv = pd.DataFrame({"iteration": [0, 1, 2], "hypervolume": [0.2, 0.35, 0.4]})
    captured = _captured_figure(monkeypatch)
    plot_series(hv, ["hypervolume"], "hv", "hv", tmp_path / "hv.png")
    ax = captured["fig"].axes[0]
    ticks = [t for t in ax.get_xticks() if -0.5 <= t <= 2.5]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_report_reads_archives_and_refuses_a_bad_baseline(tmp_path):
    paths = tables(tmp_path)
    archive = tmp_path / "archive.csv"
    pd.DataFrame({"genome": ["a", "b", "a"], "top1_err": [30.0, 40.0, 25.0], "params": [1e5, 2e5, 1e5],
                  "macs": [1e6, 2e6, 1e6], "latency_ms": [1.0, 2.0, 1.0]}).to_csv(archive, index=False)
    from natv2.report import evaluated_genomes

    frame = evaluated_genomes([archive])
    assert list(frame["genome"]) == ["b", "a"] and list(frame["top1_err"]) == [40.0, 25.0]
    bad = tmp_path / "baseline.json"
    bad.write_text('{"nets": []}')
    with pytest.raises(Natv2Error, match="baseline.json: expected bench/baseline.py's JSON"):
        make_report(paths["pareto"], tmp_path / "r", archive_csvs=[archive], baseline_json=bad)


def test_report_plots_a_tau_that_is_nan_everywhere(tmp_path):
    """An undefined Kendall tau is NaN in hv.csv: the tau plot is still drawn, no error."""
    paths = tables(tmp_path)
    hv = pd.read_csv(paths["hv"]).assign(cv_tau=np.nan, tau_candidates=np.nan)
    hv.to_csv(paths["hv"], index=False)
    rc = main(["report", "--pareto", str(paths["pareto"]), "--ensembles", str(paths["ensembles"]),
               "--hv", str(paths["hv"]), "--out", str(tmp_path / "r")])
    assert rc == 0 and (tmp_path / "r" / "surrogate_tau.png").read_bytes().startswith(PNG)


def test_label_spots_avoid_markers_labels_and_the_axes_edge():
    from natv2.report import LABEL_SPOTS, label_spots

    bounds = (0.0, 0.0, 300.0, 200.0)
    # nothing near: above right
    assert label_spots([(100.0, 100.0)], ["3"], [], bounds) == [LABEL_SPOTS[0]]
    # digits front: member 1's marker (radius 4) sits where member 3's label would go above right
    spot = label_spots([(100.0, 100.0)], ["3"], [(100.0, 100.0, 4.0), (108.0, 108.0, 4.0)], bounds)[0]
    assert spot == LABEL_SPOTS[1]
    # at the top edge the label goes below; at the right edge to the left
    assert label_spots([(100.0, 195.0)], ["0"], [], bounds)[0][1] < 0
    assert label_spots([(297.0, 100.0)], ["11"], [], bounds)[0][2] == "right"
    # two points at one spot: the second label does not cover the first
    spots = label_spots([(100.0, 100.0), (101.0, 100.0)], ["21", "22"], [], bounds)
    assert spots[0] == LABEL_SPOTS[0] and spots[1] != LABEL_SPOTS[0]


def test_front_plot_ids_cover_no_marker_and_stay_inside_the_axes(tmp_path, monkeypatch):
    """The digits run's front (2026-12-02): member 3's id sat above right of it, under member 1's
    marker 0.1 M params away. Every id's rendered text box now misses every marker of its panel."""
    from natv2.report import plot_front

    pareto = pd.DataFrame({
        "id": ["4", "3", "1", "0"], "genome": ["a", "b", "c", "d"],
        "params": [2142602, 2404026, 2519226, 3451530], "macs": [3.93e6, 5.99e6, 7.79e6, 8.19e6],
        "latency_ms": [3.27, 4.23, 5.43, 5.58], "val_top1": [77.1, 90.3, 93.8, 94.4],
        "test_top1": [77.4, 90.3, 92.5, 91.4], "test_top1_finetuned": [94.71, 96.66, 97.21, 95.82],
    })
    # the archive's largest net stretches the axes as in that run (2.1-6.4 M params)
    archive = pd.DataFrame({"genome": ["e", "f"], "top1_err": [7.6, 15.2], "params": [6396570, 2958000],
                            "macs": [15.2e6, 6.5e6], "latency_ms": [7.61, 4.31]})
    captured = _captured_figure(monkeypatch)
    plot_front(pareto, tmp_path / "front.png", archive=archive)
    fig = captured["fig"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "3", "4"]
        inside = ax.get_window_extent()
        centres = []
        for line in ax.get_lines():
            if line.get_marker() not in (None, "", "None"):
                data = np.column_stack([line.get_xdata(), line.get_ydata()]).astype(float)
                radius = line.get_markersize() / 2 * fig.dpi / 72
                centres += [(x, y, radius) for x, y in ax.transData.transform(data)]
        for text in ax.texts:
            box = text.get_window_extent(renderer)
            assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
            for x, y, r in centres:
                nx, ny = min(max(x, box.x0), box.x1), min(max(y, box.y0), box.y1)
                assert (nx - x) ** 2 + (ny - y) ** 2 >= r * r, (ax.get_xlabel(), text.get_text(), (x, y))
    # one legend for the three panels, under them, not inside one
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1


def test_tau_plot_names_its_series_with_their_counts_and_draws_the_chance_band(tmp_path, monkeypatch):
    from natv2.report import kendall_chance_band, plot_tau

    # 1.96 * sqrt(2(2n+5) / (9n(n-1))): 4 rows 1.96 * sqrt(26/108) = 0.9617, 24 rows 0.2863, 40 rows 0.2157
    assert kendall_chance_band([4, 24, 40]).tolist() == pytest.approx([0.9617, 0.2863, 0.2157], abs=1e-4)
    assert np.isnan(kendall_chance_band([1, np.nan])).all()
    hv = pd.DataFrame({"iteration": [0, 1, 2], "cv_tau": [np.nan, 0.12, 0.18], "cv_n": [np.nan, 24, 24],
                       "tau_candidates": [np.nan, 0.82, -0.18], "n_candidates": [np.nan, 4, 4]})
    captured = _captured_figure(monkeypatch)
    plot_tau(hv, tmp_path / "tau.png")
    ax = captured["fig"].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["cross-validation on the archive (n = 24)", "measured candidates (n = 4)"]
    assert "random rankings" in labels[2]
    assert ax.get_ylim() == (-1.05, 1.05)  # the whole scale: a drop from 0.82 to -0.18 inside the band reads as noise
    tops = sorted(float(band.get_paths()[0].vertices[:, 1].max()) for band in ax.collections)
    assert tops == pytest.approx([0.2863, 0.9617], abs=1e-4)
    # without counts (an hv.csv of an older run): the lines, no band
    captured = _captured_figure(monkeypatch)
    plot_tau(hv.drop(columns=["cv_n", "n_candidates"]), tmp_path / "tau.png")
    ax = captured["fig"].axes[0]
    assert len(ax.collections) == 0 and [t.get_text() for t in ax.get_legend().get_texts()] == [
        "cross-validation on the archive", "measured candidates"]

def test_ensemble_plot_names_each_single_net_and_each_ensemble(tmp_path, monkeypatch):
    """Which point is which: single nets carry their ids, ensembles their members, clear of the axes edge."""
    from natv2.report import plot_ensembles

    paths = tables(tmp_path)
    captured = _captured_figure(monkeypatch)
    plot_ensembles(pd.read_csv(paths["pareto"]), pd.read_csv(paths["ensembles"]), tmp_path / "e.png")
    fig = captured["fig"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax, members in zip(fig.axes, ["0+1", "3+4"]):  # ensembles.csv: e000 0;1 parallel, e001 3;4 sequential
        assert sorted(t.get_text() for t in ax.texts) == sorted(["0", "1", "2", "3", "4", members])
        inside = ax.get_window_extent()
        for text in ax.texts:
            box = text.get_window_extent(renderer)
            assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1


def test_ensemble_labels_avoid_the_single_nets_labels(tmp_path, monkeypatch):
    """A parallel ensemble sits at its slowest member's latency, often at that net's accuracy: its
    members label must not print over the net's id (both are placed in one pass)."""
    from natv2.report import plot_ensembles

    pareto = pd.DataFrame({"id": ["0", "1", "2"], "latency_ms": [1.0, 2.0, 3.0],
                           "select_top1_finetuned": [70.0, 80.0, 75.0], "test_top1_finetuned": [69.0, 79.0, 74.0]})
    ensembles = pd.DataFrame({"members": ["0;1"], "mode": ["parallel"], "latency_ms": [2.0], "val_top1": [80.0]})
    captured = _captured_figure(monkeypatch)
    plot_ensembles(pareto, ensembles, tmp_path / "e.png")
    fig = captured["fig"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = {t.get_text(): t.get_window_extent(renderer) for t in fig.axes[0].texts}
    assert sorted(boxes) == ["0", "0+1", "1", "2"]
    assert not boxes["1"].overlaps(boxes["0+1"])
