"""Ablation analysis from the tags of sweep runs: batch size, augmentations, training curves, compute.

A sweep that varies ``batch_size`` or ``augment`` (named derived recipes such as
``fmnist-quick-no-color`` or ``fmnist-quick-only-crop+color``, see
:func:`sslbench.benchmark.augment.get_augment_recipe`) leaves every run tagged with the value it
used, so the analysis needs nothing but the run frames:

- :func:`batch_size_figure`: accuracy against batch size per method (log2 axis) with the
  published curve overlaid where the reference table has one (BYOL Table 16: BYOL and SimCLR
  repro), and a second panel of changes relative to a common batch size, since ImageNet and
  small-dataset accuracies are not comparable in absolute terms;
- :func:`drop_one_table`: the change from dropping one transform (``<baseline>-no-<t>``), with a
  paired or Welch t interval and the published change (BYOL Table 17);
- :func:`pairwise_heatmap`: accuracy of ``<base>-only-<a>+<b>`` recipes (SimCLR Fig. 5 style);
- :func:`training_curves_figure`: a per-epoch training metric (from :func:`load_histories`);
- :func:`compute_figure`: accuracy against pretraining device-hours;
- :func:`write_ablation_report`: all of them as PNG + SVG with captions, and ``ablation.md``.

Everything but :func:`load_histories` (and the report, which calls it) is a pure function of
DataFrames shaped like :func:`sslbench.results.aggregate.load_runs` gives them, so tests build
them by hand. Conventions follow :mod:`sslbench.results.plots`: :class:`~matplotlib.figure.Figure`
objects (no ``pyplot`` state), mean ± 95 % Student-t interval over seeds, untrained baselines
(random-init, raw-pixels: batch size 0, augment ``none``) left out of method curves, and an
:class:`SSLBenchError` with a fix when there is nothing to draw. All accuracies are the
evaluations' final-epoch numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator
from scipy import stats

from sslbench.benchmark.augment import AUGMENT_TRANSFORMS
from sslbench.benchmark.errors import SSLBenchError
from sslbench.results import tracking as T
from sslbench.results.aggregate import PRETRAIN_PREFIX, attach_pretrain, device_hours
from sslbench.results.plots import save_figure, seed_counts, t_ci95
from sslbench.results.stats import mean_ci, paired_comparison
from sslbench.results.tables import to_markdown

__all__ = [
    "DROP_ONE_COLUMNS",
    "HISTORY_COLUMNS",
    "batch_size_figure",
    "compute_figure",
    "drop_one_markdown",
    "drop_one_table",
    "load_histories",
    "pairwise_heatmap",
    "pairwise_matrices",
    "training_curves_figure",
    "welch_ci",
    "write_ablation_report",
]

#: Methods that are untrained baselines, never a curve of their own.
BASELINE_METHODS = T.BASELINE_METHODS
BASELINE_AUGMENT = "none"
#: The configuration columns (besides method, batch size and seed) that tell series apart.
CONFIG_COLUMNS: tuple[str, ...] = (T.TAG_DATASET, T.TAG_BACKBONE, T.TAG_EPOCHS, T.TAG_AUGMENT)
#: Columns of :func:`drop_one_table`.
DROP_ONE_COLUMNS: tuple[str, ...] = (
    "method", "dataset", "backbone", "batch_size", "epochs", "protocol", "transform", "augment",
    "baseline_mean", "variant_mean", "delta", "ci_low", "ci_high", "ci", "n_baseline", "n_variant",
    "published_delta", "published_source",
)  # fmt: skip
#: Columns of :func:`load_histories`.
HISTORY_COLUMNS: tuple[str, ...] = ("run_id", "metric", "step", "value")
WALL_TIME_COLUMN = PRETRAIN_PREFIX + T.METRIC_FINAL_WALL_TIME_S
WORLD_SIZE_COLUMN = PRETRAIN_PREFIX + "param." + T.DERIVED_PARAM_PREFIX + "world_size"
DEVICE_COLUMN = PRETRAIN_PREFIX + T.TAG_DEVICE
# Reference-table spellings (column `augment`, "-t") of each transform's removal.
_REFERENCE_REMOVAL: dict[str, frozenset[str]] = {
    "crop": frozenset({"-crop"}),
    "flip": frozenset({"-flip"}),
    "color": frozenset({"-color", "-colour"}),
    "jitter": frozenset({"-jitter", "-colorjitter", "-colourjitter", "-color-jitter"}),
    "grayscale": frozenset({"-grayscale", "-greyscale", "-gray", "-grey"}),
    "blur": frozenset({"-blur"}),
    "solarize": frozenset({"-solarize", "-solarise"}),
}
_CONFIDENCE = 0.95


# --------------------------------------------------------------------------------------------
# Selecting runs
# --------------------------------------------------------------------------------------------


def _method_order(methods: Iterable[str]) -> list[str]:
    return sorted(set(methods))


def _trained(data: pd.DataFrame) -> pd.DataFrame:
    """``data`` without the untrained baselines (batch size <= 0, random-init, raw-pixels)."""
    keep = ~data[T.TAG_METHOD].astype(str).isin(BASELINE_METHODS)
    if T.TAG_BATCH_SIZE in data.columns:
        keep &= ~(pd.to_numeric(data[T.TAG_BATCH_SIZE], errors="coerce") <= 0).fillna(False)
    if T.TAG_AUGMENT in data.columns:
        keep &= data[T.TAG_AUGMENT].astype(str) != BASELINE_AUGMENT
    return data[keep.astype(bool)]


def _prepare(
    runs: pd.DataFrame, metric: str, protocol: str | None, need: Sequence[str], what: str
) -> tuple[pd.DataFrame, str]:
    """The trained runs of one protocol that have ``metric`` and the ``need`` columns.

    Returns:
        The rows (``metric`` as float, method/augment as str) and the protocol's name.

    Raises:
        SSLBenchError: a missing column, several protocols and none chosen, or no rows left.
    """
    missing = [c for c in (metric, T.TAG_METHOD, T.TAG_PROTOCOL, *need) if c not in runs.columns]
    if missing:
        raise SSLBenchError(
            f"Cannot draw the {what}: the runs have no column(s) {missing}.",
            "Pass evaluation runs as `load_runs(kind='eval')` gives them, with this metric logged.",
        )
    data = runs.copy()
    if protocol is not None:
        data = data[data[T.TAG_PROTOCOL].astype(str) == protocol]
    data[metric] = pd.to_numeric(data[metric], errors="coerce").astype(float)
    data = data.dropna(subset=[metric, *need])
    data = _trained(data)
    protocols = sorted(data[T.TAG_PROTOCOL].dropna().astype(str).unique())
    if len(protocols) > 1:
        raise SSLBenchError(
            f"The runs for the {what} hold several protocols ({', '.join(protocols)}); one figure "
            "must not mix them.",
            "Pass protocol=... (`--protocol`).",
        )
    if data.empty or not protocols:
        where = f" under protocol '{protocol}'" if protocol else ""
        raise SSLBenchError(
            f"No trained runs with metric '{metric}'{where} for the {what}.",
            "Run the sweep's evaluations first, or check the protocol and metric names.",
        )
    data[T.TAG_METHOD] = data[T.TAG_METHOD].astype(str)
    if T.TAG_AUGMENT in data.columns:
        data[T.TAG_AUGMENT] = data[T.TAG_AUGMENT].astype(str)
    return data, protocols[0]


def _config_columns(data: pd.DataFrame, exclude: Sequence[str] = ()) -> list[str]:
    return [c for c in CONFIG_COLUMNS if c in data.columns and c not in exclude]


def _main_series(data: pd.DataFrame, along: str, keys: Sequence[str]) -> tuple[pd.DataFrame, int]:
    """Per method, the runs of the one configuration (``keys``) with the most distinct ``along``
    values (then the most runs), so that e.g. augmentation variants at one batch size do not mix
    into the batch-size curve.

    Returns:
        The kept rows and the number of rows left out.
    """
    kept: list[pd.DataFrame] = []
    if not keys:
        return data, 0
    for _, rows in data.groupby(T.TAG_METHOD, sort=True):
        best: tuple[int, int] | None = None
        chosen = rows
        for _, group in rows.groupby(list(keys), dropna=False, sort=True):
            score = (int(group[along].nunique()), len(group))
            if best is None or score > best:
                best, chosen = score, group
        kept.append(chosen)
    out = pd.concat(kept)
    return out, len(data) - len(out)


def _describe(data: pd.DataFrame, keys: Sequence[str]) -> str:
    """``"dataset fashion-mnist, backbone small-cnn, 20 epochs, augment fmnist-quick"``, with a
    per-method list where methods differ."""
    labels = {T.TAG_DATASET: "dataset", T.TAG_BACKBONE: "backbone", T.TAG_EPOCHS: "epochs",
              T.TAG_AUGMENT: "augment", T.TAG_BATCH_SIZE: "batch size"}  # fmt: skip
    parts = []
    for key in keys:
        per_method = data.groupby(T.TAG_METHOD)[key].agg(lambda s: ", ".join(sorted({_text(v) for v in s})))
        values = set(per_method)
        label = labels.get(key, key)
        if len(values) == 1:
            value = values.pop()
            epochs = f"{value} epoch" + ("" if value == "1" else "s")
            parts.append(epochs if key == T.TAG_EPOCHS else f"{label} {value}")
        else:
            parts.append(f"{label} " + "; ".join(f"{m}: {v}" for m, v in per_method.items()))
    return ", ".join(parts)


def _text(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "—"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _opt(value: Any) -> str:
    """``value`` as text, "" when missing."""
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else _text(value)


def _palette(methods: Sequence[str]) -> dict[str, Any]:
    return dict(zip(methods, sns.color_palette(n_colors=max(1, len(methods))), strict=False))


def _log2_axis(ax: Axes, values: Iterable[float]) -> None:
    ticks = sorted({float(v) for v in values})
    ax.set_xscale("log", base=2)
    if ticks:
        ax.set_xticks(ticks, [str(int(v)) for v in ticks])
    ax.xaxis.set_minor_locator(NullLocator())


def _summary(data: pd.DataFrame, keys: Sequence[str], metric: str) -> pd.DataFrame:
    """Mean, 95 % t-interval (lo = hi = mean for one seed) and n per group."""
    rows = []
    for key, group in data.groupby(list(keys), sort=True):
        ci = mean_ci(group[metric].to_numpy())
        lo, hi = (ci.lo, ci.hi) if ci.n > 1 else (ci.mean, ci.mean)
        rows.append((*(key if isinstance(key, tuple) else (key,)), ci.mean, lo, hi, ci.n))
    return pd.DataFrame(rows, columns=[*keys, "mean", "lo", "hi", "n"])


# --------------------------------------------------------------------------------------------
# Accuracy against batch size
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Curve:
    """One published batch-size curve: batch size -> value."""

    points: pd.Series
    label: str
    others: int  # other published curves of the method that were not chosen


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name in frame.columns:
        return frame[name].astype(object).where(frame[name].notna(), "").astype(str)
    return pd.Series("", index=frame.index, dtype=str)


def _published_curves(
    reference: pd.DataFrame | None, methods: Sequence[str], metric: str, protocol: str
) -> dict[str, _Curve]:
    """Per method, the published batch-size curve to overlay (rows with ablation == batch_size).

    A curve is the rows that share method, paper, source, variant, dataset, backbone, epochs,
    protocol and reporter, with at least two batch sizes. Preferred: BYOL Table 16 (BYOL and
    SimCLR repro, 300 epochs), then the same protocol as the measurement, then more points.
    """
    if reference is None or reference.empty or "ablation" not in reference.columns:
        return {}
    ref = reference[
        (_column(reference, "ablation") == "batch_size")
        & _column(reference, "method").isin(methods)
        & (_column(reference, "metric") == metric)
    ].copy()
    ref["batch_size"] = pd.to_numeric(ref["batch_size"], errors="coerce")
    ref["value"] = pd.to_numeric(ref["value"], errors="coerce")
    ref = ref.dropna(subset=["batch_size", "value"])
    keys = ["paper", "source", "variant", "dataset", "backbone", "epochs", "protocol", "reported_by"]
    for k in keys:
        ref[k] = _column(ref, k)
    curves: dict[str, _Curve] = {}
    for method, rows in ref.groupby("method", sort=True):
        candidates = []
        for key, group in rows.groupby(keys, sort=True):
            info = dict(zip(keys, key, strict=True))
            points = group.groupby("batch_size")["value"].mean().sort_index()
            if len(points) < 2:
                continue
            text = f"{info['source']} {info['reported_by']}".lower()
            byol_t16 = ("byol" in text and "table 16" in text) or (
                "byol" in info["reported_by"].lower() and info["epochs"] == "300"
            )
            score = (byol_t16, info["protocol"] == protocol, len(points))
            variant = f", {info['variant']}" if info["variant"] else ""
            label = (
                f"{info['source']}{variant} ({info['dataset']}, {info['backbone']}, "
                f"{info['epochs']} epochs, {info['protocol']} {metric}; reported by "
                f"{info['reported_by']})"
            )
            candidates.append((score, label, points))
        if candidates:
            best = max(candidates, key=lambda c: c[0])  # first of equals: sorted keys
            curves[str(method)] = _Curve(best[2], best[1], len(candidates) - 1)
    return curves


def _anchors(
    measured: dict[str, pd.Series], published: dict[str, _Curve]
) -> tuple[dict[tuple[str, str], float], str]:
    """The batch size each curve is taken relative to, and a sentence that says which.

    The largest batch size every drawn curve has; without one, per method the largest that its
    measured and published curves share; else each curve's own largest.
    """
    sets = [set(s.index) for s in measured.values()] + [set(c.points.index) for c in published.values()]
    common = set.intersection(*sets) if sets else set()
    out: dict[tuple[str, str], float] = {}
    if common:
        b = max(common)
        for m in measured:
            out[(m, "measured")] = b
        for m in published:
            out[(m, "published")] = b
        return out, f"its value at batch size {int(b)}, the largest batch size all curves share"
    notes = []
    for m, s in measured.items():
        shared = set(s.index) & set(published[m].points.index) if m in published else set()
        b = max(shared) if shared else max(s.index)
        out[(m, "measured")] = b
        if m in published:
            out[(m, "published")] = b if shared else max(published[m].points.index)
        notes.append(f"{m}: {int(b)}" if shared or m not in published else f"{m}: its largest")
    return out, (
        "its value at the largest batch size that the method's measured and published curves "
        f"share, else at the curve's own largest ({'; '.join(notes)})"
    )


def batch_size_figure(
    runs: pd.DataFrame,
    *,
    metric: str = "top1",
    protocol: str | None = None,
    reference: pd.DataFrame | None = None,
) -> tuple[Figure, str]:
    """Accuracy against pretraining batch size per method, with published curves overlaid.

    Left panel: the measured mean over seeds with 95 % t-interval bars (solid) and, where
    ``reference`` has a batch-size curve for the method, the published values (dashed, same
    colour); BYOL Table 16 is preferred (it has both BYOL and SimCLR repro at 300 epochs). Right
    panel: each curve minus its own value at a common batch size, because absolute ImageNet and
    small-dataset accuracies are not comparable. Per method only the configuration (dataset,
    backbone, epochs, augment) with the most batch sizes is drawn.

    Args:
        runs: evaluation runs (``load_runs(kind="eval")``): method, batch_size, seed, protocol,
            the config columns and ``metric``.
        metric: the accuracy column.
        protocol: the protocol to draw; needed when the runs hold several.
        reference: the reference table (:func:`sslbench.results.reference.load_reference`);
            None or empty draws no published curves.

    Returns:
        The figure and its caption.

    Raises:
        SSLBenchError: no trained runs, or no method with two batch sizes.
    """
    data, proto = _prepare(runs, metric, protocol, [T.TAG_BATCH_SIZE], "batch-size figure")
    data[T.TAG_BATCH_SIZE] = data[T.TAG_BATCH_SIZE].astype(float)
    keys = _config_columns(data)
    data, left_out = _main_series(data, T.TAG_BATCH_SIZE, keys)
    if int(data.groupby(T.TAG_METHOD)[T.TAG_BATCH_SIZE].nunique().max()) < 2:
        raise SSLBenchError(
            f"No method has runs at two batch sizes under '{proto}', so there is no batch-size curve.",
            "Sweep a batch_size axis (e.g. `axes.batch_size = [128, 256, 512]`).",
        )
    methods = _method_order(data[T.TAG_METHOD])
    palette = _palette(methods)
    summary = _summary(data, [T.TAG_METHOD, T.TAG_BATCH_SIZE], metric)
    measured = {
        m: rows.set_index(T.TAG_BATCH_SIZE)["mean"] for m, rows in summary.groupby(T.TAG_METHOD)
    }
    published = _published_curves(reference, methods, metric, proto)
    anchors, anchor_text = _anchors(measured, published)

    fig = Figure(figsize=(11.5, 4.2), layout="constrained")
    ax_abs, ax_rel = fig.subplots(1, 2)
    sns.lineplot(data=data, x=T.TAG_BATCH_SIZE, y=metric, hue=T.TAG_METHOD, hue_order=methods,
                 palette=palette, estimator="mean", errorbar=t_ci95, err_style="bars",
                 marker="o", err_kws={"capsize": 3}, ax=ax_abs, legend=False)  # fmt: skip
    xs: set[float] = set(data[T.TAG_BATCH_SIZE])
    for m in methods:
        s = measured[m]
        ref_b = anchors[(m, "measured")]
        ax_rel.plot(s.index, s - s[ref_b], "-o", color=palette[m], label=f"{m} measured")
        if m in published:
            p = published[m].points
            xs |= set(p.index)
            ax_abs.plot(p.index, p.values, "--s", mfc="none", color=palette[m])
            pb = anchors[(m, "published")]
            ax_rel.plot(p.index, p - p[pb], "--s", mfc="none", color=palette[m], label=f"{m} published")
    for ax in (ax_abs, ax_rel):
        _log2_axis(ax, xs)
        ax.set_xlabel("pretraining batch size")
        ax.grid(alpha=0.3)
    ax_rel.axhline(0.0, color="0.5", lw=0.8)
    ax_abs.set_ylabel(f"{metric} (%)")
    ax_rel.set_ylabel(f"Δ {metric} (points)")
    ax_abs.set_title(f"{metric} ({proto}); dashed: published")
    ax_rel.set_title("change relative to a common batch size")
    ax_rel.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    seeds = seed_counts(data, [T.TAG_METHOD, T.TAG_BATCH_SIZE])
    config = _describe(data, keys)
    caption = (
        f"{metric} under protocol {proto} against pretraining batch size (log2 axis), per method. "
        f"Solid: measured, mean ± 95 % t-CI over seeds ({seeds} per point), final-epoch numbers; "
        f"{config}."
    )
    if left_out:
        caption += f" {left_out} run(s) of other configurations (e.g. augmentation variants) are left out."
    if published:
        sources = "; ".join(
            f"{m}: {c.label}" + (f", chosen over {c.others} other published curve(s)" if c.others else "")
            for m, c in sorted(published.items())
        )
        caption += f" Dashed: published curves ({sources})."
    missing = [m for m in methods if m not in published]
    if missing:
        caption += f" No published batch-size curve for {', '.join(missing)}."
    caption += (
        " Left: absolute values (published ImageNet numbers and these are not comparable); right: "
        f"each curve minus {anchor_text}."
    )
    fig.suptitle(f"{metric} vs batch size ({proto}) — {seeds} per point")
    return fig, caption


# --------------------------------------------------------------------------------------------
# Drop one augmentation
# --------------------------------------------------------------------------------------------


def _by_seed(rows: pd.DataFrame, metric: str) -> dict[int, float] | None:
    """seed -> metric, or None when a seed repeats (reruns) or is missing."""
    if T.TAG_SEED not in rows.columns:
        return None
    seeds = pd.to_numeric(rows[T.TAG_SEED], errors="coerce")
    if seeds.isna().any() or seeds.duplicated().any():
        return None
    return {int(s): float(v) for s, v in zip(seeds, rows[metric], strict=True)}


def welch_ci(a: Sequence[float], b: Sequence[float], confidence: float = _CONFIDENCE) -> tuple[float, float]:
    """The Welch t interval of ``mean(a) - mean(b)`` (unequal variances, Welch–Satterthwaite
    degrees of freedom); (NaN, NaN) when either side has fewer than two values.

    Args:
        a: one value per seed.
        b: one value per seed.
        confidence: the interval's coverage.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        return math.nan, math.nan
    delta = float(x.mean() - y.mean())
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(vx + vy)
    if se == 0:
        return delta, delta
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, df)) * se
    return delta - half, delta + half


