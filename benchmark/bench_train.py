"""Training speed: images/s of the real engine per method and per speed switch, against a
per-image ``DataLoader`` pipeline feeding the same model.

For each method (default SimCLR, MoCo v2, BYOL: their ``-cifar10`` recipes, ResNet-18 with the
CIFAR stem, batch 512, bf16 on CUDA) on ``synthetic-cifar`` (50,000 generated RGB images of
32 px, CIFAR-10's shapes; nothing downloads), it runs :func:`sslbench.benchmark.engine.pretrain`
for ``--warmup`` + ``--steps`` optimisation steps under each variant:

- ``fast``: every switch at its CUDA setting (cuDNN benchmark, foreach LARS), compile off;
- ``cudnn_benchmark=off``, ``foreach=off``, ``precision=fp32``: one switch turned back;
- ``compile=default`` / ``compile=reduce-overhead`` (``--compile``; the compile time apart);
- ``dataloader``: torchvision v2 transforms per image in a ``DataLoader`` with as many workers
  as cores (lightly's and solo-learn's style), then the same SimCLR step (SimCLR only).

Per variant it prints images/s after warm-up, the ratio to ``fast`` and to the DataLoader
baseline, peak memory, kernels per step (CUDA kernels from the profiler; on CPU the aten ops) and
host synchronisations per step (CUDA: ``torch.cuda.set_sync_debug_mode``; CPU: tensor-to-Python
conversions made by sslbench code). It also times one checkpoint written synchronously and the
blocking part of an asynchronous one, as a share of an epoch, and with ``--e2e-epochs N`` runs a
short end-to-end pretraining + kNN and projects the wall time of 200 epochs + kNN.

Run it::

    python -m sslbench.benchmark.bench_train --json bench-train.json            # CUDA: the full table
    python -m sslbench.benchmark.bench_train --small                            # CPU: a small smoke run

Numbers are per device and per run: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

FAST = ["train.cudnn_benchmark=on", "train.foreach=on", "train.async_checkpoint=on"]
VARIANTS: dict[str, list[str]] = {
    "fast": [],
    "cudnn_benchmark=off": ["train.cudnn_benchmark=off"],
    "foreach=off": ["train.foreach=off"],
    "precision=fp32": ["train.precision=fp32"],
}
COMPILE_VARIANTS = {"compile=default": ["train.compile=default"],
                    "compile=reduce-overhead": ["train.compile=reduce-overhead"]}


@dataclass
class Row:
    """One measured configuration."""

    method: str
    variant: str
    images_per_s: float
    step_ms: float
    peak_memory_mb: float
    kernels_per_step: float | None = None
    syncs_per_step: float | None = None
    compile_time_s: float | None = None
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def count_host_reads() -> Iterator[dict[str, int]]:
    """Counts tensor-to-Python conversions (``item``, ``float``, ``int``, ``bool``, ``tolist``)
    called from sslbench code: on CPU the stand-in for CUDA's synchronisation counter."""
    counts = {"n": 0}
    saved = {}
    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        original = getattr(torch.Tensor, name)
        saved[name] = original

        def wrapper(self: torch.Tensor, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if sys._getframe(1).f_globals.get("__name__", "").startswith("sslbench"):
                counts["n"] += 1
            return _original(self, *args, **kwargs)

        setattr(torch.Tensor, name, wrapper)
    try:
        yield counts
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


class _StepProbe:
    """The engine's ``step_hook``: times ``steps`` steps after ``warmup``, then profiles a few more
    for kernel and synchronisation counts."""

    def __init__(self, device: torch.device, warmup: int, steps: int, profile_steps: int) -> None:
        self.device, self.warmup, self.steps, self.profile_steps = device, warmup, steps, profile_steps
        self.t0 = self.t1 = 0.0
        self.kernels: float | None = None
        self.syncs: float | None = None
        self._prof: Any = None
        self._reads: Any = None
        self._warnings: Any = None

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps + self.profile_steps

    def __call__(self, step: int) -> None:
        if step == self.warmup:
            _sync(self.device)
            self.t0 = time.perf_counter()
        elif step == self.warmup + self.steps:
            _sync(self.device)
            self.t1 = time.perf_counter()
            if self.profile_steps:
                self._start_profile()
        elif step == self.total_steps and self.profile_steps:
            self._stop_profile()

    def _start_profile(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        cuda = self.device.type == "cuda"
        self._prof = profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU])
        self._prof.__enter__()
        if cuda:
            self._warnings = warnings.catch_warnings(record=True)
            self._caught = self._warnings.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        else:
            self._reads = count_host_reads()
            self._counts = self._reads.__enter__()

    def _stop_profile(self) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
            self._warnings.__exit__(None, None, None)
            self.syncs = sum("synchroniz" in str(w.message) for w in self._caught) / self.profile_steps
        else:
            self._reads.__exit__(None, None, None)
            self.syncs = self._counts["n"] / self.profile_steps
        _sync(self.device)
        self._prof.__exit__(None, None, None)
        from torch.autograd import DeviceType

        events = self._prof.events()
        if cuda:
            n = sum(1 for e in events if e.device_type == DeviceType.CUDA)
        else:
            n = sum(1 for e in events if e.name.startswith("aten::") and e.cpu_parent is None)
        self.kernels = n / self.profile_steps

    @property
    def images_per_s_factor(self) -> float:
        return self.steps / max(1e-9, self.t1 - self.t0)


