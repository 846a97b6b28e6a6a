"""Named, versioned evaluation-protocol specs and their registry.

A spec holds *every* setting of one evaluation protocol, so that a stored result can say exactly
how it was measured: the spec's :meth:`to_dict` is written with every result. A spec's ``version``
starts at 1 and is bumped whenever the code that runs it changes behaviour (numbers measured under
different versions are not comparable); the changelog lives in the docstrings of
:mod:`sslbench.protocols.knn` and :mod:`sslbench.protocols.linear`.

Registered by default:

========================  ===================================================================
``knn-k200-t0.1``         weighted kNN, k=200, T=0.1 (InstDisc; lightly's ResNet default)
``knn-k20-t0.07``         weighted kNN, k=20, T=0.07 (DINO ``eval_knn.py``)
``linear``                linear probe on pre-computed features (fast path, no augmentation)
``linear-augmented``      linear probe on a frozen encoder with linear-eval augmentation
``semisup-1pct``          fine-tune the whole encoder on a class-balanced 1 % labelled subset
``semisup-10pct``         the same on 10 %
``semisup-1pct-distill``  1 % fine-tuning, then SimCLR v2 distillation on the unlabelled images
``semisup-10pct-distill`` the same on 10 %
``detection-embedded``    Faster R-CNN + FPN on the embedded detection set (offline, CPU-sized)
``detection-embedded-mask``  Mask R-CNN + FPN on the embedded detection set
``detection-voc0712-moco``  Faster R-CNN + FPN, VOC07+12 trainval -> VOC07 test, MoCo's 24k schedule
``detection-coco-moco-2x``  Mask R-CNN + FPN on COCO 2017 train -> val, MoCo's 2x schedule
``diagnostics``           alignment, uniformity, RankMe, normalised std, covariance spectrum
========================  ===================================================================

Specs of another *kind* (semi-supervised, detection, diagnostics) say in their docstrings where
they differ from the anchors' versions of the same protocol.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from sslbench.benchmark.errors import ConfigError, unknown_name

__all__ = [
    "DEFAULT_PROTOCOLS",
    "DetectionSpec",
    "DiagnosticsSpec",
    "KNNSpec",
    "LinearSpec",
    "SemiSupSpec",
    "ProtocolSpec",
    "get_protocol",
    "list_protocols",
    "register_protocol",
    "spec_from_dict",
]

LINEAR_MODES = ("features", "augmented")
DETECTION_MODELS = ("fasterrcnn-fpn", "maskrcnn-fpn")
DETECTION_NORMS = ("frozen", "sync", "train")
DETECTION_METRICS = ("coco", "voc07")
DETECTION_HEAD_SIZES = ("standard", "small")


def _check(ok: bool, spec_name: str, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"Protocol spec '{spec_name}': {problem}", fix)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_common(name: object, version: object, kind: object, expected_kind: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"Protocol spec name {name!r} is not a non-empty string.", "Give the spec a name.")
    _check(isinstance(version, int) and not isinstance(version, bool) and version >= 1, name,
           f"version={version!r} must be an integer >= 1.",
           "Start at version 1 and bump it when the protocol's behaviour changes.")
    _check(kind == expected_kind, name, f"kind={kind!r} must be {expected_kind!r} for this spec class.",
           f"Leave `kind` at its default {expected_kind!r}.")


@dataclass(frozen=True)
class KNNSpec:
    """Weighted k-nearest-neighbour classification on frozen features.

    Cosine similarity between L2-normalised features; each of the ``k`` nearest training features
    votes for its label with weight ``exp(sim / temperature)`` (Wu et al. 2018, InstDisc; DINO
    ``eval_knn.py``). See :func:`sslbench.protocols.knn.knn_predict`.

    Args:
        name: registry name, e.g. ``"knn-k200-t0.1"``.
        version: protocol version (bump on behaviour change).
        k: number of neighbours (clamped to the train-set size at evaluation time).
        temperature: softmax temperature T of the vote weights.
        kind: always ``"knn"``.
    """

    name: str
    version: int
    k: int
    temperature: float
    kind: str = "knn"

    def __post_init__(self) -> None:
        _check_common(self.name, self.version, self.kind, "knn")
        _check(_is_int(self.k) and self.k >= 1, self.name, f"k={self.k!r} must be an integer >= 1.",
               "Use e.g. k=20 or k=200.")
        _check(_is_real(self.temperature) and self.temperature > 0, self.name,
               f"temperature={self.temperature!r} must be a finite number > 0.", "Use e.g. 0.07 or 0.1.")
        object.__setattr__(self, "temperature", float(self.temperature))

    def to_dict(self) -> dict[str, Any]:
        """All settings as a JSON-ready dict (stored with every result)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LinearSpec:
    """Linear probe: a linear classifier trained on frozen features.

    The learning rate and weight decay are chosen from the grid ``lrs × weight_decays`` by top-1 on a
    stratified validation split carved from the *train* set (``val_fraction``, seeded by ``seed``);
    the classifier is then retrained on the full train set with the chosen values and scored once
    on the test set, after the last epoch (no epoch selection).

    Modes:
        ``"features"``: fast path on pre-computed features (no augmentation). Features are
            standardised with train statistics; the classifier is trained with Adam (coupled L2
            weight decay on the weights, none on the bias) under a cosine learning-rate schedule,
            mini-batches of ``batch_size`` (full batch when the split is smaller).
        ``"augmented"``: the standard path (SimCLR / MoCo v3 ``main_lincls.py`` style). The frozen
            encoder embeds fresh linear-eval crops every epoch; features pass a non-affine
            BatchNorm (MAE ``main_linprobe.py``) and a linear head trained with SGD (momentum 0.9,
            coupled weight decay, cosine schedule). Val and test images are plain-preprocessed.

    Args:
        name: registry name.
        version: protocol version (bump on behaviour change).
        mode: ``"features"`` or ``"augmented"``.
        val_fraction: fraction of each class of the train set held out for the grid search.
        lrs: learning rates of the grid.
        weight_decays: weight decays of the grid.
        epochs: training epochs, for every grid point and for the final retraining.
        batch_size: mini-batch size.
        seed: seeds the validation split, the initialisation, the shuffling and the augmentation.
        kind: always ``"linear"``.
    """

    name: str
    version: int
    mode: str = "features"
    val_fraction: float = 0.1
    # Adam on standardised features. Calibrated by validation top-1 on Fashion-MNIST (10k train;
    # raw pixels, random-init CNN and random-projection features): the best points lay at lr
    # 1e-2..1e-1 and wd 3e-3..1e-2; lr 3e-3 / 3e-1 and wd 3e-2 were never best. 20 epochs at
    # batch 512 matched 40-50 epochs and full-batch training within 0.3 points.
    lrs: tuple[float, ...] = (1e-2, 3e-2, 1e-1)
    weight_decays: tuple[float, ...] = (0.0, 1e-3, 3e-3, 1e-2)
    epochs: int = 20
    batch_size: int = 512
    seed: int = 0
    kind: str = "linear"

    def __post_init__(self) -> None:
        _check_common(self.name, self.version, self.kind, "linear")
        _check(self.mode in LINEAR_MODES, self.name, f"mode={self.mode!r} is not one of {LINEAR_MODES}.",
               "Use 'features' (fast, pre-computed features) or 'augmented' (frozen encoder, crops).")
        _check(_is_real(self.val_fraction) and 0 < self.val_fraction < 1, self.name,
               f"val_fraction={self.val_fraction!r} must lie strictly between 0 and 1.", "Use e.g. 0.1.")
        for field in ("lrs", "weight_decays"):
            values = getattr(self, field)
            _check(isinstance(values, (tuple, list)) and len(values) > 0, self.name,
                   f"{field}={values!r} must be a non-empty tuple of numbers.", f"Use e.g. {field}=(1e-3, 1e-2).")
            object.__setattr__(self, field, tuple(values))
        _check(all(_is_real(v) and v > 0 for v in self.lrs), self.name,
               f"lrs={self.lrs!r} must all be finite numbers > 0.", "Remove zero or negative learning rates.")
        _check(all(_is_real(v) and v >= 0 for v in self.weight_decays), self.name,
               f"weight_decays={self.weight_decays!r} must all be finite numbers >= 0.",
               "Remove negative weight decays.")
        _check(len(set(self.lrs)) == len(self.lrs) and len(set(self.weight_decays)) == len(self.weight_decays),
               self.name, "the lr / weight-decay grid has duplicate values.", "List each value once.")
        object.__setattr__(self, "lrs", tuple(float(v) for v in self.lrs))
        object.__setattr__(self, "weight_decays", tuple(float(v) for v in self.weight_decays))
        _check(_is_int(self.epochs) and self.epochs >= 1, self.name, f"epochs={self.epochs!r} must be an integer >= 1.",
               "Use e.g. epochs=30.")
        _check(_is_int(self.batch_size) and self.batch_size >= 1, self.name,
               f"batch_size={self.batch_size!r} must be an integer >= 1.", "Use e.g. batch_size=256.")
        _check(_is_int(self.seed), self.name, f"seed={self.seed!r} must be an integer.", "Use e.g. seed=0.")
        object.__setattr__(self, "val_fraction", float(self.val_fraction))

    def to_dict(self) -> dict[str, Any]:
        """All settings as a JSON-ready dict (stored with every result; tuples become lists)."""
        out = dataclasses.asdict(self)
        out["lrs"] = list(self.lrs)
        out["weight_decays"] = list(self.weight_decays)
        return out




