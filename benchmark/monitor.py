"""Online monitoring during pretraining: curves to watch a run, never results to report.

With a ``monitor`` config section (:class:`~sslbench.benchmark.config.MonitorConfig`) the engine
logs, under the MLflow prefix ``monitor/``:

* every ``probe_every_steps`` optimiser steps (and at step 0), the representation diagnostics of
  :mod:`sslbench.protocols.diagnostics` on a fixed probe batch (``monitor/alignment``,
  ``monitor/uniformity``, ``monitor/rankme``, ``monitor/normalized_std``; step = global step),
  with the collapse alarm: the first time ``normalized_std`` falls below
  :data:`~sslbench.protocols.diagnostics.COLLAPSE_THRESHOLD`, a :class:`CollapseWarning`, the
  same paragraph on stderr, and the MLflow tag ``collapse_alarm`` = that step;
* every ``knn_every_epochs`` epochs, ``monitor/knn_top1``: the weighted kNN of the
  ``knn-k200-t0.1`` protocol on a stratified held-out slice of the *training* split against the
  rest (step = epoch);
* every ``linear_every_epochs`` epochs, ``monitor/linear_top1``: the held-out top-1 of a linear
  head trained at every step on detached features of the batch's first view (step = epoch).

These are monitoring curves (solo-learn's online classifier, SimSiam's std plot), measured on
training images with a head that trails a moving encoder; **final numbers always come from the
offline protocols** (``sslbench eval``, :mod:`sslbench.protocols`) on the finished encoder.

Monitoring never changes the trained weights: the encoder runs in eval mode (BatchNorm running
statistics untouched) under ``torch.no_grad``, the head has its own optimiser, every random draw
comes from the monitor's own generators, and the global RNG is restored around all of it
(``torch.random.fork_rng``), so a run is bit-identical with and without monitoring (tested on
CPU). The head, its optimiser, the curves and the alarm go into the checkpoint: a resumed run
continues them exactly and logs no step twice. Only the main process monitors (under data
parallelism the head sees rank 0's slice of each batch).

Costs: one extra no-grad forward of the first view per step with the linear head (about a third
of a training step's compute); a forward over the whole training split per kNN epoch; the probe
views (2 x ``probe_size`` images in float32) stay on the training device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslbench.benchmark.augment import BatchAugment, to_float_normalized
from sslbench.benchmark.config import MonitorConfig
from sslbench.benchmark.errors import ConfigError
from sslbench.protocols.diagnostics import (
    COLLAPSE_THRESHOLD,
    CollapseWarning,
    alignment,
    collapse_warning,
    normalized_std,
    rankme,
    uniformity,
)
from sslbench.protocols.features import extract_features, frozen_eval
from sslbench.protocols.knn import knn_classify
from sslbench.protocols.linear import stratified_split
from sslbench.protocols.spec import KNNSpec, get_protocol

__all__ = ["METRIC_PREFIX", "TAG_COLLAPSE_ALARM", "Monitor", "probe_metrics"]

METRIC_PREFIX = "monitor/"
#: MLflow tag set to the global step at which the collapse alarm first tripped
TAG_COLLAPSE_ALARM = "collapse_alarm"
#: MLflow tag holding the monitor settings as JSON (a tag, not params: it may change on resume)
TAG_MONITOR = "monitor"
#: the registered kNN spec whose k and temperature the online kNN uses
KNN_PROTOCOL = "knn-k200-t0.1"
#: Adam learning rate of the online linear head (on batch-normalised features, MAE's linear-probe
#: head; constant, no schedule). MEASURED, simclr-quick, held-out top-1 after epochs 1/2/3:
#: 1e-3 34/58/57, 1e-2 48/64/65, 3e-2 47/61/65, 1e-1 42/54/61 (online kNN: 70/72/72).
LINEAR_LR = 1e-2
# the monitor's own random streams, derived from train.seed
_PROBE_IMAGES, _PROBE_VIEWS, _HOLDOUT, _HEAD = 1, 2, 3, 4


def monitor_seed(seed: int, stream: int) -> int:
    """A reproducible seed per (run seed, monitor stream), distinct from the engine's streams."""
    return (seed * 1_000_003 + stream * 982_451_653 + 2_147_483_647) % (2**63 - 1)


