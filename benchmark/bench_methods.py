"""The method zoo at equal budget: every registered method (its default ``-quick`` recipe) trained
for the same number of epochs, at the same batch size, on the same data and backbone, then
evaluated offline with kNN and the linear probe; one table with kNN top-1, linear top-1,
images/s and peak memory per method, beside the random-init encoder.

Methods whose encoder differs (CMC's one network per colour view, CPC v2's patch grid) or that
train on other data (the colour methods on ``fashion-mnist-color-mini``) are compared with a
random-init encoder of their own: one random-init row per distinct (dataset, backbone, encoder
wrapper), and each method's Δ is against the row that matches it.

Each pretraining runs in its own process (``sslbench pretrain``), so its peak memory is its own
(on CPU the process's peak resident set; on CUDA the peak allocation) and a crash of one method
does not stop the others: the table names the methods that failed and why.

Run it (about 1-2 minutes per method at 10 epochs on the 2-core CPU)::

    python -m sslbench.benchmark.bench_methods --epochs 10 --out bench-methods
    python -m sslbench.benchmark.bench_methods --methods simclr,byol --epochs 2   # a subset

It writes ``methods.md`` and ``methods.csv`` into ``--out`` and logs every run to the MLflow
store in ``--out`` (``mlruns.db``), so ``sslbench results`` and ``sslbench leaderboard`` read
the same runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

EXPERIMENT = "bench-methods"
RANDOM_INIT = "random-init"
METRIC_COLUMNS = {  # eval protocol -> table column
    "knn-k200-t0.1": "kNN k=200 top-1",
    "knn-k20-t0.07": "kNN k=20 top-1",
    "linear": "linear top-1",
}


def default_recipes() -> list[str]:
    """Every registered method's default recipe, in registry order."""
    from sslbench.methods import get_method, list_methods

    return [get_method(m).default_recipe for m in list_methods()]


def _pretrain_command(recipe: str, out: Path, uri: str, epochs: int, seed: int, threads: int,
                      extra: Sequence[str]) -> list[str]:
    cmd = [sys.executable, "-m", "sslbench.benchmark.cli", "pretrain", "--recipe", recipe,
           "--epochs", str(epochs), "--seed", str(seed), "--eval", ",".join(METRIC_COLUMNS),
           "--out", str(out / "runs" / f"{recipe}-e{epochs}-s{seed}"), "--tracking-uri", uri,
           "--experiment", EXPERIMENT, "--no-progress"]
    if threads:
        cmd += ["--threads", str(threads)]
    for kv in extra:
        cmd += ["--set", kv]
    return cmd


def encoder_key(recipe: str, extra: Sequence[str] = ()) -> str | None:
    """What a random-init baseline must share with a recipe: its dataset, backbone and encoder
    wrapper (``small-cnn · fashion-mnist-mini``, ``small-cnn · fashion-mnist-color-mini · color-split
    0|1,2``); None for a recipe that does not resolve (its run fails and is reported)."""
    from sslbench.benchmark.datasets import dataset_info
    from sslbench.benchmark.engine import encoder_spec_of
    from sslbench.benchmark.errors import SSLBenchError
    from sslbench.benchmark.recipes import resolve
    from sslbench.methods.base import InputSpec

    try:
        cfg = resolve(recipe, list(extra))
        info = dataset_info(cfg.data.dataset)
        size = cfg.data.image_size or info.image_size
        spec = encoder_spec_of(cfg, InputSpec(info.channels, size, tuple(info.mean), tuple(info.std)))
    except (SSLBenchError, ValueError, TypeError):
        return None
    key = f"{cfg.backbone} · {cfg.data.dataset}"
    if spec is not None:
        key += f" · {spec.name} " + " ".join(str(v) for v in spec.args.values())
    return key


def random_init_jobs(recipes: Sequence[str], extra: Sequence[str] = ()) -> dict[str, str]:
    """``{encoder key: recipe}``: the first recipe of each distinct encoder key, whose 0-epoch run
    is that key's random-init baseline."""
    jobs: dict[str, str] = {}
    for recipe in recipes:
        key = encoder_key(recipe, extra)
        if key is not None:
            jobs.setdefault(key, recipe)
    return jobs