def _check_ints(spec: Any, **lower_bounds: int | None) -> None:
    """Checks that each named field of ``spec`` is an integer at least its bound (None: any)."""
    for field, lo in lower_bounds.items():
        value = getattr(spec, field)
        _check(_is_int(value) and (lo is None or value >= lo), spec.name,
               f"{field}={value!r} must be an integer{'' if lo is None else f' >= {lo}'}.",
               f"Use e.g. {field}={lo or 0}.")


def _check_grid(spec_name: str, field: str, values: object, positive: bool) -> tuple[float, ...]:
    _check(isinstance(values, (tuple, list)) and len(values) > 0, spec_name,
           f"{field}={values!r} must be a non-empty tuple of numbers.", f"Use e.g. {field}=(1e-2, 1e-1).")
    assert isinstance(values, (tuple, list))
    ok = all(_is_real(v) and (v > 0 if positive else v >= 0) for v in values)
    _check(ok, spec_name, f"{field}={values!r} must all be finite numbers {'> 0' if positive else '>= 0'}.",
           "Remove the out-of-range values.")
    _check(len(set(values)) == len(values), spec_name, f"{field}={values!r} has duplicate values.",
           "List each value once.")
    return tuple(float(v) for v in values)


def _to_dict(spec: object) -> dict[str, Any]:
    out = dataclasses.asdict(spec)  # type: ignore[call-overload]
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