def probe_metrics(z1: Tensor, z2: Tensor) -> dict[str, float]:
    """The probe's diagnostics: alignment of the two views' features, and uniformity, RankMe and
    normalised std (x sqrt(d)) of the first view's (see :mod:`sslbench.protocols.diagnostics`).

    Shape:
        z1, z2: (N, D), row i of both from the same image.
    """
    return {
        f"{METRIC_PREFIX}alignment": float(alignment(z1, z2)),
        f"{METRIC_PREFIX}uniformity": float(uniformity(z1)),
        f"{METRIC_PREFIX}rankme": float(rankme(z1)),
        f"{METRIC_PREFIX}normalized_std": float(normalized_std(z1)),
    }


def _images_at(train: Any, indices: Tensor) -> Tensor:
    """uint8 images at ``indices`` of an in-memory split or an image-folder split."""
    images = getattr(train, "images", None)
    if isinstance(images, Tensor):
        return images[indices.to(images.device)]
    from sslbench.benchmark.datasets import decode_image

    return torch.stack([decode_image(train.samples[i][0], train.info.image_size) for i in indices.tolist()])


class Monitor:
    """The online monitor of one pretraining run (see the module docstring). Every method is a
    no-op for what the config leaves off; the engine calls, in order:

    ``load_state_dict`` (on resume) -> ``start`` -> per step ``after_step`` -> per epoch
    ``end_epoch`` -> checkpoint with ``state_dict`` -> ``flush`` (logs the epoch's curves after the
    checkpoint, so that a logged step is always a saved one).

    Args:
        cfg: the ``monitor`` section.
        encoder: the method's backbone (the module protocols evaluate), never modified.
        train: the training split (``.labels``, ``.batches``, ``.info``, ``len()``).
        augment: the run's augmentation; the probe's two views are its first two views.
        image_size: the side the encoder sees (plain preprocessing resizes to it).
        feature_dim: the encoder's feature dimension.
        seed: the run's ``train.seed``; every monitor stream derives from it.
        device: the training device.
        method: the method's name (for the alarm's message).
        batch_size: images per forward pass.
        forward_context: the training's autocast context factory (bf16 on CUDA).
        active: False on data-parallel ranks other than 0 (nothing is monitored there).

    Raises:
        ConfigError: online kNN / linear on a split without two labelled images per class.
    """

    def __init__(self, cfg: MonitorConfig, *, encoder: nn.Module, train: Any, augment: BatchAugment,
                 image_size: int, feature_dim: int, seed: int, device: torch.device, method: str,
                 batch_size: int,
                 forward_context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
                 active: bool = True) -> None:
        self.cfg = cfg
        self.encoder = encoder
        self.train = train
        self.device = device
        self.method = method
        self.batch_size = batch_size
        self.image_size = image_size
        self.forward_context = forward_context
        self.probe_every = cfg.probe_every_steps if active else 0
        self.knn_every = cfg.knn_every_epochs if active else 0
        self.linear_every = cfg.linear_every_epochs if active else 0
        self.history: list[dict[str, float]] = []  # {"step": s, "monitor/...": value, ...}
        self._pending: list[dict[str, float]] = []  # recorded, not yet logged
        self.alarm_step: int | None = None
        self.run: Any = None
        self.views: list[Tensor] = []
        self.head: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.labelled = self.holdout = torch.zeros(0, dtype=torch.bool)  # (N,) masks, with kNN / linear
        self._holdout_dev = self.holdout
        self.num_classes = 0
        with self._own_rng():
            if self.probe_every:
                n = min(cfg.probe_size, len(train))
                g = torch.Generator().manual_seed(monitor_seed(seed, _PROBE_IMAGES))
                idx = torch.randperm(len(train), generator=g)[:n].sort().values
                images = _images_at(train, idx).to(device)
                views_gen = torch.Generator(device=device).manual_seed(monitor_seed(seed, _PROBE_VIEWS))
                self.views = augment(images, views_gen)[:2]  # made once, reused at every probe
            if self.knn_every or self.linear_every:
                self._build_holdout(seed)
            if self.linear_every:
                self._build_head(feature_dim, seed)

    # ----------------------------------------------------------------------------------------
    # set-up

    def _build_holdout(self, seed: int) -> None:
        labels = torch.as_tensor(self.train.labels).long().cpu()
        self.labelled = labels >= 0
        if int(self.labelled.sum()) < 2:
            raise ConfigError(
                f"Online kNN / linear monitoring needs labelled training images; '{self.train.info.name}' "
                "has none (every label is -1).",
                "Set monitor.knn_every_epochs=0 and monitor.linear_every_epochs=0 (the probe needs no labels).")
        self.num_classes = int(getattr(self.train.info, "num_classes", 0) or 0) or int(labels.max()) + 1
        rows = torch.nonzero(self.labelled).flatten()
        _, held = stratified_split(labels[rows], self.cfg.holdout_fraction, monitor_seed(seed, _HOLDOUT))
        self.holdout = torch.zeros(len(labels), dtype=torch.bool)
        self.holdout[rows[held]] = True
        self._holdout_dev = self.holdout.to(self.device)

    def _build_head(self, dim: int, seed: int) -> None:
        # BatchNorm without affine before the linear layer (MAE's linear probe): the head sees
        # features of any scale; initialised like nn.Linear, from the monitor's own generator.
        linear = nn.Linear(dim, self.num_classes)
        g = torch.Generator().manual_seed(monitor_seed(seed, _HEAD))
        bound = 1.0 / math.sqrt(dim)
        with torch.no_grad():
            linear.weight.copy_((torch.rand(linear.weight.shape, generator=g) * 2 - 1) * bound)
            linear.bias.copy_((torch.rand(linear.bias.shape, generator=g) * 2 - 1) * bound)
        self.head = nn.Sequential(nn.BatchNorm1d(dim, affine=False), linear).to(self.device)
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=LINEAR_LR)

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Restores the global (and the device's) RNG state afterwards: nothing the monitor does,
        e.g. a DataLoader drawing its base seed, reaches the training's random numbers."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            yield

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        """Eval mode, no_grad, the training's autocast, the RNG restored afterwards."""
        with self._own_rng(), torch.no_grad(), frozen_eval(self.encoder), self.forward_context():
            yield

    # ----------------------------------------------------------------------------------------
    # the engine's calls

    def state_dict(self) -> dict[str, Any]:
        """What goes into the checkpoint (empty when nothing was monitored)."""
        state: dict[str, Any] = {}
        if self.history or self.alarm_step is not None:
            state.update(history=[dict(h) for h in self.history], alarm_step=self.alarm_step)
        if self.head is not None and self.optimizer is not None:
            state.update(linear_head=self.head.state_dict(), linear_optimizer=self.optimizer.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restores a checkpoint's monitor state (a head absent there starts fresh: linear
        monitoring switched on at resume)."""
        if not state:
            return
        self.history = [dict(h) for h in state.get("history", [])]
        self.alarm_step = state.get("alarm_step")
        if self.head is not None and self.optimizer is not None and "linear_head" in state:
            self.head.load_state_dict(state["linear_head"])
            self.optimizer.load_state_dict(state["linear_optimizer"])

    def start(self, run: Any, *, fresh: bool) -> None:
        """Attaches the MLflow run (None: no tracking), logs the curves a checkpoint holds and
        MLflow lacks (a job killed between a checkpoint and its logging), and on a fresh run
        probes the initial encoder (step 0)."""
        self.run = run
        if run is not None:
            if self.cfg.enabled:
                run.set_tags({TAG_MONITOR: json.dumps(dataclasses.asdict(self.cfg), sort_keys=True)})
            logged: dict[str, set[int]] = {}
            for entry in self.history:
                step = int(entry["step"])
                missing = {}
                for key, value in entry.items():
                    if key == "step":
                        continue
                    if key not in logged:
                        logged[key] = run.metric_steps(key)
                    if step not in logged[key]:
                        missing[key] = value
                if missing:
                    run.log_metrics(missing, step=step)
        if fresh and self.probe_every:
            self._probe(0)

    def after_step(self, step: int, view: Tensor, labels: Tensor, indices: Tensor) -> None:
        """After optimiser step ``step`` (1-based count of steps done): one update of the online
        head on the batch's first view, then the probe when ``step`` is a multiple of
        ``probe_every_steps``.

        Shape:
            view: (B, C, H, W) the batch's first augmented view; labels, indices: (B,).
        """
        if self.head is not None:
            self._train_head(view, labels, indices)
        if self.probe_every and step % self.probe_every == 0:
            self._probe(step)

    def end_epoch(self, epoch: int, *, last: bool) -> None:
        """After epoch ``epoch`` (1-based): the online kNN and the head's held-out top-1 when due
        (every N epochs, and after the run's last epoch)."""
        knn = bool(self.knn_every) and (epoch % self.knn_every == 0 or last)
        linear = bool(self.linear_every) and (epoch % self.linear_every == 0 or last)
        if not (knn or linear):
            return
        # kNN embeds every labelled image (bank + queries); the head needs the held-out ones only
        subset = self.labelled if knn else self.holdout
        preprocess = self._preprocess
        with self._frozen():
            # no autocast or memory format of its own: the training's forward_context governs
            features, labels = extract_features(self.encoder, self.train, batch_size=self.batch_size,
                                                device=self.device, preprocess=preprocess, subset=subset,
                                                precision="fp32", channels_last=False)
        features = features.float()
        held = self.holdout[subset]
        metrics: dict[str, float] = {}
        if knn:
            spec = get_protocol(KNN_PROTOCOL)
            assert isinstance(spec, KNNSpec)
            bank = features[~held].to(self.device)
            result = knn_classify(bank, labels[~held], features[held], labels[held],
                                  num_classes=self.num_classes, k=spec.k, temperature=spec.temperature)
            metrics[f"{METRIC_PREFIX}knn_top1"] = result["top1"]
        if linear:
            assert self.head is not None
            self.head.eval()
            with torch.no_grad():
                logits = self.head(features[held].to(self.device))
            self.head.train()
            correct = (logits.argmax(dim=1).cpu() == labels[held]).sum()
            metrics[f"{METRIC_PREFIX}linear_top1"] = 100.0 * float(correct) / int(held.sum())
        self._record(epoch, metrics)

    def flush(self) -> None:
        """Logs the curves recorded since the last flush (call after the checkpoint)."""
        if self.run is not None:
            for entry in self._pending:
                self.run.log_metrics({k: v for k, v in entry.items() if k != "step"}, step=int(entry["step"]))
        self._pending = []

    # ----------------------------------------------------------------------------------------
    # the measurements

    def _preprocess(self, images: Tensor) -> Tensor:
        info = self.train.info
        return to_float_normalized(images, info.mean, info.std, size=self.image_size)

    def _record(self, step: int, metrics: dict[str, float]) -> None:
        entry = {"step": float(step), **metrics}
        self.history.append(entry)
        self._pending.append(entry)

    def _embed(self, images: Tensor) -> Tensor:
        parts = [self.encoder(images[i : i + self.batch_size]).float()
                 for i in range(0, images.shape[0], self.batch_size)]
        return torch.cat(parts)

    def _probe(self, step: int) -> None:
        with self._frozen():
            z1, z2 = self._embed(self.views[0]), self._embed(self.views[1])
        metrics = probe_metrics(z1, z2)
        self._record(step, metrics)
        if self.alarm_step is None and metrics[f"{METRIC_PREFIX}normalized_std"] < COLLAPSE_THRESHOLD:
            self._alarm(step, z1)

    def _alarm(self, step: int, z: Tensor) -> None:
        message = collapse_warning(z, context=f"Pretraining '{self.method}', step {step} (online monitor, "
                                              f"{z.shape[0]} fixed training images): ")
        if message is None:  # float rounding between the two computations; the metric decided
            return
        self.alarm_step = step
        print(f"WARNING: {message}", file=sys.stderr)
        warnings.warn(CollapseWarning(message), stacklevel=3)
        if self.run is not None:
            self.run.set_tags({TAG_COLLAPSE_ALARM: str(step)})

    def _train_head(self, view: Tensor, labels: Tensor, indices: Tensor) -> None:
        assert self.head is not None and self.optimizer is not None
        labels = labels.to(self.device)
        keep = (labels >= 0) & ~self._holdout_dev[indices.to(self.device)]
        if int(keep.sum()) < 2:  # BatchNorm needs two rows
            return
        with self._frozen():
            features = self.encoder(view[keep]).float()
        loss = F.cross_entropy(self.head(features), labels[keep])  # draws no random numbers
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
