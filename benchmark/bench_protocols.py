"""Semi-supervised fine-tuning, detection transfer and diagnostics on the embedded data, for a
random-init encoder and SSL encoders: the numbers of the protocols' closing note, with run times.

Each encoder is pretrained once with ``sslbench pretrain`` (its ``-quick`` recipe, ``--epochs``
epochs; the random-init encoder is the same recipe at 0 epochs, i.e. the seeded initialisation)
and every protocol runs as its own ``sslbench eval`` process, so a run time is the whole
evaluation as a user sees it. Everything is logged to ``--out``/mlruns.db; finished evaluations
are not run again (re-running the command resumes), and the table is rebuilt from MLflow::

    python -m sslbench.benchmark.bench_protocols --out bench-protocols
    python -m sslbench.benchmark.bench_protocols --out bench-protocols --protocols semisup-1pct
    python -m sslbench.benchmark.bench_protocols --out bench-protocols --table-only

It writes ``protocols.md`` and ``protocols.csv``: per encoder and protocol the headline metric
(top-1 for classification, COCO AP for detection, RankMe for diagnostics), its difference to
random init, and the evaluation's wall-clock seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

EXPERIMENT = "bench-protocols"
RANDOM_INIT = "random-init"
DEFAULT_PROTOCOLS = ("semisup-1pct", "semisup-10pct", "semisup-1pct-distill", "detection-embedded", "diagnostics")
#: protocol kind -> the metric shown in the table
HEADLINE = {"semisup": "top1", "detection": "AP", "diagnostics": "rankme", "knn": "top1", "linear": "top1"}


def _run(cmd: list[str]) -> tuple[int, float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    return proc.returncode, time.perf_counter() - start, " | ".join(tail)


def _checkpoint(name: str, recipe: str, epochs: int, out: Path, uri: str, seed: int) -> Path:
    run_dir = out / "runs" / name
    ckpt = run_dir / "checkpoints" / "last.pt"
    cmd = [sys.executable, "-m", "sslbench.benchmark.cli", "pretrain", "--recipe", recipe, "--epochs", str(epochs),
           "--seed", str(seed), "--out", str(run_dir), "--tracking-uri", uri, "--experiment", EXPERIMENT,
           "--no-progress"] + (["--resume"] if ckpt.exists() else [])
    code, seconds, tail = _run(cmd)
    if code != 0:
        raise SystemExit(f"pretraining {name} failed: {tail}")
    print(f"{name}: checkpoint {ckpt} ({seconds:.0f} s)", flush=True)
    return ckpt


def _done(uri: str) -> pd.DataFrame:
    from sslbench.results.aggregate import load_runs

    try:
        return load_runs(tracking_uri=uri, experiment=EXPERIMENT, kind="eval")
    except Exception:  # no store yet
        return pd.DataFrame()


def _mine(runs: pd.DataFrame, recipe: str, epochs: int, protocol: str) -> pd.DataFrame:
    """The evaluation runs of one encoder (recipe and epochs: random init is epochs 0) and protocol."""
    if runs.empty:
        return runs
    return runs[(runs["recipe"] == recipe) & (runs["epochs"].astype(str) == str(epochs))
                & (runs["protocol"] == protocol)]


def table(uri: str, encoders: dict[str, tuple[str, int]], protocols: Sequence[str],
          times: dict[str, float]) -> pd.DataFrame:
    """One row per (encoder, protocol) from the MLflow store: headline metric, Δ vs random init,
    the whole evaluation's seconds (``times``: "<encoder> <protocol>" -> s) and the protocol's own
    (``eval_seconds``: without loading data and the model)."""
    from sslbench.protocols import get_protocol

    runs = _done(uri)
    rows = []
    for protocol in protocols:
        metric = HEADLINE[get_protocol(protocol).kind]
        base = None
        for name, (recipe, epochs) in encoders.items():
            mine = _mine(runs, recipe, epochs, protocol)
            if mine.empty or metric not in mine.columns:
                continue
            run = mine.sort_values("start_time").iloc[-1]
            value = float(run[metric])
            base = value if name == RANDOM_INIT else base
            rows.append({"protocol": protocol, "encoder": name, "metric": metric, "value": round(value, 2),
                         "Δ vs random-init": None if base is None else round(value - base, 2),
                         "protocol seconds": round(float(run.get("eval_seconds", float("nan"))), 1),
                         "sslbench eval seconds": times.get(f"{name} {protocol}")})
    frame = pd.DataFrame(rows)
    return frame


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", default="simclr,byol", help="SSL methods (their -quick recipes)")
    parser.add_argument("--protocols", default=",".join(DEFAULT_PROTOCOLS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)

    from sslbench.protocols import get_protocol
    from sslbench.results.tables import to_markdown

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out / 'mlruns.db'}"
    protocols = [p for p in args.protocols.split(",") if p]
    for p in protocols:
        get_protocol(p)  # fail before any work
    methods = [m for m in args.methods.split(",") if m]
    encoders = {RANDOM_INIT: (f"{methods[0] if methods else 'simclr'}-quick", 0)}
    encoders.update({f"{m}-quick": (f"{m}-quick", args.epochs) for m in methods})
    failed = []
    times_file = out / "eval-seconds.json"  # whole `sslbench eval` processes, as a user waits for them
    if not args.table_only:
        for name, (recipe, epochs) in encoders.items():
            ckpt = _checkpoint(name, recipe, epochs, out, uri, args.seed)
            done = _done(uri)
            for protocol in protocols:
                mine = _mine(done, recipe, epochs, protocol)
                if not mine.empty and (mine["status"] == "FINISHED").any():
                    continue
                cmd = [sys.executable, "-m", "sslbench.benchmark.cli", "eval", str(ckpt), "--protocol", protocol,
                       "--tracking-uri", uri, "--experiment", EXPERIMENT, "--no-progress"]
                code, seconds, tail = _run(cmd)
                print(f"{name} {protocol}: exit {code} in {seconds:.0f} s: {tail}", flush=True)
                if code == 0:
                    times = json.loads(times_file.read_text()) if times_file.exists() else {}
                    times[f"{name} {protocol}"] = round(seconds, 1)
                    times_file.write_text(json.dumps(times, indent=1, sort_keys=True) + "\n")
                if code != 0:
                    failed.append(f"{name} {protocol}: {tail}")
    frame = table(uri, encoders, protocols, json.loads(times_file.read_text()) if times_file.exists() else {})
    frame.to_csv(out / "protocols.csv", index=False)
    text = to_markdown(frame) if not frame.empty else "(no results)"
    if failed:
        text += "\n\nFailed:\n" + "\n".join(f"- {f}" for f in failed)
    (out / "protocols.md").write_text(text + "\n")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