@dataclass(frozen=True)
class SemiSupSpec:
    """Semi-supervised fine-tuning: the whole encoder plus a linear classification head, trained on
    a fixed class-balanced labelled subset of the train split (SimCLR §4.2, BYOL Table 2).

    The labelled subset is drawn by :func:`sslbench.protocols.subsets.balanced_subset` with
    ``fraction`` or ``per_class`` and ``subset_seed`` (or loaded from a split file by the caller);
    its sha256 is recorded on the result. The learning rate is chosen from ``lrs`` by top-1 on a
    class-balanced validation split of ``val_per_class`` training images drawn *outside* the
    labelled subset (their labels are used for that choice only); the test split is scored once,
    after the last epoch, with the chosen model. With ``distill_epochs > 0`` the fine-tuned model
    then teaches a student on all training images, labels unused (SimCLR v2 §2, Eq. 2).

    Differences from the anchors: SimCLR/SimCLR v2 fine-tune with LARS at batch 4096 with no
    hyperparameter search (values chosen on ImageNet's validation images); BYOL and solo-learn
    report the best epoch; here SGD with a fixed epoch count, one chosen lr, final-epoch numbers.

    Args:
        name, version: registry name; protocol version (bump on behaviour change).
        fraction: labelled fraction (0.01 = 1 %); exactly one of ``fraction`` / ``per_class``.
        per_class: labelled images per class.
        subset_seed: seeds the labelled subset's draw (0 for the published sslbench subsets).
        val_per_class: validation images per class, outside the labelled subset.
        from_projector_layer: 0 fine-tunes the encoder; k >= 1 fine-tunes the encoder followed by
            the method's first k projector layers (SimCLR v2 §2; needs a method that has them).
        lrs: learning rates of the grid (SGD, momentum 0.9, Nesterov, cosine schedule).
        weight_decay: coupled weight decay.
        epochs: fine-tuning epochs over the labelled subset.
        batch_size: mini-batch size.
        augment: training augmentation recipe ("auto": ``linear-eval``, random resized crop + flip).
        distill_epochs: 0, or epochs of distillation over the whole train split.
        distill_temperature: tau of the teacher's and the student's softmax in the distillation loss.
        distill_student: "pretrained" (the pretrained encoder, as SimCLR v2's self-distillation
            starts) or "random" (the same architecture from random init).
        seed: seeds the validation split, head initialisation, shuffling and augmentation.
        kind: always ``"semisup"``.
    """

    name: str
    version: int
    fraction: float | None = 0.01
    per_class: int | None = None
    subset_seed: int = 0
    val_per_class: int = 50
    from_projector_layer: int = 0
    # Calibrated by validation top-1 only, on the embedded Fashion-MNIST at 1 % (100 labelled
    # images; small-cnn from random init, simclr-quick and byol-quick after 10 epochs; 3 seeds):
    # the chosen lr was 0.01..0.1 (0.003, 0.3 and 1.0 never best); batch 32 beat 64 by ~1.4 points
    # at an equal SSL-over-random margin (~6.5 points); 60 epochs gained ~1.4 points for SSL but
    # let random init close ~40 % of the margin; weight decay 5e-4 (batch 64, 2 seeds) changed
    # nothing beyond the noise (~2 points: 500 validation images).
    lrs: tuple[float, ...] = (0.01, 0.03, 0.1)
    weight_decay: float = 0.0
    epochs: int = 30
    batch_size: int = 32
    augment: str = "auto"
    distill_epochs: int = 0
    distill_temperature: float = 1.0
    distill_student: str = "pretrained"
    seed: int = 0
    kind: str = "semisup"

    def __post_init__(self) -> None:
        _check_common(self.name, self.version, self.kind, "semisup")
        _check((self.fraction is None) != (self.per_class is None), self.name,
               "give exactly one of fraction and per_class.", "e.g. fraction=0.01 or per_class=25.")
        if self.fraction is not None:
            _check(_is_real(self.fraction) and 0 < self.fraction <= 1, self.name,
                   f"fraction={self.fraction!r} must lie in (0, 1].", "Use e.g. 0.01 (1 %) or 0.1.")
            object.__setattr__(self, "fraction", float(self.fraction))
        if self.per_class is not None:
            _check(_is_int(self.per_class) and self.per_class >= 1, self.name,
                   f"per_class={self.per_class!r} must be an integer >= 1.", "Use e.g. per_class=25.")
        _check_ints(self, subset_seed=None, seed=None, val_per_class=1, from_projector_layer=0, epochs=1,
                    batch_size=1, distill_epochs=0)
        object.__setattr__(self, "lrs", _check_grid(self.name, "lrs", self.lrs, positive=True))
        _check(_is_real(self.weight_decay) and self.weight_decay >= 0, self.name,
               f"weight_decay={self.weight_decay!r} must be a finite number >= 0.", "Use e.g. 0.0 or 5e-4.")
        _check(_is_real(self.distill_temperature) and self.distill_temperature > 0, self.name,
               f"distill_temperature={self.distill_temperature!r} must be a finite number > 0.", "Use e.g. 1.0.")
        _check(self.distill_student in ("pretrained", "random"), self.name,
               f"distill_student={self.distill_student!r} is not 'pretrained' or 'random'.",
               "Use 'pretrained' (self-distillation from the pretrained encoder) or 'random'.")
        _check(isinstance(self.augment, str) and bool(self.augment), self.name,
               f"augment={self.augment!r} must be an augmentation recipe name.", "Use 'auto' or 'linear-eval'.")
        object.__setattr__(self, "weight_decay", float(self.weight_decay))
        object.__setattr__(self, "distill_temperature", float(self.distill_temperature))

    def to_dict(self) -> dict[str, Any]:
        """All settings as a JSON-ready dict (stored with every result; tuples become lists)."""
        return _to_dict(self)


