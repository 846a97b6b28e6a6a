"""The main job: pretrain SimCLR, MoCo v2 and BYOL on the embedded data, evaluate them and two
baselines (the random-init encoder and raw pixels) with kNN and a linear probe, log everything to
MLflow, and write a comparison table (Markdown, CSV) and a plot into one output folder."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from sslbench.benchmark.console import say
from sslbench.benchmark.engine import Tracking, build_method, identity_tags, pretrain, resolve_device
from sslbench.benchmark.evaluate import evaluate_and_log, load_eval_splits
from sslbench.benchmark.recipes import resolve
from sslbench.protocols.spec import DEFAULT_PROTOCOLS

QUICK_METHODS = ("simclr", "mocov2", "byol")


class RawPixels(nn.Module):
    """The identity encoder: normalised pixels, flattened (a baseline every table should carry).

    Shape:
        input: (B, C, H, W); output: (B, C*H*W).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def run_quickstart(out: Path | None = None, *, methods: Sequence[str] = QUICK_METHODS, seed: int = 0,
                   epochs: int | None = None, overrides: Sequence[str] = (),
                   protocols: Sequence[str] = DEFAULT_PROTOCOLS, tracking: Tracking = Tracking(),
                   progress: bool = True) -> Path:
    """Runs the quick start and returns the output folder.

    Args:
        out: output folder (default ``sslbench-output/quickstart-<timestamp>``); must not exist
            or be empty.
        methods: methods to pretrain (each uses its ``<method>-quick`` recipe).
        seed: the seed of every run.
        epochs: override the recipes' epochs.
        overrides: extra ``key=value`` overrides applied to every recipe.
        protocols: protocol names to evaluate with.
        tracking: where to log.
        progress: show progress bars (only where stderr is a terminal; the line of each
            finished epoch and evaluation is printed either way).
    """
    from sslbench.benchmark.errors import SSLBenchError
    from sslbench.results.aggregate import aggregate, load_runs
    from sslbench.results.plots import plot_method_comparison
    from sslbench.results.tables import comparison_table, to_markdown, write_tables
    from sslbench.results.tracking import redact_uri, resolve_tracking_uri

    t_start = time.perf_counter()
    out = out or Path("sslbench-output") / f"quickstart-{datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and any(out.iterdir()):
        raise SSLBenchError(f"Output folder '{out}' is not empty.",
                            "Choose a new --out folder; sslbench never overwrites results.")
    out.mkdir(parents=True, exist_ok=True)
    base_overrides = [f"train.seed={seed}", *overrides] + (
        [f"train.epochs={epochs}"] if epochs is not None else [])
    configs = {m: resolve(f"{m}-quick", base_overrides) for m in methods}
    first = next(iter(configs.values()))
    device = resolve_device(first.train.device)
    uri = resolve_tracking_uri(tracking.uri)
    print(f"sslbench quickstart: {', '.join(methods)} + random-init + raw-pixels on "
          f"{first.data.dataset}, {first.train.epochs} epochs each, device {device}, seed {seed}")
    say(f"  output: {out}\n  MLflow: {redact_uri(uri)} (experiment '{tracking.experiment}')")
    train, test = load_eval_splits(first.data.dataset, device=device)
    run_ids: list[str] = []

    def evaluate(encoder: nn.Module, tags: dict[str, str], run_id: str | None) -> None:
        evaluate_and_log(encoder.to(device), protocols=protocols, train=train, test=test,
                         device=device, parent_run_id=run_id, tags=tags, tracking=tracking,
                         progress=progress)
        if run_id is not None:
            run_ids.append(run_id)

    # Baselines: the same backbone at its (seeded) initialisation, and raw pixels.
    for name, encoder in (("random-init", build_method(first, train.info.channels,
                                                       train.info.image_size).encoder),
                          ("raw-pixels", RawPixels())):
        tags = {**identity_tags(first, device), "method": name, "recipe": "baseline",
                "augment": "none", "epochs": "0", "batch_size": "0"}
        if name == "raw-pixels":
            tags["backbone"] = "none"
        tags["config_hash"] = f"baseline-{name}-{tags['backbone']}-s{seed}"
        run_id = _log_baseline(tracking, tags, name, first)
        say(f"[{name}] evaluating")
        evaluate(encoder, tags, run_id)

    for method, cfg in configs.items():
        say(f"[{method}] pretraining ({cfg.recipe}: {cfg.backbone}, batch {cfg.data.batch_size}, "
            f"{cfg.train.epochs} epochs)")
        result = pretrain(cfg, out / "runs" / method, tracking=tracking, progress=progress)
        say(f"[{method}] {result.metrics.get('final/images_per_s', 0):.0f} images/s, "
            f"{result.metrics['final/wall_time_s']:.0f} s; evaluating")
        evaluate(result.encoder, result.tags, result.run_id)

    runs = load_runs(tracking_uri=tracking.uri, experiment=tracking.experiment, kind="eval")
    runs = runs[runs["parent_run_id"].isin(run_ids)]
    agg = aggregate(runs, metrics=[m for m in ("top1", "top5") if m in runs.columns])
    paths = write_tables(agg, out, stem="quickstart")
    paths.update({p.suffix.lstrip("."): p for p in plot_method_comparison(runs, out / "quickstart")})
    table = comparison_table(agg)
    print("\nkNN / linear-probe top-1 (%) on the test split, final epoch, "
          f"seed {seed} (n = number of seeds):\n")
    print(to_markdown(table))
    print(f"\nWrote {', '.join(str(p) for p in paths.values())}")
    print(f"Total wall time {time.perf_counter() - t_start:.0f} s. Browse the runs: "
          f"mlflow ui --backend-store-uri {redact_uri(uri)}")
    return out


def _log_baseline(tracking: Tracking | None, tags: dict[str, str], name: str, cfg: object) -> str | None:
    if tracking is None:
        return None
    from sslbench.results.tracking import TrackedRun, pretrain_run_name

    run_name = pretrain_run_name(name, int(tags["seed"]))  # e.g. "random-init s0"
    with TrackedRun(run_name=run_name, tags=tags, experiment=tracking.experiment,
                    tracking_uri=tracking.uri) as run:
        run.log_params({"baseline": name, "backbone": tags["backbone"]})
    return run.run_id