def run_all(recipes: Sequence[str], out: Path, *, epochs: int, seed: int = 0, threads: int = 0,
            extra: Sequence[str] = ()) -> dict[str, str]:
    """Pretrains and evaluates each recipe in its own process (plus one random-init encoder per
    distinct encoder key, :func:`random_init_jobs`, as ``--epochs 0``); returns
    ``{label: error}`` for those that failed.

    A recipe whose run folder already holds a finished run is not trained again (``--resume``):
    an interrupted benchmark continues where it stopped.
    """
    uri = f"sqlite:///{(out / 'mlruns.db').resolve()}"
    failures: dict[str, str] = {}
    jobs = [(f"{RANDOM_INIT} ({key})", recipe, 0) for key, recipe in random_init_jobs(recipes, extra).items()]
    jobs += [(r, r, epochs) for r in recipes]
    for label, recipe, n_epochs in jobs:
        cmd = _pretrain_command(recipe, out, uri, n_epochs, seed, threads, extra)
        if (out / "runs" / f"{recipe}-e{n_epochs}-s{seed}" / "checkpoints").exists():
            cmd.append("--resume")
        t0 = time.perf_counter()
        print(f"[{label}] {' '.join(cmd[3:])}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        print(f"[{label}] exit {proc.returncode} after {time.perf_counter() - t0:.0f} s", flush=True)
        if proc.returncode != 0:
            failures[label] = (proc.stderr.strip().splitlines() or ["(no message)"])[-1][:300]
            print(f"[{label}] FAILED: {failures[label]}", flush=True)
    return failures


def methods_table(tracking_uri: str, epochs: int, failures: dict[str, str] | None = None,
                  extra: Sequence[str] = ()) -> pd.DataFrame:
    """One row per recipe: kNN and linear top-1, images/s, peak memory (MiB), wall time (s).

    Reads the benchmark's MLflow experiment: the evaluation runs for the accuracy columns, their
    pretraining runs for the cost columns. The random-init rows are the pretraining runs with 0
    epochs, one per encoder key (:func:`encoder_key`; the ``encoder`` column), and each trained
    row's Δ is against the random-init row of its own key. The last run of a (recipe, epochs)
    pair wins when the benchmark ran twice.
    """
    from sslbench.results.aggregate import load_runs

    evals = load_runs(tracking_uri=tracking_uri, experiment=EXPERIMENT, kind="eval")
    pre = load_runs(tracking_uri=tracking_uri, experiment=EXPERIMENT, kind="pretrain").set_index("run_id")
    rows = []
    for parent, group in evals.groupby("parent_run_id"):
        if parent not in pre.index:
            continue
        p = pre.loc[parent]
        n_epochs = int(p["epochs"])
        if n_epochs not in (0, epochs):
            continue
        row = {"method": RANDOM_INIT if n_epochs == 0 else p["method"],
               "recipe": "—" if n_epochs == 0 else p["recipe"], "epochs": n_epochs,
               "encoder": encoder_key(str(p["recipe"]), extra), "start": p["start_time"]}
        for protocol, column in METRIC_COLUMNS.items():
            hit = group[group["protocol"] == protocol]
            row[column] = float(hit["top1"].iloc[-1]) if len(hit) else float("nan")
        row["images/s"] = float(p.get("final/images_per_s", float("nan")))
        row["peak memory (MiB)"] = float(p.get("final/peak_memory_mb", float("nan")))
        row["train time (s)"] = float(p.get("final/wall_time_s", float("nan")))
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.sort_values("start").drop_duplicates(["method", "recipe", "epochs", "encoder"], keep="last")
    base = table[table["method"] == RANDOM_INIT].set_index("encoder")
    for metric, column in (("kNN k=200 top-1", "Δ kNN vs random-init"), ("linear top-1", "Δ linear vs random-init")):
        table[column] = table["encoder"].map(base[metric]).rsub(table[metric]) if len(base) else float("nan")
    for label, error in (failures or {}).items():
        table = pd.concat([table, pd.DataFrame([{"method": label, "recipe": label, "epochs": epochs,
                                                  "error": error}])], ignore_index=True)
    order = (table["method"] != RANDOM_INIT).astype(int)
    return table.assign(_o=order).sort_values(["_o", "encoder", "method", "recipe"]).drop(columns=["_o", "start"])


def to_markdown(table: pd.DataFrame) -> str:
    """The table as GitHub Markdown (one decimal for accuracies, integers for costs)."""
    fmt = table.copy()
    for col in fmt.columns:
        if col in ("images/s", "peak memory (MiB)", "train time (s)"):
            fmt[col] = fmt[col].map(lambda v: "—" if pd.isna(v) else f"{v:,.0f}")
        elif col.endswith("top-1") or col.startswith("Δ"):
            fmt[col] = fmt[col].map(lambda v: "—" if pd.isna(v) else f"{v:+.1f}" if col.startswith("Δ") else f"{v:.1f}")
    from sslbench.results.tables import to_markdown as markdown_table

    return markdown_table(fmt.fillna("").reset_index(drop=True))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench-methods", help="folder for runs, mlruns.db and the table")
    p.add_argument("--methods", help="comma-separated method names (default: every registered method)")
    p.add_argument("--recipes", help="comma-separated extra recipes (e.g. simclr-ccrop-quick)")
    p.add_argument("--epochs", type=int, default=10, help="epochs for every method (equal budget)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every recipe (e.g. data.batch_size=128)")
    p.add_argument("--table-only", action="store_true", help="only print the table of runs already in --out")
    args = p.parse_args(argv)

    from sslbench.methods import get_method

    recipes = ([get_method(m.strip()).default_recipe for m in args.methods.split(",") if m.strip()]
               if args.methods else default_recipes())
    recipes += [r.strip() for r in (args.recipes or "").split(",") if r.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = {} if args.table_only else run_all(recipes, out, epochs=args.epochs, seed=args.seed,
                                                  threads=args.threads, extra=args.set)
    table = methods_table(f"sqlite:///{(out / 'mlruns.db').resolve()}", args.epochs, failures, args.set)
    import platform

    import torch

    header = (f"Equal budget: {args.epochs} epochs, seed {args.seed}, each method's default quick "
              f"recipe{' with ' + ' '.join(args.set) if args.set else ''}; torch {torch.__version__}, "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}. "
              "Top-1 % on the test split, final epoch.")
    md = header + "\n\n" + to_markdown(table) + "\n"
    (out / "methods.md").write_text(md)
    table.to_csv(out / "methods.csv", index=False)
    print("\n" + md)
    print(f"Wrote {out / 'methods.md'} and {out / 'methods.csv'}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