def _delta(variant: pd.DataFrame, baseline: pd.DataFrame, metric: str) -> dict[str, Any]:
    """Mean change variant − baseline with its interval: paired over seeds when both sides have
    the same seeds, Welch otherwise."""
    va, ba = _by_seed(variant, metric), _by_seed(baseline, metric)
    out: dict[str, Any] = {
        "baseline_mean": float(baseline[metric].mean()),
        "variant_mean": float(variant[metric].mean()),
        "n_baseline": len(baseline),
        "n_variant": len(variant),
    }
    out["delta"] = out["variant_mean"] - out["baseline_mean"]
    if va is not None and ba is not None and set(va) == set(ba):
        cmp = paired_comparison(va, ba)
        out.update(ci_low=cmp.diff.lo, ci_high=cmp.diff.hi, ci="paired" if cmp.n > 1 else "none")
    else:
        lo, hi = welch_ci(variant[metric].to_numpy(), baseline[metric].to_numpy())
        out.update(ci_low=lo, ci_high=hi, ci="none" if math.isnan(lo) else "Welch")
    return out


def _published_delta(
    reference: pd.DataFrame | None, method: str, transform: str, metric: str
) -> tuple[float, str]:
    """(published change from removing ``transform``, its source) for ``method``; (NaN, "")
    when the reference table has no such pair of rows.

    Pairs a ``-<t>`` row with the ``baseline`` row of the same paper, source, dataset, backbone,
    epochs, protocol and reporter; prefers BYOL Table 17 and a removal row whose variant equals
    the baseline's (BYOL Table 17 also has "remove blur in T′ only" under ``-blur``).
    """
    if reference is None or reference.empty or "augment" not in reference.columns:
        return math.nan, ""
    ref = reference[
        (_column(reference, "ablation") == "augmentation")
        & (_column(reference, "method") == method)
        & (_column(reference, "metric") == metric)
    ]
    token = _column(ref, "augment").str.lower().str.replace(" ", "", regex=False)
    removals, baselines = ref[token.isin(_REFERENCE_REMOVAL[transform])], ref[token == "baseline"]
    keys = ["paper", "source", "dataset", "backbone", "epochs", "protocol", "reported_by"]
    best: tuple[tuple[bool, bool], float, str] | None = None
    for _, r in removals.iterrows():  # in table order: the first of equally good pairs wins
        for _, b in baselines.iterrows():
            if any(_opt(r.get(k)) != _opt(b.get(k)) for k in keys):
                continue
            rv, bv = _opt(r.get("variant")), _opt(b.get("variant"))
            score = ("table 17" in _opt(r.get("source")).lower(), rv == bv)
            note = f" ({rv})" if rv != bv and rv else ""
            source = f"{_opt(r.get('source'))}{note}, {_opt(r.get('dataset'))} {_opt(r.get('epochs'))} epochs"
            if best is None or score > best[0]:
                best = (score, float(r["value"]) - float(b["value"]), source)
    if best is None:
        return math.nan, ""
    return best[1], best[2]


