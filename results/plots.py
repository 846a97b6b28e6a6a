"""Figures from run frames: accuracy vs batch size, and methods side by side per protocol.

Figures are built on :class:`matplotlib.figure.Figure` objects (rendered by Agg), never through
``pyplot``, so no global backend or figure state is touched. Each plot writes PNG and SVG.

Error bars are a 95 % confidence interval of the mean over seeds from Student's t
(mean ± t₀.₉₇₅,ₙ₋₁ · s/√n). With three seeds a bootstrap interval (seaborn's default) is too
narrow to mean anything, so it is not used. One seed gives no error bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from sslbench.benchmark.errors import SSLBenchError
from sslbench.results import tracking as T
from sslbench.results.stats import mean_ci


def t_ci95(values: Sequence[float]) -> tuple[float, float]:
    """The 95 % t confidence interval of the mean of ``values``; (mean, mean) for one value
    (seaborn's ``errorbar`` callable; :func:`sslbench.results.stats.mean_ci` computes it).

    Args:
        values: one number per seed.
    """
    ci = mean_ci(values)
    return (ci.mean, ci.mean) if ci.n < 2 else (ci.lo, ci.hi)


def _method_order(methods: Sequence[str]) -> list[str]:
    """Methods sorted by name with the random-init baseline last."""
    return sorted(set(methods), key=lambda m: (m == T.RANDOM_INIT_METHOD, m))


def _select(
    runs: pd.DataFrame, metric: str, need: Sequence[str], protocol: str | None
) -> pd.DataFrame:
    missing = [c for c in (metric, *need) if c not in runs.columns]
    if missing:
        raise SSLBenchError(
            f"Cannot plot '{metric}': the runs have no column(s) {missing}.",
            "Load evaluation runs (`load_runs(kind='eval')`) that logged this metric.",
        )
    data = runs.copy()
    if protocol is not None:
        data = data[data[T.TAG_PROTOCOL] == protocol]
    data[metric] = pd.to_numeric(data[metric], errors="coerce").astype(float)
    data = data.dropna(subset=[metric, *need])
    if data.empty:
        where = f" for protocol '{protocol}'" if protocol else ""
        raise SSLBenchError(
            f"No finished runs with metric '{metric}'{where} to plot.",
            "Run the evaluations first (`sslbench eval ...`), or check the protocol name.",
        )
    data[T.TAG_METHOD] = data[T.TAG_METHOD].astype(str)
    data[T.TAG_PROTOCOL] = data[T.TAG_PROTOCOL].astype(str)
    return data


def seed_counts(data: pd.DataFrame, keys: Sequence[str]) -> str:
    """``"3 seeds"``, ``"1 seed"`` or ``"1–3 seeds"``: runs per plotted point."""
    n = data.groupby(list(keys), dropna=False).size()
    lo, hi = int(n.min()), int(n.max())
    return f"{lo} seed" if hi == 1 else (f"{lo} seeds" if lo == hi else f"{lo}–{hi} seeds")


def save_figure(fig: Figure, out_prefix: Path) -> list[Path]:
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = [Path(f"{out_prefix}.png"), Path(f"{out_prefix}.svg")]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})  # reproducible SVG
    return paths


def plot_accuracy_vs_batch_size(
    runs: pd.DataFrame, out_prefix: Path, *, protocol: str | None = None, metric: str = "top1"
) -> list[Path]:
    """Accuracy against batch size (log2 axis), one line per method, one panel per protocol.

    Points are the mean over seeds with 95 % t-interval error bars.

    Args:
        runs: evaluation runs as :func:`sslbench.results.aggregate.load_runs` gives them (needs
            ``method``, ``batch_size``, ``protocol`` and ``metric``).
        out_prefix: written as ``{out_prefix}.png`` and ``{out_prefix}.svg``.
        protocol: plot only this protocol (one panel); default one panel per protocol.
        metric: the metric on the y axis.

    Returns:
        The PNG and SVG paths.
    """
    keys = [T.TAG_METHOD, T.TAG_BATCH_SIZE, T.TAG_PROTOCOL]
    data = _select(runs, metric, keys, protocol)
    data[T.TAG_BATCH_SIZE] = data[T.TAG_BATCH_SIZE].astype(float)
    protocols = sorted(data[T.TAG_PROTOCOL].unique())
    methods = _method_order(data[T.TAG_METHOD])
    palette = dict(zip(methods, sns.color_palette(n_colors=len(methods)), strict=True))
    # Untrained baselines (random-init, raw-pixels: batch size 0) have no batch size: they are
    # drawn as dashed horizontal reference lines, not as points on the log2 axis.
    untrained = data[T.TAG_BATCH_SIZE] <= 0
    baselines, data = data[untrained], data[~untrained]
    batch_sizes = sorted(data[T.TAG_BATCH_SIZE].unique())

    fig = Figure(figsize=(4.5 * len(protocols) + 1.5, 4.0), layout="constrained")
    axes = fig.subplots(1, len(protocols), squeeze=False, sharey=True)[0]
    for ax, proto in zip(axes, protocols, strict=True):
        trained = data[data[T.TAG_PROTOCOL] == proto]
        if not trained.empty:  # a protocol may hold baselines only
            _lineplot(trained, metric, methods, palette, ax)
        for method, rows in baselines[baselines[T.TAG_PROTOCOL] == proto].groupby(T.TAG_METHOD):
            ax.axhline(float(rows[metric].mean()), ls="--", lw=1.2, color=palette[str(method)],
                       label=f"{method} (no training)")
        if batch_sizes:
            ax.set_xscale("log", base=2)
            ax.set_xticks(batch_sizes, [str(int(b)) for b in batch_sizes])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(proto)
        ax.set_xlabel("batch size")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
        if ax is axes[-1]:
            ax.legend(title="method", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        elif ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.suptitle(
        f"{metric} vs batch size — {', '.join(protocols)} — mean ± 95% t-CI over seeds "
        f"({seed_counts(pd.concat([data, baselines]), keys)} per point)"
    )
    return save_figure(fig, out_prefix)


def _lineplot(trained: pd.DataFrame, metric: str, methods: list[str], palette: dict[str, Any],
              ax: Axes) -> None:
    """Mean over seeds per (method, batch size), with 95 % t-interval bars."""
    present = set(trained[T.TAG_METHOD])
    sns.lineplot(
        data=trained,
        x=T.TAG_BATCH_SIZE,
        y=metric,
        hue=T.TAG_METHOD,
        hue_order=[m for m in methods if m in present],
        palette=palette,
        estimator="mean",
        errorbar=t_ci95,
        err_style="bars",
        marker="o",
        ax=ax,
    )


def plot_method_comparison(
    runs: pd.DataFrame, out_prefix: Path, *, metric: str = "top1"
) -> list[Path]:
    """Bars of ``metric`` per method (x), one bar per protocol (hue), with value labels.

    The quick-start figure: e.g. methods including ``random-init`` under the protocols
    ``knn-k200-t0.1``, ``knn-k20-t0.07`` and ``linear``. Bars are means over seeds; error bars
    (95 % t-interval) appear where a bar has more than one seed.

    Args:
        runs: evaluation runs as :func:`sslbench.results.aggregate.load_runs` gives them (needs
            ``method``, ``protocol`` and ``metric``).
        out_prefix: written as ``{out_prefix}.png`` and ``{out_prefix}.svg``.
        metric: the metric on the y axis.

    Returns:
        The PNG and SVG paths.
    """
    keys = [T.TAG_METHOD, T.TAG_PROTOCOL]
    data = _select(runs, metric, keys, None)
    methods = _method_order(data[T.TAG_METHOD])
    protocols = sorted(data[T.TAG_PROTOCOL].unique())
    multi_seed = bool((data.groupby(keys).size() > 1).any())

    fig = Figure(
        figsize=(max(5.0, 1.2 * len(methods) * max(1, len(protocols)) / 2 + 2), 4.5),
        layout="constrained",
    )
    ax = fig.subplots()
    sns.barplot(
        data=data,
        x=T.TAG_METHOD,
        y=metric,
        hue=T.TAG_PROTOCOL,
        order=methods,
        hue_order=protocols,
        estimator="mean",
        errorbar=t_ci95 if multi_seed else None,
        capsize=0.1,
        ax=ax,
    )
    for container in ax.containers:
        if isinstance(container, BarContainer):
            heights = np.asarray(container.datavalues, dtype=float)
            labels = ["" if np.isnan(v) else f"{v:.1f}" for v in heights]
            if multi_seed:  # inside the bar, clear of the error bar
                ax.bar_label(
                    container, labels=labels, label_type="center", fontsize=7, color="white"
                )
            else:
                ax.bar_label(container, labels=labels, padding=2, fontsize=7)
    ax.set_xlabel("method")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.12)
    ax.legend(title="protocol", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    counts = seed_counts(data, keys)
    bars = f"mean ± 95% t-CI over seeds ({counts} per bar)" if multi_seed else f"{counts} per bar"
    ax.set_title(f"{metric} by method and protocol — {bars}")
    return save_figure(fig, out_prefix)