@dataclass(frozen=True)
class DetectionSpec:
    """Transfer to object detection: torchvision's Faster R-CNN (or Mask R-CNN) with an FPN on the
    pretrained backbone's feature maps, fine-tuned end to end, scored with pycocotools (COCO AP,
    AP50, AP75, APs/m/l) or the VOC07 11-point AP50.

    Differences from the anchors, written down once here: MoCo (§4.2) and its detectron2 configs
    use R50-**C4** on VOC and R50-FPN on COCO, with SyncBN in the backbone *and* new layers;
    torchvision has no C4 head, so every spec here uses FPN, and ``norm="sync"`` converts the
    backbone's BN to SyncBatchNorm (the FPN and heads of torchvision have no norm layers).
    ``norm="frozen"`` is detectron2's ImageNet-supervised default (FrozenBN); ``"train"`` trains
    plain BN. ``iterations`` and ``lr`` are used as given (MoCo's are at batch 16): a run at another
    batch size should scale both (linear scaling rule) in its own spec.

    Args:
        name, version: registry name; protocol version.
        dataset: default detection dataset (``embedded-detection``, ``embedded-detection-color``, ``voc07``, ``voc0712``,
            ``coco2017``, or ``coco-folder`` with a data directory); the caller may override it.
        model: ``"fasterrcnn-fpn"`` or ``"maskrcnn-fpn"`` (needs masks in the dataset).
        head_size: sizes of the new layers (FPN and head widths, sampled RoIs, proposals, anchors),
            :data:`sslbench.protocols.detection.HEAD_SIZES`: ``"standard"`` (torchvision's R50-FPN
            defaults) or ``"small"`` (CPU-sized, for ~128 px images).
        norm: the backbone's BatchNorm: ``"frozen"``, ``"sync"`` or ``"train"``.
        train_sizes: shorter-side sizes sampled per training batch (multi-scale training).
        test_size: shorter-side size at test time.
        max_size: longer-side cap.
        iterations: optimiser steps at ``batch_size``.
        batch_size: images per step.
        lr: base learning rate (SGD, momentum 0.9), linear warm-up over ``warmup_iters``.
        weight_decay: coupled weight decay.
        lr_steps: fractions of ``iterations`` where the lr drops by 10x.
        warmup_iters: linear warm-up steps.
        metric: ``"coco"`` or ``"voc07"`` (the headline AP50 by VOC07's 11-point rule).
        seed: seeds initialisation of the new layers, data order and flips.
        kind: always ``"detection"``.
    """

    name: str
    version: int
    dataset: str = "embedded-detection"
    model: str = "fasterrcnn-fpn"
    head_size: str = "standard"
    norm: str = "train"
    train_sizes: tuple[int, ...] = (128,)
    test_size: int = 128
    max_size: int = 128
    iterations: int = 600
    batch_size: int = 8
    lr: float = 0.02
    weight_decay: float = 1e-4
    lr_steps: tuple[float, ...] = (0.75, 0.92)
    warmup_iters: int = 50
    metric: str = "coco"
    seed: int = 0
    kind: str = "detection"

    def __post_init__(self) -> None:
        _check_common(self.name, self.version, self.kind, "detection")
        _check(isinstance(self.dataset, str) and bool(self.dataset), self.name,
               f"dataset={self.dataset!r} must be a detection dataset name.", "Use e.g. 'embedded-detection'.")
        for field, allowed in (("model", DETECTION_MODELS), ("head_size", DETECTION_HEAD_SIZES),
                               ("norm", DETECTION_NORMS), ("metric", DETECTION_METRICS)):
            value = getattr(self, field)
            _check(value in allowed, self.name, f"{field}={value!r} is not one of {allowed}.",
                   f"Use one of: {', '.join(allowed)}.")
        _check(isinstance(self.train_sizes, (tuple, list)) and len(self.train_sizes) > 0
               and all(_is_int(v) and v >= 32 for v in self.train_sizes), self.name,
               f"train_sizes={self.train_sizes!r} must be a non-empty tuple of integers >= 32.",
               "Use e.g. train_sizes=(480, 512, 544, 576, 608, 640).")
        object.__setattr__(self, "train_sizes", tuple(self.train_sizes))
        for field in ("test_size", "max_size"):
            value = getattr(self, field)
            _check(_is_int(value) and value >= 32, self.name, f"{field}={value!r} must be an integer >= 32.",
                   f"Use e.g. {field}=800.")
        _check(self.max_size >= max(self.test_size, *self.train_sizes), self.name,
               f"max_size={self.max_size} is smaller than a train or test size.", "Raise max_size.")
        _check_ints(self, iterations=1, batch_size=1, warmup_iters=0, seed=None)
        _check(_is_real(self.lr) and self.lr > 0, self.name, f"lr={self.lr!r} must be a finite number > 0.",
               "Use e.g. lr=0.02 (batch 16).")
        _check(_is_real(self.weight_decay) and self.weight_decay >= 0, self.name,
               f"weight_decay={self.weight_decay!r} must be a finite number >= 0.", "Use e.g. 1e-4.")
        steps = self.lr_steps
        _check(isinstance(steps, (tuple, list)) and all(_is_real(v) and 0 < v < 1 for v in steps)
               and list(steps) == sorted(steps), self.name,
               f"lr_steps={steps!r} must be increasing fractions in (0, 1).", "Use e.g. lr_steps=(0.75, 0.92).")
        object.__setattr__(self, "lr_steps", tuple(float(v) for v in steps))
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "weight_decay", float(self.weight_decay))

    def to_dict(self) -> dict[str, Any]:
        """All settings as a JSON-ready dict (stored with every result; tuples become lists)."""
        return _to_dict(self)