def _peak_mb(device: torch.device) -> float:
    from sslbench.benchmark.engine import peak_memory_mb

    return peak_memory_mb(device)


def _config(method: str, args: argparse.Namespace, extra: Sequence[str]) -> Any:
    from sslbench.benchmark.recipes import resolve

    base = [f"data.dataset={args.dataset}", f"data.batch_size={args.batch_size}", f"train.device={args.device}",
            "train.finite_check_every=1000", "train.seed=0", *args.set]
    recipe = f"{method}-{args.recipe_suffix}"
    return resolve(recipe, base + FAST + list(extra))


def measure_engine(method: str, variant: str, extra: Sequence[str], args: argparse.Namespace) -> Row:
    """Runs the engine for warm-up + measured + profiled steps and returns the row."""
    from sslbench.benchmark.engine import pretrain, resolve_device

    cfg = _config(method, args, extra)
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    probe = _StepProbe(device, args.warmup, args.steps, args.profile_steps)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        pretrain(cfg, Path(tmp) / "run", tracking=None, progress=False, max_steps=probe.total_steps,
                 step_hook=probe)
        total = time.perf_counter() - t
    rate = probe.images_per_s_factor * cfg.data.batch_size
    compile_s = None
    if cfg.train.compile != "off":  # everything before the measured steps beyond their own pace
        compile_s = max(0.0, total - probe.total_steps / probe.images_per_s_factor)
    return Row(method, variant, rate, 1000 * cfg.data.batch_size / rate, _peak_mb(device), probe.kernels,
               probe.syncs, compile_s)


def _in_memory(dataset: Any) -> Any:
    from sslbench.benchmark.datasets import ArrayDataset

    if not isinstance(dataset, ArrayDataset):
        raise SystemExit(f"bench_train needs an in-memory dataset (synthetic-cifar, cifar10, ...), got {dataset!r}")
    return dataset


def measure_dataloader(args: argparse.Namespace) -> Row:
    """SimCLR's step fed by a per-image torchvision v2 pipeline in a multi-worker DataLoader."""
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    from sslbench.benchmark.datasets import load_dataset
    from sslbench.benchmark.engine import _autocast, build_method, resolve_device
    from sslbench.benchmark.optim import build_optimizer
    from sslbench.methods import StepContext

    cfg = _config("simclr", args, [])
    device = resolve_device(cfg.train.device)
    train = _in_memory(load_dataset(cfg.data.dataset, "train"))
    info = train.info
    size = info.image_size
    transform = v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(info.mean), list(info.std)),
    ])

    class TwoViews(Dataset[tuple[torch.Tensor, torch.Tensor]]):
        def __len__(self) -> int:
            return len(train)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            image = train.images[i]
            return transform(image), transform(image)

    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    loader = DataLoader(TwoViews(), batch_size=cfg.data.batch_size, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=workers > 0,
                        prefetch_factor=4 if workers else None)
    method = build_method(cfg, info.channels, size, len(train)).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method.param_groups(), cfg.optim, 0.1, foreach=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    method.train()
    done, t0 = 0, 0.0
    total = args.warmup + args.steps
    while done < total:
        for v1, v2_ in loader:
            views = [v.to(device, non_blocking=True) for v in (v1, v2_)]
            if channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            with _autocast(device, cfg.train.precision):
                out = method(views, StepContext(done, total, total))
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            method.on_step_end(out, StepContext(done, total, total))
            done += 1
            if done == args.warmup:
                _sync(device)
                t0 = time.perf_counter()
            if done == total:
                break
    _sync(device)
    rate = args.steps * cfg.data.batch_size / (time.perf_counter() - t0)
    return Row("simclr", "dataloader", rate, 1000 * cfg.data.batch_size / rate, _peak_mb(device),
               note=f"torchvision v2 per image, {workers} workers")