def drop_one_table(
    runs: pd.DataFrame,
    *,
    baseline: str,
    metric: str = "top1",
    protocol: str | None = None,
    reference: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The change in accuracy from dropping one transform, per method (BYOL Table 17 style).

    For each method and configuration (dataset, backbone, batch size, epochs) that has runs with
    augment ``baseline`` and ``<baseline>-no-<t>``: Δ = mean(variant) − mean(baseline) over
    seeds, with a 95 % t interval that is paired over seeds (``ci == "paired"``,
    :func:`sslbench.results.stats.paired_comparison`) when both sides have the same seeds, and
    Welch's otherwise (``ci == "Welch"``, :func:`welch_ci`); ``"none"`` when a side has one seed.
    ``published_delta`` is the reference table's ``-<t>`` row minus its ``baseline`` row for the
    same method (BYOL Table 17 preferred), with ``published_source``.

    Args:
        runs: evaluation runs (``load_runs(kind="eval")``) with method, augment, seed, protocol.
        baseline: the full augmentation recipe's name, e.g. ``"fmnist-quick"``.
        metric: the accuracy column.
        protocol: the protocol; needed when the runs hold several.
        reference: the reference table, or None for no published column values.

    Returns:
        One row per method, configuration and dropped transform (columns
        :data:`DROP_ONE_COLUMNS`), sorted by method, configuration and transform order.

    Raises:
        SSLBenchError: no ``<baseline>-no-<t>`` runs, or none with baseline runs beside them.
    """
    data, proto = _prepare(runs, metric, protocol, [T.TAG_AUGMENT], "drop-one table")
    prefix = f"{baseline}-no-"
    variants = {f"{prefix}{t}": t for t in AUGMENT_TRANSFORMS}
    if not data[T.TAG_AUGMENT].isin(list(variants)).any():
        present = ", ".join(sorted(data[T.TAG_AUGMENT].unique()))
        raise SSLBenchError(
            f"No runs under '{proto}' with augment '{baseline}-no-<t>' (t in "
            f"{', '.join(AUGMENT_TRANSFORMS)}); the runs have augment {present}.",
            f"Sweep an augment axis, e.g. `axes.augment = [\"{baseline}\", \"{baseline}-no-color\", "
            f"\"{baseline}-no-crop\"]`, or pass the baseline the sweep used.",
        )
    config = [c for c in (T.TAG_DATASET, T.TAG_BACKBONE, T.TAG_BATCH_SIZE, T.TAG_EPOCHS) if c in data.columns]
    rows: list[dict[str, Any]] = []
    for key, group in data.groupby([T.TAG_METHOD, *config], dropna=False, sort=True):
        ident = dict(zip([T.TAG_METHOD, *config], key if isinstance(key, tuple) else (key,), strict=True))
        base_rows = group[group[T.TAG_AUGMENT] == baseline]
        if base_rows.empty:
            continue
        for augment, transform in variants.items():
            var_rows = group[group[T.TAG_AUGMENT] == augment]
            if var_rows.empty:
                continue
            pub, source = _published_delta(reference, str(ident[T.TAG_METHOD]), transform, metric)
            rows.append({**ident, "protocol": proto, "transform": transform, "augment": augment,
                         **_delta(var_rows, base_rows, metric), "published_delta": pub,
                         "published_source": source})  # fmt: skip
    if not rows:
        raise SSLBenchError(
            f"Runs with augment '{baseline}-no-<t>' exist under '{proto}', but none has runs with "
            f"augment '{baseline}' of the same method, dataset, backbone, batch size and epochs.",
            f"Add the baseline '{baseline}' to the sweep's augment axis.",
        )
    table = pd.DataFrame(rows)
    for col in DROP_ONE_COLUMNS:
        if col not in table.columns:
            table[col] = pd.NA
    return table[list(DROP_ONE_COLUMNS)].reset_index(drop=True)


def _signed(x: Any, digits: int = 2) -> str:
    return "" if x is None or pd.isna(x) else f"{float(x):+.{digits}f}"


def drop_one_markdown(table: pd.DataFrame, metric: str = "top1") -> str:
    """:func:`drop_one_table` as a Markdown table (via :func:`sslbench.results.tables.to_markdown`):
    method, batch size, dropped transform, the two means, Δ with its interval, the interval's
    kind, seeds, and the published Δ with its source.

    Args:
        table: the frame :func:`drop_one_table` returns.
        metric: the metric's name, for the headers.
    """
    out = pd.DataFrame({
        "method": table["method"],
        "batch size": table["batch_size"].map(_text),
        "dropped": table["transform"],
        f"{metric} baseline": table["baseline_mean"].map(lambda v: f"{v:.2f}"),
        f"{metric} without": table["variant_mean"].map(lambda v: f"{v:.2f}"),
        "Δ [95 % CI]": [
            _signed(d) + (f" [{_signed(lo)}, {_signed(hi)}]" if not pd.isna(lo) else "")
            for d, lo, hi in zip(table["delta"], table["ci_low"], table["ci_high"], strict=True)
        ],
        "CI": table["ci"],
        "seeds": [
            str(a) if a == b else f"{a} vs {b}"
            for a, b in zip(table["n_variant"], table["n_baseline"], strict=True)
        ],
        "published Δ": table["published_delta"].map(lambda v: _signed(v, 1)),
        "published source": table["published_source"].fillna(""),
    })  # fmt: skip
    return to_markdown(out)


def _drop_one_caption(table: pd.DataFrame, baseline: str, metric: str) -> str:
    proto = ", ".join(sorted(set(table["protocol"].astype(str))))
    counts = sorted({int(n) for n in (*table["n_variant"], *table["n_baseline"])})
    lo, hi = counts[0], counts[-1]
    seeds = f"{lo} seed" if hi == 1 else (f"{lo} seeds" if lo == hi else f"{lo}–{hi} seeds")
    kinds = sorted(set(table["ci"]))
    published = bool(table["published_delta"].notna().any())
    return (
        f"Drop one augmentation: Δ {metric} under protocol {proto} = mean of '{baseline}-no-<t>' − "
        f"mean of '{baseline}', over seeds ({seeds} per recipe), final-epoch numbers. 95 % t-CI: "
        "paired over the seeds when both recipes have the same seeds, Welch otherwise "
        f"(here: {', '.join(kinds)})."
        + (" Published Δ: the source's '-t' row minus its baseline (ImageNet; compare signs and "
           "ranks, not sizes)." if published else " No published Δ matches these methods and transforms.")
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Pairwise augmentation grid
# --------------------------------------------------------------------------------------------


def _only_pair(augment: str, base: str) -> tuple[str, str] | None:
    """``(a, b)`` in transform order for ``<base>-only-<a>[+<b>]`` (a == b for one transform)."""
    prefix = f"{base}-only-"
    if not augment.startswith(prefix):
        return None
    parts = augment[len(prefix):].split("+")
    if not 1 <= len(parts) <= 2 or any(p not in AUGMENT_TRANSFORMS for p in parts) or (
        len(parts) == 2 and parts[0] == parts[1]
    ):
        return None
    a, b = sorted(parts, key=AUGMENT_TRANSFORMS.index) if len(parts) == 2 else (parts[0], parts[0])
    return a, b


def _pairwise_data(
    runs: pd.DataFrame, base: str, metric: str, protocol: str | None
) -> tuple[pd.DataFrame, str, int, list[str]]:
    """The ``<base>-only-`` runs of one configuration per method, with ``_first``/``_second``
    (the transform pair) and ``_cell`` columns; the protocol; rows left out; the config keys."""
    data, proto = _prepare(runs, metric, protocol, [T.TAG_AUGMENT], "pairwise heatmap")
    pairs = data[T.TAG_AUGMENT].map(lambda a: _only_pair(a, base))
    only = data[pairs.notna()].copy()
    if only.empty:
        raise SSLBenchError(
            f"No runs under '{proto}' with augment '{base}-only-<a>' or '{base}-only-<a>+<b>'.",
            f"Sweep e.g. `axes.augment = [\"{base}-only-crop\", \"{base}-only-crop+color\", ...]`.",
        )
    only["_first"] = [p[0] for p in pairs[pairs.notna()]]
    only["_second"] = [p[1] for p in pairs[pairs.notna()]]
    keys = _config_columns(only, exclude=[T.TAG_AUGMENT])
    if T.TAG_BATCH_SIZE in only.columns:
        keys.append(T.TAG_BATCH_SIZE)
    only["_cell"] = only["_first"] + "+" + only["_second"]
    only, left_out = _main_series(only, "_cell", keys)
    return only, proto, left_out, keys


def pairwise_matrices(
    runs: pd.DataFrame, *, base: str, metric: str = "top1", protocol: str | None = None
) -> dict[str, pd.DataFrame]:
    """Per method, the mean accuracy of ``<base>-only-<a>+<b>`` (and ``<base>-only-<a>`` on the
    diagonal) as a symmetric transforms × transforms frame, NaN where there is no run.

    ``a+b`` and ``b+a`` name the same recipe and are pooled. Every matrix has the same rows and
    columns: the transforms that appear in any run, in :data:`AUGMENT_TRANSFORMS` order. Per
    method only the configuration (dataset, backbone, epochs, batch size) with the most cells is
    used.

    Args:
        runs: evaluation runs with method, augment, seed, protocol and ``metric``.
        base: the recipe the ``-only-`` names derive from.
        metric: the accuracy column.
        protocol: the protocol; needed when the runs hold several.

    Raises:
        SSLBenchError: no ``<base>-only-...`` runs.
    """
    only, _, _, _ = _pairwise_data(runs, base, metric, protocol)
    return _matrices(only, metric)


def _matrices(only: pd.DataFrame, metric: str) -> dict[str, pd.DataFrame]:
    present = set(only["_first"]) | set(only["_second"])
    axis = [t for t in AUGMENT_TRANSFORMS if t in present]
    out: dict[str, pd.DataFrame] = {}
    for method, rows in only.groupby(T.TAG_METHOD, sort=True):
        matrix = pd.DataFrame(
            np.nan, index=pd.Index(axis, name="first"), columns=pd.Index(axis, name="second")
        )
        for (a, b), cell in rows.groupby(["_first", "_second"]):
            matrix.loc[a, b] = matrix.loc[b, a] = float(cell[metric].mean())
        out[str(method)] = matrix
    return out


def pairwise_heatmap(
    runs: pd.DataFrame, *, base: str, metric: str = "top1", protocol: str | None = None
) -> tuple[Figure, str]:
    """An annotated heatmap per method of :func:`pairwise_matrices` (SimCLR Fig. 5 style).

    The lower triangle is shown (the matrix is symmetric: here both transforms apply to every
    view, unlike SimCLR Fig. 5 where the second one applies to one branch only); empty cells had
    no run. One colour scale for all panels.

    Args:
        runs: evaluation runs with method, augment, seed, protocol and ``metric``.
        base: the recipe the ``-only-`` names derive from.
        metric: the accuracy column.
        protocol: the protocol; needed when the runs hold several.

    Returns:
        The figure and its caption.

    Raises:
        SSLBenchError: no ``<base>-only-...`` runs.
    """
    only, proto, left_out, keys = _pairwise_data(runs, base, metric, protocol)
    matrices = _matrices(only, metric)
    values = np.concatenate([m.to_numpy().ravel() for m in matrices.values()])
    vmin, vmax = float(np.nanmin(values)), float(np.nanmax(values))
    n = len(matrices)
    side = 0.75 * len(next(iter(matrices.values()))) + 1.5
    fig = Figure(figsize=(side * n + 1.0, side), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for i, (ax, (method, matrix)) in enumerate(zip(axes, matrices.items(), strict=True)):
        mask = np.triu(np.ones(matrix.shape, dtype=bool), k=1) | matrix.isna().to_numpy()
        sns.heatmap(matrix, mask=mask, annot=True, fmt=".1f", cmap="viridis", vmin=vmin, vmax=vmax,
                    square=True, cbar=i == n - 1, cbar_kws={"label": f"{metric} (%)"}, ax=ax,
                    linewidths=0.5, linecolor="white")  # fmt: skip
        ax.set_title(method)
        ax.set_xlabel("second transform")
        ax.set_ylabel("first transform" if i == 0 else "")
    full = []
    if T.TAG_AUGMENT in runs.columns:
        try:
            data, _ = _prepare(runs, metric, proto, [T.TAG_AUGMENT], "pairwise heatmap")
        except SSLBenchError:
            data = pd.DataFrame()
        for method in matrices:
            rows = data[(data[T.TAG_METHOD] == method) & (data[T.TAG_AUGMENT] == base)] if len(data) else data
            mine = only[only[T.TAG_METHOD] == method]
            for key in (T.TAG_DATASET, T.TAG_BACKBONE, T.TAG_EPOCHS, T.TAG_BATCH_SIZE):  # same setting
                if len(rows) and key in rows.columns and key in mine.columns:
                    rows = rows[rows[key].isin(set(mine[key].dropna()))]
            if len(rows):
                full.append(f"{method} {rows[metric].mean():.1f}")
    seeds = seed_counts(only, [T.TAG_METHOD, "_cell"])
    caption = (
        f"{metric} under protocol {proto} of '{base}' reduced to one transform (diagonal, "
        f"'{base}-only-<a>') or two (below it, '{base}-only-<a>+<b>') in every view: mean over "
        f"seeds ({seeds} per cell), final-epoch numbers; "
        f"{_describe(only, keys)}. "
        "Symmetric (both transforms apply to every view, unlike SimCLR Fig. 5, where the second "
        "applies to one branch), so only the lower triangle is shown; empty cells were not run. "
        "Crop off = the whole image resized."
    )
    if full:
        caption += f" The full '{base}' recipe: {', '.join(full)}."
    if left_out:
        caption += f" {left_out} run(s) of other configurations are left out."
    fig.suptitle(f"{metric} ({proto}) with only one or two transforms — {seeds} per cell")
    return fig, caption


# --------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------


def load_histories(
    run_ids: Sequence[str], metrics: Sequence[str], *, tracking_uri: str | None = None
) -> pd.DataFrame:
    """Every logged value of ``metrics`` for ``run_ids`` (MLflow ``get_metric_history``).

    Args:
        run_ids: pretraining run ids (repeats are read once).
        metrics: metric names, e.g. ``["train/loss"]`` (step = epoch).
        tracking_uri: see :func:`sslbench.results.tracking.resolve_tracking_uri`.

    Returns:
        A long frame with columns :data:`HISTORY_COLUMNS` (``step`` int, ``value`` float), sorted
        by run, metric and step; empty when there is nothing (or no SQLite store at all).

    Raises:
        SSLBenchError: the store cannot be read (credentials never appear in the message).
    """
    ids = [str(r) for r in dict.fromkeys(run_ids) if r is not None and not pd.isna(r)]
    empty = pd.DataFrame({"run_id": pd.Series(dtype=str), "metric": pd.Series(dtype=str),
                          "step": pd.Series(dtype="int64"), "value": pd.Series(dtype=float)})  # fmt: skip
    uri = T.resolve_tracking_uri(tracking_uri)
    sqlite = T._sqlite_path(uri)
    if not ids or not metrics or (sqlite is not None and not sqlite.exists()):
        return empty
    rows: list[tuple[str, str, int, float]] = []
    with T._guard(uri, "reading metric histories"):
        client = T.get_client(uri)
        for run_id in ids:
            for metric in dict.fromkeys(metrics):
                rows.extend((run_id, metric, int(h.step), float(h.value))
                            for h in client.get_metric_history(run_id, metric))  # fmt: skip
    if not rows:
        return empty
    frame = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    return frame.sort_values(["run_id", "metric", "step"], kind="stable", ignore_index=True)


def _identities(runs: pd.DataFrame) -> pd.DataFrame:
    """run id -> identity columns, for pretraining runs and (through parent_run_id) for the
    parents of evaluation runs, which copy their parent's identity tags."""
    cols = [c for c in (T.TAG_METHOD, T.TAG_BATCH_SIZE, T.TAG_SEED, *CONFIG_COLUMNS) if c in runs.columns]
    cols = list(dict.fromkeys(cols))
    parts = [runs[["run_id", *cols]]] if "run_id" in runs.columns else []
    if "parent_run_id" in runs.columns:
        parts.append(runs[["parent_run_id", *cols]].rename(columns={"parent_run_id": "run_id"}))
    if not parts:
        raise SSLBenchError("The runs have neither a run_id nor a parent_run_id column.",
                            "Pass runs as `load_runs` gives them.")
    ident = pd.concat(parts, ignore_index=True).dropna(subset=["run_id"])
    return ident.drop_duplicates("run_id")


def training_curves_figure(
    history: pd.DataFrame, runs: pd.DataFrame, *, metric: str = T.METRIC_TRAIN_LOSS
) -> tuple[Figure, str]:
    """A per-epoch pretraining metric against epoch: per method the mean over seeds with a 95 %
    t-interval band, one panel per batch size, line style per augmentation recipe when there
    are several.

    Args:
        history: :func:`load_histories` output (run_id, metric, step, value).
        runs: pretraining runs, or evaluation runs (matched through ``parent_run_id``), that
            give each history run its method, batch size, seed and augment.
        metric: the history metric to draw.

    Returns:
        The figure and its caption.

    Raises:
        SSLBenchError: no history of ``metric`` for the trained runs.
    """
    missing = [c for c in HISTORY_COLUMNS if c not in history.columns]
    if missing:
        raise SSLBenchError(f"The history frame has no column(s) {missing}.", "Use load_histories().")
    hist = history[history["metric"] == metric]
    data = _trained(hist.merge(_identities(runs), on="run_id", how="inner")) if len(hist) else hist
    if data.empty or T.TAG_METHOD not in data.columns:
        raise SSLBenchError(
            f"No per-epoch '{metric}' history for the trained runs.",
            "Pass the pretraining runs' ids to load_histories() with this metric (pretraining "
            "logs train/loss per epoch; baselines have none).",
        )
    data = data.copy()
    data[T.TAG_METHOD] = data[T.TAG_METHOD].astype(str)
    data["value"] = data["value"].astype(float)
    if T.TAG_BATCH_SIZE in data.columns:
        data["_batch"] = data[T.TAG_BATCH_SIZE].map(lambda b: "—" if pd.isna(b) else str(int(b)))
    else:
        data["_batch"] = "—"
    batches = sorted(data["_batch"].unique(), key=lambda b: (b == "—", int(b) if b != "—" else 0))
    augments = sorted(data[T.TAG_AUGMENT].astype(str).unique()) if T.TAG_AUGMENT in data.columns else []
    style = T.TAG_AUGMENT if len(augments) > 1 else None
    methods = _method_order(data[T.TAG_METHOD])
    colours = dict(zip(batches, sns.color_palette("viridis", n_colors=len(batches)), strict=True))
    ncols = min(4, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    fig = Figure(figsize=(4.2 * ncols + 2.0, 3.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()  # losses of different methods differ in scale
    for ax, method in zip(axes, methods, strict=False):
        sns.lineplot(data=data[data[T.TAG_METHOD] == method], x="step", y="value", hue="_batch",
                     hue_order=batches, palette=colours, style=style, style_order=augments if style else None,
                     estimator="mean", errorbar=t_ci95, err_style="band", ax=ax)  # fmt: skip
        ax.set_title(method)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        legend = ax.get_legend()
        if legend is not None:
            legend.remove()
    entries: dict[str, Any] = {}
    for ax in axes[: len(methods)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    order = [b for b in batches if b in entries] + [k for k in entries if k not in batches]
    fig.legend([entries[k] for k in order], order, title="batch size", fontsize=8, loc="outside right upper")
    for ax in axes[len(methods):]:
        ax.set_visible(False)
    runs_only = data.drop_duplicates("run_id")
    described = _config_columns(runs_only, exclude=[T.TAG_AUGMENT] if style else [])
    keys = [c for c in (T.TAG_METHOD, T.TAG_BATCH_SIZE, T.TAG_AUGMENT) if c in runs_only.columns]
    seeds = seed_counts(runs_only, keys)
    caption = (
        f"Pretraining {metric} per epoch (a training metric, no evaluation protocol; values as "
        f"logged at the end of each epoch): one panel per method (losses of different methods are "
        f"not comparable), colour: batch size"
        + ("; line style: augmentation recipe" if style else "")
        + f"; mean over seeds with a 95 % t-CI band ({seeds} per line); {_describe(runs_only, described)}."
    )
    fig.suptitle(f"{metric} per epoch — {seeds} per line")
    return fig, caption


# --------------------------------------------------------------------------------------------
# Accuracy against compute
# --------------------------------------------------------------------------------------------


def compute_figure(
    runs_with_pretrain: pd.DataFrame, *, metric: str = "top1", protocol: str | None = None
) -> tuple[Figure, str]:
    """Accuracy against pretraining cost in device-hours, per method and batch size (log x).

    Device-hours = ``final/wall_time_s`` × ``derived.world_size`` (1 when absent) / 3600 of the
    pretraining run; evaluation time is not counted. Points are per (method, batch size): y the
    mean accuracy over seeds with a 95 % t-interval, x the mean device-hours of the same runs;
    each method's points are joined in batch-size order and labelled with the batch size.

    Args:
        runs_with_pretrain: evaluation runs with their pretraining columns
            (:func:`sslbench.results.aggregate.attach_pretrain`).
        metric: the accuracy column.
        protocol: the protocol; needed when the runs hold several.

    Returns:
        The figure and its caption.

    Raises:
        SSLBenchError: no pretraining wall time, or no trained runs.
    """
    if WALL_TIME_COLUMN not in runs_with_pretrain.columns:
        raise SSLBenchError(
            f"The runs have no '{WALL_TIME_COLUMN}' column, so their pretraining cost is unknown.",
            "Attach the pretraining runs: attach_pretrain(evals, load_runs(kind='pretrain')).",
        )
    data = runs_with_pretrain.copy()
    data["_hours"] = device_hours(data)
    data.loc[~(data["_hours"] > 0), "_hours"] = np.nan
    data, proto = _prepare(data, metric, protocol, [T.TAG_BATCH_SIZE, "_hours"], "compute figure")
    data[T.TAG_BATCH_SIZE] = data[T.TAG_BATCH_SIZE].astype(float)
    keys = _config_columns(data)
    data, left_out = _main_series(data, T.TAG_BATCH_SIZE, keys)
    methods = _method_order(data[T.TAG_METHOD])
    palette = _palette(methods)
    summary = _summary(data, [T.TAG_METHOD, T.TAG_BATCH_SIZE], metric)
    hours = data.groupby([T.TAG_METHOD, T.TAG_BATCH_SIZE])["_hours"].mean()
    summary["hours"] = [
        hours[(m, b)] for m, b in zip(summary[T.TAG_METHOD], summary[T.TAG_BATCH_SIZE], strict=True)
    ]

    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for m in methods:
        s = summary[summary[T.TAG_METHOD] == m].sort_values(T.TAG_BATCH_SIZE)
        yerr = np.vstack([s["mean"] - s["lo"], s["hi"] - s["mean"]])
        ax.errorbar(s["hours"], s["mean"], yerr=yerr, fmt="-o", capsize=3, color=palette[m], label=m)
        for x, y, b in zip(s["hours"], s["mean"], s[T.TAG_BATCH_SIZE], strict=True):
            ax.annotate(f"{int(b)}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("pretraining device-hours")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="method", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    seeds = seed_counts(data, [T.TAG_METHOD, T.TAG_BATCH_SIZE])
    devices = []
    if DEVICE_COLUMN in data.columns:
        devices = sorted(data[DEVICE_COLUMN].dropna().astype(str).unique())
    caption = (
        f"{metric} under protocol {proto} against pretraining cost in device-hours "
        "(final/wall_time_s × world size / 3600 of the pretraining run; evaluation not counted; "
        "log axis), per method; points are batch sizes (labelled). y: mean ± 95 % t-CI over seeds "
        f"({seeds} per point), final-epoch numbers; x: mean over the same runs; "
        f"{_describe(data, keys)}."
    )
    if devices:
        caption += f" Device(s): {', '.join(devices)}; times from different hardware are not comparable."
    if left_out:
        caption += f" {left_out} run(s) of other configurations are left out."
    fig.suptitle(f"{metric} vs pretraining compute ({proto}) — {seeds} per point")
    return fig, caption


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _infer_drop_baseline(augments: Iterable[str]) -> str | None:
    """The recipe X with the most ``X-no-<t>`` variants among ``augments`` that also has runs."""
    present = set(augments)
    counts: dict[str, int] = {}
    for a in present:
        for t in AUGMENT_TRANSFORMS:
            if a.endswith(f"-no-{t}") and a[: -len(f"-no-{t}")] in present:
                counts[a[: -len(f"-no-{t}")]] = counts.get(a[: -len(f"-no-{t}")], 0) + 1
    return min(counts, key=lambda b: (-counts[b], b)) if counts else None


def _infer_pair_base(augments: Iterable[str]) -> str | None:
    """The recipe X with the most ``X-only-...`` names among ``augments``."""
    counts: dict[str, int] = {}
    for a in set(augments):
        at = a.rfind("-only-")
        if at > 0 and _only_pair(a, a[:at]) is not None:
            counts[a[:at]] = counts.get(a[:at], 0) + 1
    return min(counts, key=lambda b: (-counts[b], b)) if counts else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "none"


def write_ablation_report(
    evals: pd.DataFrame,
    pretrains: pd.DataFrame,
    out_dir: Path,
    *,
    tracking_uri: str | None = None,
    protocol: str | None = None,
    metric: str = "top1",
    reference: pd.DataFrame | None = None,
    baseline_augment: str | None = None,
) -> dict[str, Path]:
    """Writes every ablation figure (PNG + SVG + caption ``.txt``), the drop-one table (CSV) and
    ``ablation.md``, which embeds the figures with their captions and includes the table.

    Per protocol (``protocol``, or each protocol of ``evals``): accuracy against batch size,
    the drop-one table, the pairwise heatmap and accuracy against compute; once: the training
    curves (``train/loss`` histories read from MLflow). A figure whose runs are absent is not
    drawn: ``ablation.md`` says why in its place.

    Args:
        evals: ``load_runs(kind="eval")``.
        pretrains: ``load_runs(kind="pretrain")`` (for compute and training curves; may be empty).
        out_dir: created if missing.
        tracking_uri: where to read the training histories.
        protocol: only this protocol; default every protocol in ``evals``.
        metric: the accuracy column.
        reference: the reference table; None loads the package's
            (:func:`sslbench.results.reference.load_reference`), an empty frame draws none.
        baseline_augment: the full recipe of the drop-one and pairwise ablations; default the
            recipe with the most ``<recipe>-no-<t>`` (``-only-``) variants in the runs.

    Returns:
        Every written file by its name (e.g. ``"ablation.md"``, ``"batch-size_linear.png"``).

    Raises:
        SSLBenchError: no trained evaluation runs with ``metric`` at all.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if reference is None:
        from sslbench.results.reference import load_reference

        try:
            reference = load_reference()
        except SSLBenchError as exc:
            reference = pd.DataFrame()
            notes.append(f"No published curves or deltas: {exc.problem}")
    has = {T.TAG_METHOD, T.TAG_PROTOCOL, metric} <= set(evals.columns)
    trained = evals.iloc[:0]
    if has:
        trained = _trained(evals[pd.to_numeric(evals[metric], errors="coerce").notna()])
    if protocol is not None and has:
        trained = trained[trained[T.TAG_PROTOCOL].astype(str) == protocol]
    protocols = sorted(trained[T.TAG_PROTOCOL].dropna().astype(str).unique()) if has else []
    if not protocols:
        where = f" under protocol '{protocol}'" if protocol else ""
        raise SSLBenchError(
            f"No evaluation runs of trained methods with metric '{metric}'{where} to analyse.",
            "Run the sweep (and its evaluations) first, or check --tracking-uri, the protocol and "
            "the metric.",
        )
    joined = evals
    if len(pretrains) and "run_id" in pretrains.columns:
        joined = attach_pretrain(evals, pretrains)
    paths: dict[str, Path] = {}
    lines = [
        "# Ablation report",
        "",
        f"{len(trained)} evaluation runs of trained methods "
        f"({', '.join(_method_order(trained[T.TAG_METHOD].astype(str)))}); "
        f"metric `{metric}`; protocol(s) {', '.join(f'`{p}`' for p in protocols)}. All accuracies are "
        "the evaluations' final-epoch numbers; intervals are 95 % Student-t over seeds.",
        "",
        *[f"{n}\n" for n in notes],
    ]
    figure_no = 0

    def add_figure(title: str, stem: str, build: Callable[[], tuple[Figure, str]]) -> None:
        nonlocal figure_no
        lines.extend([f"### {title}", ""])
        try:
            fig, caption = build()
        except SSLBenchError as exc:
            lines.extend([f"*Skipped: {exc.problem}*", ""])
            return
        figure_no += 1
        for path in save_figure(fig, out_dir / stem):
            paths[path.name] = path
        text = out_dir / f"{stem}.txt"
        text.write_text(caption + "\n", encoding="utf-8")
        paths[text.name] = text
        lines.extend([f"![{title}]({stem}.png)", "", f"**Figure {figure_no}.** {caption}", ""])

    for proto in protocols:
        slug = _slug(proto)
        augments: list[str] = []
        if T.TAG_AUGMENT in trained.columns:
            in_proto = trained[T.TAG_PROTOCOL].astype(str) == proto
            augments = list(trained.loc[in_proto, T.TAG_AUGMENT].astype(str))
        lines.extend([f"## Protocol `{proto}`", ""])
        add_figure("Accuracy against batch size", f"batch-size_{slug}",
                   lambda: batch_size_figure(evals, metric=metric, protocol=proto, reference=reference))
        lines.extend(["### Drop one augmentation", ""])
        drop_base = baseline_augment or _infer_drop_baseline(augments)
        if drop_base is None:
            lines.extend(["*Skipped: no runs with an augment '<recipe>-no-<t>' beside runs of "
                          "'<recipe>' under this protocol.*", ""])  # fmt: skip
        else:
            try:
                table = drop_one_table(evals, baseline=drop_base, metric=metric, protocol=proto,
                                       reference=reference)  # fmt: skip
            except SSLBenchError as exc:
                lines.extend([f"*Skipped: {exc.problem}*", ""])
            else:
                csv = out_dir / f"drop-one_{slug}.csv"
                table.to_csv(csv, index=False)
                paths[csv.name] = csv
                lines.extend([f"**Table.** {_drop_one_caption(table, drop_base, metric)}", "",
                              drop_one_markdown(table, metric)])  # fmt: skip
        pair_base = baseline_augment or _infer_pair_base(augments)
        if pair_base is None:
            lines.extend(["### Pairwise augmentations", "", "*Skipped: no runs with an augment "
                          "'<recipe>-only-<a>[+<b>]' under this protocol.*", ""])  # fmt: skip
        else:
            add_figure("Pairwise augmentations", f"pairwise_{slug}",
                       lambda: pairwise_heatmap(evals, base=pair_base, metric=metric, protocol=proto))
        add_figure("Accuracy against compute", f"compute_{slug}",
                   lambda: compute_figure(joined, metric=metric, protocol=proto))

    lines.extend(["## Training curves", ""])
    parents: set[str] = set()
    if "parent_run_id" in trained.columns:
        parents = set(trained["parent_run_id"].dropna().astype(str))
    ids = [r for r in pretrains.get("run_id", pd.Series(dtype=str)).astype(str) if r in parents]

    def curves() -> tuple[Figure, str]:
        if not ids:
            raise SSLBenchError("No pretraining runs of the evaluated methods were given.", "")
        history = load_histories(ids, [T.METRIC_TRAIN_LOSS], tracking_uri=tracking_uri)
        return training_curves_figure(history, pretrains, metric=T.METRIC_TRAIN_LOSS)

    add_figure("Training loss per epoch", "training-curves", curves)
    md = out_dir / "ablation.md"
    md.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    paths[md.name] = md
    return paths