@dataclass(frozen=True)
class DiagnosticsSpec:
    """Representation diagnostics of the frozen encoder on the test split
    (:mod:`sslbench.protocols.diagnostics`): alignment of two augmented views of each image and
    uniformity (Wang & Isola 2020), RankMe (Garrido et al. 2023), the standard deviation of the
    L2-normalised features x sqrt(d) (SimSiam §4.1; 1 spread, 0 collapsed) with the collapse alarm,
    and the eigenvalues of the feature covariance (logged as an artifact; the top ones as metrics).

    Differences from the anchors: Wang & Isola measure the projector's output on training images;
    RankMe uses the backbone's features on (a subset of) the training set; here every number is on
    the backbone's features of the test split, with one fixed augmentation recipe for the views so
    that methods are comparable.

    Args:
        name, version: registry name; protocol version.
        augment: recipe of the two views for alignment ("auto": ``simclr-small`` for images up to
            64 px, ``simclr`` above).
        max_images: at most this many test images (the first ones; uniformity is O(N^2)).
        alpha: alignment exponent.
        t: uniformity temperature.
        seed: seeds the views.
        kind: always ``"diagnostics"``.
    """

    name: str
    version: int
    augment: str = "auto"
    max_images: int = 2000
    alpha: float = 2.0
    t: float = 2.0
    seed: int = 0
    kind: str = "diagnostics"

    def __post_init__(self) -> None:
        _check_common(self.name, self.version, self.kind, "diagnostics")
        _check(isinstance(self.augment, str) and bool(self.augment), self.name,
               f"augment={self.augment!r} must be an augmentation recipe name.", "Use 'auto' or 'simclr'.")
        _check(_is_int(self.max_images) and self.max_images >= 2, self.name,
               f"max_images={self.max_images!r} must be an integer >= 2.", "Use e.g. 2000.")
        for field in ("alpha", "t"):
            value = getattr(self, field)
            _check(_is_real(value) and value > 0, self.name, f"{field}={value!r} must be a finite number > 0.",
                   f"Use e.g. {field}=2.")
            object.__setattr__(self, field, float(value))
        _check(_is_int(self.seed), self.name, f"seed={self.seed!r} must be an integer.", "Use e.g. seed=0.")

    def to_dict(self) -> dict[str, Any]:
        """All settings as a JSON-ready dict (stored with every result)."""
        return _to_dict(self)