def measure_checkpoint(method: str, args: argparse.Namespace, epoch_s: float) -> dict[str, float]:
    """Seconds one checkpoint blocks training: written synchronously vs asynchronously."""
    from sslbench.benchmark.checkpoint import CheckpointWriter
    from sslbench.benchmark.engine import build_method, resolve_device
    from sslbench.benchmark.optim import build_optimizer

    cfg = _config(method, args, [])
    device = resolve_device(cfg.train.device)
    model = build_method(cfg, 3, 32, 50_000).to(device)
    optimizer = build_optimizer(model.param_groups(), cfg.optim, 0.1)
    state = {"epoch": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, asynchronous in (("sync", False), ("async", True)):
            writer = CheckpointWriter(asynchronous)
            writer.save(Path(tmp) / "warm.pt", state)  # first save allocates the pinned buffers
            writer.wait()
            t = time.perf_counter()
            writer.save(Path(tmp) / "last.pt", state)
            out[f"checkpoint_{name}_blocking_s"] = time.perf_counter() - t
            writer.wait()
        out["checkpoint_mb"] = (Path(tmp) / "last.pt").stat().st_size / 2**20
    for name in ("sync", "async"):
        out[f"checkpoint_{name}_share_of_epoch"] = out[f"checkpoint_{name}_blocking_s"] / max(1e-9, epoch_s)
    return out


def measure_end_to_end(args: argparse.Namespace) -> dict[str, float]:
    """A short SimCLR pretraining on the whole split, kNN on its test split, and the projected
    wall time of 200 epochs + kNN (first epoch as measured, the rest at the median later epoch)."""
    from sslbench.benchmark.checkpoint import load_checkpoint
    from sslbench.benchmark.datasets import load_dataset
    from sslbench.benchmark.engine import pretrain
    from sslbench.protocols.features import extract_features
    from sslbench.protocols.knn import knn_classify

    cfg = _config("simclr", args, [f"train.epochs={args.e2e_epochs}", f"train.checkpoint_every={args.e2e_epochs}"])
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        result = pretrain(cfg, Path(tmp) / "run", tracking=None, progress=False)
        pretrain_s = time.perf_counter() - t
        history = load_checkpoint(result.checkpoint)["history"]
    epochs = [h["train/epoch_time_s"] for h in history]
    later = statistics.median(epochs[1:]) if len(epochs) > 1 else epochs[0]
    t = time.perf_counter()
    device = result.device
    train = _in_memory(load_dataset(cfg.data.dataset, "train")).to(device)
    test = _in_memory(load_dataset(cfg.data.dataset, "test")).to(device)
    info = train.info
    from sslbench.benchmark.augment import to_float_normalized

    def prep(images: torch.Tensor) -> torch.Tensor:
        return to_float_normalized(images, info.mean, info.std)

    _sync(device)
    t_eval = time.perf_counter()
    bank, bank_labels = extract_features(result.encoder, train, device=device, preprocess=prep,
                                         output_device=device)
    queries, query_labels = extract_features(result.encoder, test, device=device, preprocess=prep,
                                             output_device=device)
    scores = knn_classify(bank, bank_labels.to(device), queries, query_labels.to(device),
                          num_classes=info.num_classes, k=200, temperature=0.1)
    _sync(device)
    knn_s = time.perf_counter() - t_eval
    load_s = t_eval - t
    setup_s = pretrain_s - sum(epochs)
    projected = setup_s + epochs[0] + 199 * later + load_s + knn_s
    return {"e2e_epochs": float(len(epochs)), "e2e_pretrain_s": pretrain_s, "e2e_first_epoch_s": epochs[0],
            "e2e_median_epoch_s": later, "e2e_knn_s": knn_s, "e2e_knn_top1": scores["top1"],
            "e2e_projected_200_epochs_plus_knn_s": projected}


def _fmt(x: float | None, spec: str = ".0f") -> str:
    return "–" if x is None else format(x, spec)


def table(rows: list[Row]) -> str:
    """The markdown table: images/s and ratios per method and variant."""
    base = {r.method: r.images_per_s for r in rows if r.variant == "fast"}
    loader = next((r.images_per_s for r in rows if r.variant == "dataloader"), None)
    lines = ["| method | variant | images/s | × fast | × DataLoader | step ms | peak MiB | kernels/step | "
             "syncs/step | compile s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.images_per_s / base[r.method] if r.method in base else None
        vs_loader = r.images_per_s / loader if loader else None
        lines.append(f"| {r.method} | {r.variant} | {r.images_per_s:,.0f} | {_fmt(ratio, '.2f')} | "
                     f"{_fmt(vs_loader, '.2f')} | {r.step_ms:.1f} | {r.peak_memory_mb:,.0f} | "
                     f"{_fmt(r.kernels_per_step)} | {_fmt(r.syncs_per_step, '.2f')} | "
                     f"{_fmt(r.compile_time_s, '.1f')} |")
    return "\n".join(lines)


def environment(device: torch.device) -> dict[str, str]:
    """Versions, commit and device of this run."""
    import torchvision

    from sslbench.results.tracking import git_commit

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": str(torch.version.cuda),
            "python": sys.version.split()[0], "git_commit": git_commit(), "device": name,
            "cpus": str(os.cpu_count()), "seed": "0"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sslbench.benchmark.bench_train", description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="simclr,mocov2,byol", help="comma-separated methods")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated variants (default: all of {', '.join([*VARIANTS, 'dataloader'])})")
    p.add_argument("--compile", action="store_true", help="also measure compile=default and reduce-overhead")
    p.add_argument("--steps", type=int, default=40, help="measured steps per variant")
    p.add_argument("--warmup", type=int, default=15, help="steps before timing (cuDNN autotuning, caches)")
    p.add_argument("--profile-steps", type=int, default=3, help="steps profiled for kernel / sync counts")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--dataset", default="synthetic-cifar")
    p.add_argument("--recipe-suffix", default="cifar10", help="recipe = METHOD-SUFFIX")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: all cores)")
    p.add_argument("--e2e-epochs", type=int, default=0, help="end-to-end pretrain + kNN and a 200-epoch projection")
    p.add_argument("--set", action="append", default=[], help="extra KEY=VALUE config overrides")
    p.add_argument("--small", action="store_true",
                   help="a CPU smoke run: synthetic 16 px data, small CNN, batch 32, a few steps")
    p.add_argument("--json", type=Path, default=None, help="write the rows and the environment here")
    args = p.parse_args(argv)
    if args.small:
        args.dataset, args.recipe_suffix, args.batch_size = "synthetic", "quick", 32
        args.steps, args.warmup, args.profile_steps = min(args.steps, 4), min(args.warmup, 2), min(args.profile_steps, 2)
        args.workers = 0 if args.workers is None else args.workers
        args.set = [*args.set, "augment=simclr-small"]
    return args


