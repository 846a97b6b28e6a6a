"""Tests of sslbench.results.ablation: hand-built run frames with known values, so every number in
the tables and figures is checked against a hand computation (and scipy for the intervals).

One small SQLite MLflow store (pretraining runs with per-epoch losses) is built per module for
load_histories and the report; everything else works on frames built here.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy import stats

from sslbench.benchmark.errors import SSLBenchError
from sslbench.results import ablation as AB
from sslbench.results import tracking as T
from sslbench.results.aggregate import attach_pretrain, load_runs

PROTO = "knn-k200-t0.1"
BASE = "fmnist-quick"
_IDS = itertools.count(1)


def run(method: str, batch_size: int, seed: int, top1: float, augment: str = BASE, *,
        protocol: str = PROTO, epochs: int = 20, parent: str | None = None, **extra: Any) -> dict[str, Any]:
    """One evaluation run as load_runs(kind="eval") gives it."""
    n = next(_IDS)
    return {
        "run_id": f"e{n}", "parent_run_id": parent or f"p{n}",
        "kind": "eval", "method": method, "recipe": f"{method}-quick", "augment": augment,
        "dataset": "fashion-mnist", "backbone": "small-cnn", "batch_size": batch_size, "epochs": epochs,
        "seed": seed, "protocol": protocol, "top1": top1, "top5": 99.0, **extra,
    }  # fmt: skip


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    out = pd.DataFrame(rows)
    for col in ("batch_size", "epochs", "seed"):
        out[col] = out[col].astype("Int64")
    return out


def baselines() -> list[dict[str, Any]]:
    """Untrained baselines: never part of a method curve."""
    return [run("random-init", 0, 0, 20.0, "none", epochs=0), run("raw-pixels", 0, 0, 70.0, "none", epochs=0)]


def ref_row(method: str, value: float, *, ablation: str, augment: str = "", batch_size: int | None = None,
            source: str = "BYOL paper Table 17", variant: str = "", reported_by: str = "paper",
            metric: str = "top1", epochs: int = 300, protocol: str = "linear", rid: str = "") -> dict[str, Any]:
    """One row of the reference table (the columns ablation.py reads)."""
    return {"id": rid or f"r{len(augment)}{value}{variant}{batch_size}", "method": method, "variant": variant,
            "paper": "BYOL (Grill et al. 2020)", "dataset": "imagenet", "backbone": "resnet50", "epochs": epochs,
            "batch_size": batch_size, "protocol": protocol, "metric": metric, "value": value, "source": source,
            "reported_by": reported_by, "ablation": ablation, "augment": augment}  # fmt: skip


def reference(rows: list[dict[str, Any]]) -> pd.DataFrame:
    out = pd.DataFrame(rows)
    for col in ("batch_size", "epochs"):
        out[col] = pd.array(out[col], dtype="Int64")
    return out


# ------------------------------------------------------------------------------------------------
# Drop one augmentation

B0, B1, B2 = 80.0, 81.0, 82.5  # baseline, seeds 0, 1, 2
NO_COLOR = (70.0, 72.0, 72.5)  # same seeds: paired
NO_FLIP = {0: 79.0, 3: 80.5}  # other seeds: Welch
NO_BLUR = {0: 81.0}  # one seed: no interval


def drop_one_runs() -> pd.DataFrame:
    rows = [run("byol", 256, s, v) for s, v in zip((0, 1, 2), (B0, B1, B2))]
    rows += [run("byol", 256, s, v, f"{BASE}-no-color") for s, v in zip((0, 1, 2), NO_COLOR)]
    rows += [run("byol", 256, s, v, f"{BASE}-no-flip") for s, v in NO_FLIP.items()]
    rows += [run("byol", 256, s, v, f"{BASE}-no-blur") for s, v in NO_BLUR.items()]
    rows += [run("byol", 128, s, 50.0 + s) for s in (0, 1, 2)]  # another batch size: not the baseline at 256
    rows += [run("simclr", 256, s, 70.0 + s) for s in (0, 1)]
    rows += [run("simclr", 256, s, 60.0 + 2 * s, f"{BASE}-no-color") for s in (0, 1)]
    rows += [run("byol", 256, 0, 10.0, f"{BASE}-no-color", protocol="linear")]  # another protocol
    rows += [run("byol", 256, 0, 10.0, f"{BASE}-no-colour")]  # not a transform: ignored
    return frame(rows + baselines())


def table17() -> pd.DataFrame:
    return reference([
        ref_row("byol", 72.5, ablation="augmentation", augment="baseline"),
        ref_row("byol", 63.4, ablation="augmentation", augment="-color", variant="remove colour (jitter + grayscale)"),
        ref_row("byol", 72.4, ablation="augmentation", augment="-blur", variant="remove blur in T' only"),
        ref_row("byol", 71.2, ablation="augmentation", augment="-blur"),
        ref_row("byol", 71.9, ablation="augmentation", augment="-flip", metric="top5"),  # another metric
        ref_row("byol", 50.0, ablation="augmentation", augment="baseline", source="Other paper Table 3"),
        ref_row("byol", 10.0, ablation="augmentation", augment="-color", source="Other paper Table 3"),
        ref_row("byol", 30.0, ablation="augmentation", augment="-flip", source="Unpaired Table 9"),  # no baseline
        ref_row("simclr", 67.9, ablation="augmentation", augment="baseline", variant="BYOL reproduction (repro)",
                reported_by="BYOL paper"),
        ref_row("simclr", 45.7, ablation="augmentation", augment="-color", reported_by="BYOL paper",
                variant="BYOL reproduction (repro), remove colour (jitter + grayscale)"),
    ])  # fmt: skip


def test_drop_one_paired_delta_and_ci_equal_hand_and_scipy() -> None:
    table = AB.drop_one_table(drop_one_runs(), baseline=BASE, protocol=PROTO, reference=table17())
    assert list(table.columns) == list(AB.DROP_ONE_COLUMNS)
    byol = table[table["method"] == "byol"].set_index("transform")
    assert list(byol.index) == ["flip", "color", "blur"]  # AUGMENT_TRANSFORMS order
    assert set(byol["batch_size"]) == {256}
    row = byol.loc["color"]
    diffs = np.array(NO_COLOR) - np.array([B0, B1, B2])
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
    assert row["ci"] == "paired" and (row["n_baseline"], row["n_variant"]) == (3, 3)
    assert row["delta"] == pytest.approx(diffs.mean())
    assert (row["baseline_mean"], row["variant_mean"]) == pytest.approx((np.mean([B0, B1, B2]), np.mean(NO_COLOR)))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    ci = stats.ttest_rel(NO_COLOR, [B0, B1, B2]).confidence_interval(0.95)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))


def test_drop_one_welch_ci_when_the_seeds_differ_and_none_for_one_seed() -> None:
    table = AB.drop_one_table(drop_one_runs(), baseline=BASE, protocol=PROTO, reference=table17())
    byol = table[table["method"] == "byol"].set_index("transform")
    flip = byol.loc["flip"]
    base = [B0, B1, B2]
    assert flip["ci"] == "Welch" and (flip["n_baseline"], flip["n_variant"]) == (3, 2)
    assert flip["delta"] == pytest.approx(np.mean(list(NO_FLIP.values())) - np.mean(base))
    ci = stats.ttest_ind(list(NO_FLIP.values()), base, equal_var=False).confidence_interval(0.95)
    assert (flip["ci_low"], flip["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert AB.welch_ci(list(NO_FLIP.values()), base) == pytest.approx((ci.low, ci.high))
    blur = byol.loc["blur"]
    assert blur["ci"] == "none" and math.isnan(blur["ci_low"]) and math.isnan(blur["ci_high"])
    assert blur["delta"] == pytest.approx(NO_BLUR[0] - np.mean(base))


def test_drop_one_published_delta_picks_table_17_rows() -> None:
    table = AB.drop_one_table(drop_one_runs(), baseline=BASE, protocol=PROTO, reference=table17())
    pub = table.set_index(["method", "transform"])
    assert pub.loc[("byol", "color"), "published_delta"] == pytest.approx(63.4 - 72.5)  # not Other paper's
    assert "BYOL paper Table 17" in pub.loc[("byol", "color"), "published_source"]
    assert pub.loc[("byol", "blur"), "published_delta"] == pytest.approx(71.2 - 72.5)  # not "in T' only"
    assert math.isnan(pub.loc[("byol", "flip"), "published_delta"])  # only a top5 row and an unpaired row
    assert pub.loc[("byol", "flip"), "published_source"] == ""
    assert pub.loc[("simclr", "color"), "published_delta"] == pytest.approx(45.7 - 67.9)
    simclr = pub.loc[("simclr", "color")]
    assert simclr["ci"] == "paired" and simclr["delta"] == pytest.approx(-9.5)  # (60-70, 62-71)
    none = AB.drop_one_table(drop_one_runs(), baseline=BASE, protocol=PROTO, reference=None)
    assert none["published_delta"].isna().all()


def test_drop_one_markdown() -> None:
    table = AB.drop_one_table(drop_one_runs(), baseline=BASE, protocol=PROTO, reference=table17())
    md = AB.drop_one_markdown(table)
    lines = md.splitlines()
    assert lines[0].startswith("| method") and "Δ [95 % CI]" in lines[0] and len(lines) == 2 + len(table)
    color = next(line for line in lines if "| color" in line and "byol" in line)
    assert "-9.67 [" in color and "| paired" in color and "-9.1" in color
    assert any("| 2 vs 3" in line for line in lines)  # Welch: variant vs baseline seeds


def test_drop_one_errors() -> None:
    runs = drop_one_runs()
    with pytest.raises(SSLBenchError, match="several protocols"):
        AB.drop_one_table(runs, baseline=BASE)
    with pytest.raises(SSLBenchError, match="no-<t>") as info:
        AB.drop_one_table(runs, baseline="byol-small", protocol=PROTO)
    assert "axes.augment" in str(info.value)
    without_baseline = runs[runs["augment"] != BASE]
    with pytest.raises(SSLBenchError, match="none has runs with augment 'fmnist-quick'"):
        AB.drop_one_table(without_baseline, baseline=BASE, protocol=PROTO)
    with pytest.raises(SSLBenchError, match="no column"):
        AB.drop_one_table(runs.drop(columns=["augment"]), baseline=BASE, protocol=PROTO)


# ------------------------------------------------------------------------------------------------
# Batch size

BATCHES = (64, 128, 256)
BS_TOP1 = {"byol": {64: 80.0, 128: 82.0, 256: 83.0}, "simclr": {64: 70.0, 128: 74.0, 256: 77.0}}
SEED_OFFSETS = (-0.5, 0.0, 0.5)  # mean 0: the means are BS_TOP1


def batch_runs(simclr_seeds: int = 3) -> pd.DataFrame:
    rows = []
    for method, b in itertools.product(BS_TOP1, BATCHES):
        seeds = 3 if method == "byol" else simclr_seeds
        offsets = SEED_OFFSETS if seeds == 3 else (-0.5, 0.5)
        rows += [run(method, b, s, BS_TOP1[method][b] + offsets[s]) for s in range(seeds)]
    rows += [run("byol", 128, s, 10.0, f"{BASE}-no-color") for s in range(3)]  # an ablation: left out
    return frame(rows + baselines())


def table16() -> pd.DataFrame:
    rows = [ref_row("byol", v, ablation="batch_size", batch_size=b, source="BYOL paper Table 16")
            for b, v in ((64, 59.7), (128, 69.6), (256, 71.8), (512, 72.2))]
    rows += [ref_row("simclr", v, ablation="batch_size", batch_size=b, source="BYOL paper Table 16",
                     variant="BYOL reproduction (repro)", reported_by="BYOL paper")
             for b, v in ((64, 59.2), (128, 63.6), (256, 64.3), (512, 66.5))]
    rows += [ref_row("simclr", v, ablation="batch_size", batch_size=b, source="SimCLR paper Table B.1",
                     variant="linear LR scaling", epochs=100, protocol=PROTO)  # more points, same protocol
             for b, v in ((64, 1.0), (128, 2.0), (256, 3.0), (512, 4.0), (1024, 5.0))]
    rows += [ref_row("byol", 99.0, ablation="batch_size", batch_size=128, metric="top5",
                     source="BYOL paper Table 16")]  # another metric
    rows += [ref_row("mocov2", 60.0, ablation="batch_size", batch_size=b, source="X") for b in (128, 256)]
    return reference(rows)  # fmt: skip


def _lines(ax: Any) -> dict[str, tuple[list[float], list[float]]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()
            if not line.get_label().startswith("_")}  # fmt: skip


def test_batch_size_figure_overlays_table_16_and_relative_changes() -> None:
    fig, caption = AB.batch_size_figure(batch_runs(), protocol=PROTO, reference=table16())
    assert isinstance(fig, Figure)
    ax_abs, ax_rel = fig.axes[:2]
    assert ax_abs.get_xscale() == "log" and ax_abs.xaxis.get_scale() == "log"
    lines = _lines(ax_rel)
    assert set(lines) == {"byol measured", "byol published", "simclr measured", "simclr published"}
    # Relative to 256, the largest batch size all four curves share.
    for method in BS_TOP1:
        xs, ys = lines[f"{method} measured"]
        assert xs == list(BATCHES)
        assert ys == pytest.approx([BS_TOP1[method][b] - BS_TOP1[method][256] for b in BATCHES])
    xs, ys = lines["simclr published"]
    assert xs == [64, 128, 256, 512] and ys == pytest.approx([59.2 - 64.3, 63.6 - 64.3, 0.0, 66.5 - 64.3])
    assert "3 seeds per point" in caption and "final-epoch" in caption and PROTO in caption and "top1" in caption
    assert "BYOL paper Table 16" in caption and "chosen over 1 other published curve" in caption
    assert "SimCLR paper Table B.1" not in caption
    assert "batch size 256, the largest batch size all curves share" in caption
    assert "3 run(s) of other configurations" in caption  # the no-color runs at 128
    assert "random-init" not in caption and "raw-pixels" not in caption


def test_batch_size_figure_without_reference_and_uneven_seeds() -> None:
    fig, caption = AB.batch_size_figure(batch_runs(simclr_seeds=2), protocol=PROTO, reference=None)
    assert "2–3 seeds per point" in caption and "No published batch-size curve for byol, simclr" in caption
    lines = _lines(fig.axes[1])
    assert set(lines) == {"byol measured", "simclr measured"}
    assert lines["simclr measured"][1] == pytest.approx([-7.0, -3.0, 0.0])  # seeds ±0.5: the means


def test_batch_size_figure_needs_two_batch_sizes() -> None:
    one = frame([run("byol", 256, s, 80.0 + s) for s in range(3)])
    with pytest.raises(SSLBenchError, match="two batch sizes"):
        AB.batch_size_figure(one)
    with pytest.raises(SSLBenchError, match="No trained runs"):
        AB.batch_size_figure(frame(baselines()))


# ------------------------------------------------------------------------------------------------
# Pairwise heatmap

PAIRS = {"crop": (60.0, 62.0), "color": (30.0, 31.0), "crop+color": (75.0, 77.0), "color+crop": (79.0,),
         "flip+crop": (64.0, 65.0), "flip": (20.0, 22.0)}  # fmt: skip


def pair_runs() -> pd.DataFrame:
    rows = [run("byol", 256, s, v, f"{BASE}-only-{name}") for name, values in PAIRS.items()
            for s, v in enumerate(values)]
    rows += [run("simclr", 256, 0, 40.0, f"{BASE}-only-crop+color")]
    rows += [run("byol", 256, s, 85.0 + s, BASE) for s in range(2)]
    rows += [run("byol", 256, 0, 1.0, f"{BASE}-only-crop+rotate")]  # not a transform: ignored
    return frame(rows + baselines())  # fmt: skip


def test_pairwise_matrix_equals_hand_computed_means() -> None:
    matrices = AB.pairwise_matrices(pair_runs(), base=BASE)
    assert set(matrices) == {"byol", "simclr"}
    byol = matrices["byol"]
    assert list(byol.index) == list(byol.columns) == ["crop", "flip", "color"]
    assert byol.loc["crop", "crop"] == pytest.approx(61.0)
    assert byol.loc["color", "color"] == pytest.approx(30.5)
    assert byol.loc["flip", "flip"] == pytest.approx(21.0)
    both = np.mean([75.0, 77.0, 79.0])  # crop+color and color+crop are one recipe
    assert byol.loc["crop", "color"] == byol.loc["color", "crop"] == pytest.approx(both)
    assert byol.loc["crop", "flip"] == byol.loc["flip", "crop"] == pytest.approx(64.5)
    assert math.isnan(byol.loc["flip", "color"])
    simclr = matrices["simclr"]
    assert simclr.loc["crop", "color"] == 40.0 and int(simclr.notna().to_numpy().sum()) == 2


def test_pairwise_heatmap_annotates_the_lower_triangle() -> None:
    fig, caption = AB.pairwise_heatmap(pair_runs(), base=BASE)
    byol_ax = next(ax for ax in fig.axes if ax.get_title() == "byol")
    texts = sorted(float(t.get_text()) for t in byol_ax.texts)
    assert texts == sorted([61.0, 30.5, 21.0, round(np.mean([75.0, 77.0, 79.0]), 1), 64.5])
    assert "1–3 seeds per cell" in caption and "final-epoch" in caption and PROTO in caption
    assert "full 'fmnist-quick' recipe: byol 85.5" in caption
    with pytest.raises(SSLBenchError, match="only-<a>"):
        AB.pairwise_heatmap(pair_runs(), base="byol")


# ------------------------------------------------------------------------------------------------
# Compute and training curves (by hand)


def test_compute_figure_device_hours() -> None:
    rows = []
    for b, s in itertools.product((128, 256), range(2)):
        rows.append(run("byol", b, s, 80.0 + s + b / 128, **{
            AB.WALL_TIME_COLUMN: 3600.0 * b / 128 + 360.0 * s, AB.WORLD_SIZE_COLUMN: "2" if b == 256 else None,
            AB.DEVICE_COLUMN: "cuda:0"}))  # fmt: skip
    fig, caption = AB.compute_figure(frame(rows + baselines()))
    container = fig.axes[0].containers[0]  # errorbar: (data line, caps, bars)
    assert container.get_label() == "byol"
    line = container[0]
    # world size 1 when absent (b=128), 2 at b=256; x = mean device-hours over the seeds
    assert list(line.get_xdata()) == pytest.approx([1.05, 2 * 2.05])
    assert list(line.get_ydata()) == pytest.approx([81.5, 82.5])
    assert fig.axes[0].get_xscale() == "log"
    assert "2 seeds per point" in caption and "cuda:0" in caption and "device-hours" in caption
    with pytest.raises(SSLBenchError, match="attach_pretrain"):
        AB.compute_figure(frame([run("byol", 128, 0, 80.0)]))


def test_training_curves_mean_per_epoch_through_parent_ids() -> None:
    evals = frame([run("byol", 128, s, 80.0, parent=f"pre{s}") for s in range(3)]
                  + [run("simclr", 128, 0, 70.0, parent="pre9")] + baselines())  # fmt: skip
    history = pd.DataFrame(
        [(f"pre{s}", T.METRIC_TRAIN_LOSS, e, 4.0 - e + s) for s in range(3) for e in (1, 2, 3)]
        + [("pre9", T.METRIC_TRAIN_LOSS, e, 9.0) for e in (1, 2, 3)]
        + [("pre0", T.METRIC_TRAIN_LR, 1, 0.1), ("other", T.METRIC_TRAIN_LOSS, 1, 100.0)],
        columns=list(AB.HISTORY_COLUMNS),
    )
    fig, caption = AB.training_curves_figure(history, evals)
    byol_ax = next(ax for ax in fig.axes if ax.get_title() == "byol")
    mean = byol_ax.get_lines()[0]
    assert list(mean.get_xdata()) == [1, 2, 3] and list(mean.get_ydata()) == pytest.approx([4.0, 3.0, 2.0])
    assert "1–3 seeds per line" in caption and "train/loss" in caption and "no evaluation protocol" in caption
    with pytest.raises(SSLBenchError, match="history"):
        AB.training_curves_figure(history, evals, metric="train/nope")


# ------------------------------------------------------------------------------------------------
# MLflow histories and the report


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[tuple[str, int, int], str]]:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    ids: dict[tuple[str, int, int], str] = {}
    for method, b, seed in itertools.product(("byol", "simclr"), (128, 256), (0, 1)):
        tags = {T.TAG_KIND: T.KIND_PRETRAIN, T.TAG_METHOD: method, T.TAG_AUGMENT: BASE,
                T.TAG_DATASET: "fashion-mnist", T.TAG_BACKBONE: "small-cnn", T.TAG_BATCH_SIZE: str(b),
                T.TAG_EPOCHS: "3", T.TAG_SEED: str(seed), T.TAG_DEVICE: "cpu"}  # fmt: skip
        with T.TrackedRun(run_name=T.pretrain_run_name(f"{method}-fashion-mnist", seed, batch_size=b), tags=tags,
                          tracking_uri=uri) as tracked:  # fmt: skip
            tracked.log_params(T.flatten({"world_size": 1}, prefix=T.DERIVED_PARAM_PREFIX))
            for epoch in (1, 2, 3):
                tracked.log_metrics({T.METRIC_TRAIN_LOSS: 5.0 - epoch + seed}, step=epoch)
            tracked.log_metrics({T.METRIC_FINAL_WALL_TIME_S: 36.0 * b / 128})
            ids[(method, b, seed)] = tracked.run_id
    return uri, ids


def test_load_histories(store: tuple[str, dict[tuple[str, int, int], str]], tmp_path: Path) -> None:
    uri, ids = store
    first = ids[("byol", 128, 1)]
    hist = AB.load_histories([first, first], [T.METRIC_TRAIN_LOSS, T.METRIC_TRAIN_LR], tracking_uri=uri)
    assert list(hist.columns) == list(AB.HISTORY_COLUMNS)
    assert hist.to_records(index=False).tolist() == [(first, T.METRIC_TRAIN_LOSS, e, 5.0 - e + 1) for e in (1, 2, 3)]
    empty = AB.load_histories([first], [T.METRIC_TRAIN_LOSS], tracking_uri=f"sqlite:///{tmp_path / 'none.db'}")
    assert empty.empty and list(empty.columns) == list(AB.HISTORY_COLUMNS)
    assert not (tmp_path / "none.db").exists()


def test_write_ablation_report(store: tuple[str, dict[tuple[str, int, int], str]], tmp_path: Path) -> None:
    uri, ids = store
    rows = [run(m, b, s, 80.0 + b / 128 + s + (m == "byol"), parent=pid) for (m, b, s), pid in ids.items()]
    rows += [run("byol", 256, s, 70.0 + s, f"{BASE}-no-color", parent=ids[("byol", 256, s)]) for s in (0, 1)]
    evals = frame(rows + baselines())
    pretrains = load_runs(tracking_uri=uri, kind=T.KIND_PRETRAIN)
    assert len(attach_pretrain(evals, pretrains)) == len(evals)
    paths = AB.write_ablation_report(evals, pretrains, tmp_path / "out", tracking_uri=uri,
                                     reference=table16())  # fmt: skip
    names = set(paths)
    for stem in (f"batch-size_{PROTO}", f"compute_{PROTO}", "training-curves"):
        assert {f"{stem}.png", f"{stem}.svg", f"{stem}.txt"} <= names, names
    assert paths[f"batch-size_{PROTO}.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[f"batch-size_{PROTO}.svg"].read_text().lstrip().startswith("<?xml")
    assert not any(n.startswith("pairwise") for n in names)
    assert f"drop-one_{PROTO}.csv" in names
    md = paths["ablation.md"].read_text()
    assert f"![Accuracy against batch size](batch-size_{PROTO}.png)" in md
    assert "*Skipped: no runs with an augment '<recipe>-only-<a>[+<b>]'" in md  # never an empty plot
    assert "| byol   | 256        | color" in md and "2 seeds per recipe" in md
    caption = paths[f"batch-size_{PROTO}.txt"].read_text()
    assert caption in md.replace("**Figure 1.** ", "") + "\n"
    assert "2 seeds per point" in caption and "final-epoch" in caption and "BYOL paper Table 16" in caption
    assert "2 seeds per line" in paths["training-curves.txt"].read_text()
    compute = paths[f"compute_{PROTO}.txt"].read_text()
    assert "2 seeds per point" in compute and "cpu" in compute

    # Nothing but one batch size and no pretraining runs: each figure says why it is missing.
    one = frame([run("byol", 256, s, 80.0 + s) for s in range(2)])
    paths = AB.write_ablation_report(one, pd.DataFrame(), tmp_path / "one", reference=pd.DataFrame())
    assert set(paths) == {"ablation.md"}
    md = paths["ablation.md"].read_text()
    assert md.count("*Skipped:") == 5
    assert "two batch sizes" in md and "pretraining cost is unknown" in md and "No pretraining runs" in md
    with pytest.raises(SSLBenchError, match="No evaluation runs"):
        AB.write_ablation_report(frame(baselines()), pd.DataFrame(), tmp_path / "none", reference=pd.DataFrame())