ProtocolSpec = KNNSpec | LinearSpec | SemiSupSpec | DetectionSpec | DiagnosticsSpec
_SPEC_TYPES = (KNNSpec, LinearSpec, SemiSupSpec, DetectionSpec, DiagnosticsSpec)

_SPEC_CLASSES: dict[str, type[ProtocolSpec]] = {cls.kind: cls for cls in _SPEC_TYPES}


def spec_from_dict(data: dict[str, Any]) -> ProtocolSpec:
    """Rebuilds a spec from :meth:`KNNSpec.to_dict` / :meth:`LinearSpec.to_dict` output.

    Raises:
        ConfigError: unknown ``kind``, unknown or missing keys, or invalid values.
    """
    kind = data.get("kind")
    if kind not in _SPEC_CLASSES:
        raise ConfigError(f"Protocol spec has kind={kind!r}.", f"Use one of: {', '.join(_SPEC_CLASSES)}.")
    cls = _SPEC_CLASSES[kind]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"Protocol spec has unknown keys {unknown} for kind {kind!r}.",
                          f"Valid keys: {', '.join(sorted(fields))}.")
    try:
        return cls(**data)
    except TypeError as err:  # a missing required field
        raise ConfigError(f"Protocol spec {data!r} is incomplete: {err}.",
                          "Give name, version and the required settings.") from None


