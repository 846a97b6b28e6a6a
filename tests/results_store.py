"""A throwaway MLflow store of runs with known values, for the reproduction, leaderboard and
browser tests (built through TrackedRun, like real runs), and a reference table to check it by."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from sslbench.results import tracking as T
from sslbench.results.reference import COLUMN_NAMES

# (method, dataset, batch size, protocol) -> top-1 per seed. Chosen so each verdict occurs once:
RUNS: dict[tuple[str, str, int, str], dict[int, float]] = {
    ("simclr", "cifar10", 256, "linear"): {0: 89.6, 1: 90.1, 2: 90.9},  # CI holds 90.0: reproduced
    ("byol", "cifar10", 256, "linear"): {0: 90.0, 1: 90.1, 2: 90.2},  # ref 91.0: within tolerance
    ("mocov2", "cifar10", 256, "linear"): {0: 89.9, 1: 90.0, 2: 90.1},  # ref 95.0: not reproduced
    ("dino", "cifar10", 128, "linear"): {0: 85.0, 1: 86.0},  # ref at batch 256: not comparable
    ("simsiam", "cifar10", 256, "linear"): {0: 89.8},  # one seed, ref 90.2: within tolerance
    ("simclr", "cifar10", 256, "knn-k200-t0.1"): {0: 85.0, 1: 85.5, 2: 86.5},
    ("byol", "cifar10", 256, "knn-k200-t0.1"): {0: 86.0, 1: 86.2, 2: 86.1},
    ("simclr", "stl10", 256, "knn-k200-t0.1"): {0: 70.0, 1: 71.0},
}
EPOCHS = 1000
BACKBONE = "resnet18-small"
WALL_S = {"simclr": 3600.0, "byol": 7200.0, "mocov2": 1800.0, "dino": 900.0, "simsiam": 5400.0}
BEST_EPOCH = {("simclr", "cifar10", 256, "linear"): 91.5}  # a logged best-epoch number

# id, method, dataset, batch, protocol, value, tolerance
REFERENCE = [
    ("t.simclr", "simclr", "cifar10", 256, "linear", 90.0, 1.0),
    ("t.byol", "byol", "cifar10", 256, "linear", 91.0, 1.0),
    ("t.mocov2", "mocov2", "cifar10", 256, "linear", 95.0, 1.0),
    ("t.dino", "dino", "cifar10", 256, "linear", 88.0, 1.0),
    ("t.simsiam", "simsiam", "cifar10", 256, "linear", 90.2, 1.0),
    ("t.simclr.knn20", "simclr", "cifar10", 256, "knn-k20-t0.07", 84.0, 1.0),
]


@dataclasses.dataclass
class ResultsStore:
    uri: str
    reference_dir: Path
    pretrain_ids: dict[tuple[str, str, int, int], str]


def write_reference(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "test.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMN_NAMES)
        w.writeheader()
        for rid, method, dataset, bs, protocol, value, tol in REFERENCE:
            w.writerow({
                "id": rid, "method": method, "paper": f"{method} (test)", "dataset": dataset,
                "backbone": BACKBONE, "epochs": EPOCHS, "batch_size": bs, "protocol": protocol,
                "metric": "top1", "value": value, "source": "tests/results_store.py",
                "provenance": "M", "tolerance": tol, "reported_by": "tests",
            })  # fmt: skip
    return path


def build_store(root: Path) -> ResultsStore:
    uri = f"sqlite:///{root / 'mlruns.db'}"
    provenance = T.provenance_tags("cpu")
    pretrain_ids: dict[tuple[str, str, int, int], str] = {}
    for (method, dataset, bs, protocol), seeds in RUNS.items():
        for seed, top1 in seeds.items():
            key = (method, dataset, bs, seed)
            if key not in pretrain_ids:
                tags = {
                    T.TAG_KIND: T.KIND_PRETRAIN, T.TAG_METHOD: method, T.TAG_RECIPE: f"{method}-{dataset}",
                    T.TAG_AUGMENT: "simclr-small", T.TAG_DATASET: dataset, T.TAG_BACKBONE: BACKBONE,
                    T.TAG_BATCH_SIZE: str(bs), T.TAG_EPOCHS: str(EPOCHS), T.TAG_SEED: str(seed),
                    T.TAG_CONFIG_HASH: f"h-{method}-{dataset}-{bs}-{seed}", **provenance,
                }  # fmt: skip
                with T.TrackedRun(run_name=T.pretrain_run_name(f"{method}-{dataset}", seed, batch_size=bs), tags=tags,
                                  tracking_uri=uri) as run:
                    run.log_params({"derived.world_size": 1})
                    run.log_metrics({
                        T.METRIC_FINAL_WALL_TIME_S: WALL_S[method] + 60.0 * seed,
                        T.METRIC_FINAL_IMAGES_PER_S: 1000.0 + seed, T.METRIC_FINAL_PEAK_MEMORY_MB: 512.0 + seed,
                    })  # fmt: skip
                    pretrain_ids[key] = run.run_id
            parent_tags = T.run_tags(pretrain_ids[key], tracking_uri=uri)
            tags = {
                **T.identity_tags(parent_tags), T.TAG_KIND: T.KIND_EVAL, T.TAG_PROTOCOL: protocol,
                T.TAG_PROTOCOL_VERSION: "1", T.TAG_PROTOCOL_SPEC: json.dumps({"name": protocol}),
                T.TAG_EVAL_DATASET: dataset,
            }  # fmt: skip
            with T.TrackedRun(run_name=T.eval_run_name(protocol, T.run_name(pretrain_ids[key], tracking_uri=uri)), tags=tags, tracking_uri=uri,
                              parent_run_id=pretrain_ids[key]) as run:
                metrics = {T.METRIC_TOP1: top1, T.METRIC_TOP5: min(100.0, top1 + 9.0)}
                best = BEST_EPOCH.get((method, dataset, bs, protocol))
                if best is not None:
                    metrics[T.METRIC_BEST_EPOCH_TOP1] = best + 0.1 * seed
                run.log_metrics(metrics)
    write_reference(root / "reference")
    return ResultsStore(uri, root / "reference", pretrain_ids)