def main(argv: Sequence[str] | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    args = parse_args(argv)
    from sslbench.benchmark.engine import resolve_device

    device = resolve_device(args.device)
    variants = dict(VARIANTS)
    if args.compile:
        variants.update(COMPILE_VARIANTS)
    chosen = args.variants.split(",") if args.variants else [*variants, "dataloader"]
    unknown = sorted(set(chosen) - set(variants) - {"dataloader"})
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from "
                         f"{', '.join([*variants, *COMPILE_VARIANTS, 'dataloader'])}")
    variants.update(COMPILE_VARIANTS)
    rows: list[Row] = []
    extras: dict[str, float] = {}
    for method in args.methods.split(","):
        for variant in chosen:
            if variant == "dataloader":
                continue
            rows.append(measure_engine(method, variant, variants[variant], args))
            echo(f"{method:8s} {variant:24s} {rows[-1].images_per_s:10,.0f} images/s")
        fast = next((r for r in rows if r.method == method and r.variant == "fast"), None)
        if fast is not None:
            epoch_s = 50_000 / fast.images_per_s if args.dataset == "synthetic-cifar" else 256 / fast.images_per_s
            for k, v in measure_checkpoint(method, args, epoch_s).items():
                extras[f"{method}/{k}"] = v
    if "dataloader" in chosen and "simclr" in args.methods.split(","):
        rows.append(measure_dataloader(args))
        echo(f"simclr   dataloader               {rows[-1].images_per_s:10,.0f} images/s")
    if args.e2e_epochs:
        extras.update(measure_end_to_end(args))
    report = {"environment": environment(device), "args": {k: str(v) for k, v in vars(args).items()},
              "rows": [asdict(r) for r in rows], "extra": extras}
    echo("")
    echo(table(rows))
    for k, v in extras.items():
        echo(f"{k}: {v:.4g}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