_REGISTRY: dict[str, ProtocolSpec] = {}

#: Family names accepted wherever a protocol is named (``sslbench eval --protocol semisup``): each
#: stands for its family's default spec.
PROTOCOL_ALIASES: dict[str, str] = {"knn": "knn-k200-t0.1", "semisup": "semisup-1pct",
                                    "detection": "detection-embedded"}


def register_protocol(spec: ProtocolSpec) -> ProtocolSpec:
    """Adds a spec to the registry under ``spec.name`` and returns it.

    Raises:
        ConfigError: a spec with that name is already registered, or ``spec`` is not a spec.
    """
    if not isinstance(spec, _SPEC_TYPES):
        raise ConfigError(f"Cannot register {spec!r} as a protocol.",
                          f"Pass one of: {', '.join(t.__name__ for t in _SPEC_TYPES)}.")
    if spec.name in _REGISTRY:
        raise ConfigError(f"A protocol named '{spec.name}' is already registered.",
                          "Pick another name, or bump the version of the existing spec in code.")
    _REGISTRY[spec.name] = spec
    return spec


def get_protocol(name: str) -> ProtocolSpec:
    """Returns the registered spec called ``name`` (or its family's default, for the
    :data:`PROTOCOL_ALIASES` ``knn``, ``semisup`` and ``detection``; results carry the spec's name).

    Raises:
        UnknownNameError: no spec has that name (the error lists the valid ones).
    """
    try:
        return _REGISTRY[PROTOCOL_ALIASES.get(name, name)]
    except KeyError:
        raise unknown_name("protocol", name, [*_REGISTRY, *PROTOCOL_ALIASES]) from None


def list_protocols() -> list[str]:
    """Names of all registered protocols, sorted."""
    return sorted(_REGISTRY)


register_protocol(KNNSpec(name="knn-k200-t0.1", version=1, k=200, temperature=0.1))
register_protocol(KNNSpec(name="knn-k20-t0.07", version=1, k=20, temperature=0.07))
register_protocol(LinearSpec(name="linear", version=1, mode="features"))
register_protocol(
    LinearSpec(
        name="linear-augmented",
        version=1,
        mode="augmented",
        # SGD + momentum on BatchNorm-standardised features (SimCLR-style lr 0.1 at batch 256 at
        # the low end). Calibrated by validation top-1 on Fashion-MNIST (10k train, random-init
        # CNN, 20 epochs): lr 0.1..3 within 2 points of each other, best 1.0; wd 1e-2 cost 6
        # points, 0..1e-3 were equal within 1 point.
        lrs=(0.1, 0.3, 1.0),
        weight_decays=(0.0, 1e-4, 1e-3),
        epochs=20,
        batch_size=256,
    )
)
for _fraction, _tag in ((0.01, "1pct"), (0.1, "10pct")):
    # SGD + Nesterov momentum with a cosine schedule, batch 32, 30 epochs over the labelled subset;
    # the lr grid is searched per run on the validation split outside the labelled subset.
    register_protocol(SemiSupSpec(name=f"semisup-{_tag}", version=1, fraction=_fraction))
    # SimCLR v2 §2: distillation on the unlabelled images, teacher and student at tau = 1, student
    # initialised from the pretrained encoder. 3 epochs: on the embedded data at 1 % the student's
    # validation top-1 after 1, 3 and 10 epochs was the same within noise (62.4 / 62.2 / 62.8 for
    # simclr-quick, teacher 63.2), and each epoch costs ~10 s on one CPU core.
    register_protocol(SemiSupSpec(name=f"semisup-{_tag}-distill", version=1, fraction=_fraction,
                                  distill_epochs=3))

# Sized for the embedded detection set (2,000 train / 500 test canvases of 128 px) on one CPU core: 300
# steps of batch 8 (1.2 passes), ~4 min (Mask R-CNN ~6). lr chosen on a validation split of the train
# canvases (400 held out), small-cnn random init / SimCLR-quick, AP: lr 0.01 24.7 / 27.2, 0.02 30.8 / 33.2,
# 0.04 33.8 / 37.0, 0.08 26.2 / 30.2. 0.04 is not taken: with a 10-step warm-up it diverged (NaN) for
# SimCLR within 30 steps, too close to the edge for a spec every encoder runs under.
register_protocol(DetectionSpec(name="detection-embedded", version=1, head_size="small", iterations=300,
                                batch_size=8, lr=0.02, warmup_iters=50))
register_protocol(DetectionSpec(name="detection-embedded-mask", version=1, model="maskrcnn-fpn", head_size="small",
                                iterations=300, batch_size=8, lr=0.02, warmup_iters=50))
# MoCo detection/configs/pascal_voc_R_50_C4_24k_moco.yaml + Base-RCNN-C4-BN.yaml: batch 16, lr 0.02,
# 24k iterations, steps 18k/22k, warm-up 100, train sizes 480..800 step 32, test 800, (naive)SyncBN,
# FREEZE_AT 0. Difference: FPN instead of C4 (torchvision has no C4 head); max_size is detectron2's 1333.
register_protocol(DetectionSpec(name="detection-voc0712-moco", version=1, dataset="voc0712",
                                norm="sync", train_sizes=tuple(range(480, 801, 32)), test_size=800,
                                max_size=1333, iterations=24000, batch_size=16, lr=0.02,
                                lr_steps=(18000 / 24000, 22000 / 24000), warmup_iters=100, metric="voc07"))
# MoCo detection/configs/coco_R_50_C4_2x.yaml: Mask R-CNN, 180k iterations, steps 120k/160k, train
# sizes 640..800 step 32, test 800, SyncBN; detectron2's default warm-up of 1000. Difference: FPN, not C4.
register_protocol(DetectionSpec(name="detection-coco-moco-2x", version=1, dataset="coco2017",
                                model="maskrcnn-fpn", norm="sync", train_sizes=tuple(range(640, 801, 32)),
                                test_size=800, max_size=1333, iterations=180000, batch_size=16, lr=0.02,
                                lr_steps=(120000 / 180000, 160000 / 180000), warmup_iters=1000))

register_protocol(DiagnosticsSpec(name="diagnostics", version=1))

#: The protocols run when the user names none.
DEFAULT_PROTOCOLS: tuple[str, ...] = ("knn-k200-t0.1", "knn-k20-t0.07", "linear")
