"""Typed run configuration: frozen dataclasses, strict overrides, a stable hash.

A :class:`Config` is built from a named recipe (``benchmark/recipes/``) plus ``key=value``
overrides (``optim.base_lr=0.3``, ``data.batch_size=128``, ``method.temperature=0.2``,
``crop.mode=ccrop``). Overrides are strict: an unknown key or a value of the wrong type is a
:class:`ConfigError` that lists the valid keys. Method hyperparameters live in each method's
own dataclass (registered with the method) and are validated against it here, at the boundary.

Derived values (the scaled learning rate, step counts) are computed once by
:func:`derive` and logged with the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sslbench.benchmark.errors import ConfigError

OPTIMIZERS = ("sgd", "lars", "adamw")
LR_SCALINGS = ("linear", "sqrt", "none")
PRECISIONS = ("auto", "fp32", "bf16")
SWITCHES = ("auto", "on", "off")
COMPILE_MODES = ("off", "default", "reduce-overhead")
CROP_MODES = ("random", "ccrop")
BACKGROUND_MODES = ("off", "bg_rm", "bg_random")
BACKGROUND_SALIENCY = ("spectral", "activation")
BACKGROUND_FILLS = ("grey", "random", "grayscale")
#: field metadata: a field added after runs existed, left out of the stored config while default
OMIT_WHEN_DEFAULT = "sslbench_omit_when_default"


@dataclass(frozen=True)
class DataConfig:
    """What to train on.

    Attributes:
        dataset: a registered dataset name (``sslbench datasets`` lists them).
        data_dir: where the dataset lives (not needed for the embedded data).
        download: allow torchvision to download the dataset (off: nothing downloads by itself).
        batch_size: images per optimisation step over all processes (the global batch: with W
            data-parallel processes each takes ``batch_size / W``, so the config, its hash and
            the scaled learning rate do not depend on the number of GPUs).
        image_size: override the dataset's native image size (folder datasets; unset, a folder's
            size is inferred from its images: 224 for photos, their own size for small images).
        num_workers: decode workers for folder datasets.

    Folder-dataset settings added after runs existed (left out of the stored config while they
    keep their defaults, so earlier configs keep their form and hash):

    Attributes:
        cache: ``auto`` (hold a folder split in memory, decoded once into a cache file, when it
            takes at most 4 GiB decoded), ``on`` or ``off``. A speed setting: the cached split
            trains on the same pixels, so it is left out of the config hash.
        strict: a corrupt or non-image file is an error instead of being skipped (scan) or
            replaced by the next readable image (decode) with a printed count. Left out of the hash:
            a strict run that finishes saw no such file, so it trained exactly as a non-strict one.
        load_size: side of the full-frame canvas that pretraining crops from (the whole image,
            resized; unset: 8/7 of the image size, at most the images' median shorter side). It
            changes what is trained, so it is in the hash when set.
    """

    dataset: str = "fashion-mnist-mini"
    data_dir: str | None = None
    download: bool = False
    batch_size: int = 256
    image_size: int | None = None
    num_workers: int = 2
    cache: str = field(default="auto", metadata={OMIT_WHEN_DEFAULT: True})
    strict: bool = field(default=False, metadata={OMIT_WHEN_DEFAULT: True})
    load_size: int | None = field(default=None, metadata={OMIT_WHEN_DEFAULT: True})

    def __post_init__(self) -> None:
        _check(self.batch_size >= 2, "data.batch_size", self.batch_size, "an integer >= 2")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "an integer >= 0")
        _check(self.image_size is None or self.image_size >= 8, "data.image_size", self.image_size,
               "an integer >= 8 or None")
        _check(self.cache in SWITCHES, "data.cache", self.cache, "one of auto, on, off")
        _check(isinstance(self.strict, bool), "data.strict", self.strict, "true or false")
        _check(self.load_size is None or (_is_int(self.load_size) and self.load_size >= 8), "data.load_size",
               self.load_size, "an integer >= 8 or None")
        _check(self.load_size is None or self.image_size is None or self.load_size >= self.image_size,
               "data.load_size", self.load_size, f"at least data.image_size ({self.image_size}) or None")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule.

    The peak learning rate is ``base_lr x batch_size / 256`` (``lr_scaling="linear"``, Goyal et
    al.), ``base_lr x sqrt(batch_size / 256)`` (``"sqrt"``; SimCLR's 0.075 x sqrt(B) is
    ``base_lr=1.2``), or ``base_lr`` (``"none"``). Linear warm-up for ``warmup_epochs``, then a
    cosine decay to ``final_lr_ratio x`` the peak.

    Attributes:
        name: ``sgd`` (with momentum), ``lars`` (SGD + LARS trust ratio) or ``adamw``.
        base_lr: learning rate at batch size 256.
        lr_scaling: ``linear``, ``sqrt`` or ``none``.
        weight_decay: decoupled for AdamW, L2 for SGD/LARS; never applied to biases and norms.
        momentum: SGD/LARS momentum (AdamW beta1).
        warmup_epochs: linear warm-up length (fractions allowed).
        final_lr_ratio: final learning rate as a fraction of the peak.
        lars_eta: LARS trust coefficient.
    """

    name: str = "sgd"
    base_lr: float = 0.05
    lr_scaling: str = "linear"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    final_lr_ratio: float = 0.0
    lars_eta: float = 0.001

    def __post_init__(self) -> None:
        _check(self.name in OPTIMIZERS, "optim.name", self.name, f"one of {', '.join(OPTIMIZERS)}")
        _check(self.lr_scaling in LR_SCALINGS, "optim.lr_scaling", self.lr_scaling,
               f"one of {', '.join(LR_SCALINGS)}")
        _check(self.base_lr > 0, "optim.base_lr", self.base_lr, "a positive number")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "a number >= 0")
        _check(0 <= self.momentum < 1, "optim.momentum", self.momentum, "a number in [0, 1)")
        _check(self.warmup_epochs >= 0, "optim.warmup_epochs", self.warmup_epochs, "a number >= 0")
        _check(0 <= self.final_lr_ratio <= 1, "optim.final_lr_ratio", self.final_lr_ratio,
               "a number in [0, 1]")
        _check(self.lars_eta > 0, "optim.lars_eta", self.lars_eta, "a positive number")


@dataclass(frozen=True)
class TrainConfig:
    """How long and where to train, and how fast.

    Attributes:
        epochs: passes over the training split (0: no training, the random-init baseline).
        seed: seeds model init, data order and augmentation (all derived from it).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
        channels_last: use the channels-last memory format (``auto``: on CUDA only).
        threads: CPU threads for torch (0: leave torch's default).

    Execution settings (they change how fast a run goes, never what it computes beyond
    floating-point rounding; like ``device`` and ``threads`` they are left out of the config hash,
    so a run may resume under other values, and out of the stored config while they keep their
    defaults):

    Attributes:
        checkpoint_every: epochs between checkpoints. The last epoch, and the epoch at which a
            run is stopped early (preemption, ``stop_after_epochs``), always write one. Epoch
            metrics reach MLflow once their checkpoint is written, so a logged epoch is always a
            saved one; a run killed between checkpoints resumes from the last one and repeats
            the epochs after it exactly.
        async_checkpoint: ``auto`` (on for CUDA), ``on`` or ``off``: copy the state to host memory
            and write the periodic checkpoints in a background thread while training goes on
            (the final and the early-stop checkpoints are written synchronously).
        finite_check_every: steps between checks that the training loss is finite. The loss
            stays on the device (no host synchronisation per step); a check looks at every step
            since the last one and names the first step that went bad. Every epoch end checks
            too, before its checkpoint, so a checkpoint never holds a non-finite run.
        compile: ``off``, ``default`` or ``reduce-overhead`` (``torch.compile`` of the backbone
            and heads; ``reduce-overhead`` adds CUDA graphs). The compile time is reported
            separately (``train/compile_time_s``).
        cudnn_benchmark: ``auto`` (on for CUDA unless ``deterministic``), ``on`` or ``off``.
        deterministic: deterministic algorithms (``torch.use_deterministic_algorithms``, the
            cuBLAS workspace setting, cuDNN benchmark off), so that a resumed CUDA run is
            bit-identical to an uninterrupted one; slower on CUDA (see the README), free on CPU.
        foreach: ``auto`` (on for CUDA), ``on`` or ``off``: LARS updates all parameters with
            multi-tensor (``torch._foreach_*``) kernels instead of a loop over parameters.
    """

    epochs: int = 100
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: str = "auto"
    threads: int = 0
    checkpoint_every: int = field(default=1, metadata={OMIT_WHEN_DEFAULT: True})
    async_checkpoint: str = field(default="auto", metadata={OMIT_WHEN_DEFAULT: True})
    finite_check_every: int = field(default=50, metadata={OMIT_WHEN_DEFAULT: True})
    compile: str = field(default="off", metadata={OMIT_WHEN_DEFAULT: True})
    cudnn_benchmark: str = field(default="auto", metadata={OMIT_WHEN_DEFAULT: True})
    deterministic: bool = field(default=False, metadata={OMIT_WHEN_DEFAULT: True})
    foreach: str = field(default="auto", metadata={OMIT_WHEN_DEFAULT: True})

    def __post_init__(self) -> None:
        _check(self.epochs >= 0, "train.epochs", self.epochs, "an integer >= 0")
        _check(self.seed >= 0, "train.seed", self.seed, "an integer >= 0")
        _check(self.precision in PRECISIONS, "train.precision", self.precision,
               f"one of {', '.join(PRECISIONS)}")
        _check(self.channels_last in SWITCHES, "train.channels_last", self.channels_last, "one of auto, on, off")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               "train.device", self.device, "auto, cpu, cuda or cuda:N")
        _check(self.threads >= 0, "train.threads", self.threads, "an integer >= 0")
        _check(self.checkpoint_every >= 1, "train.checkpoint_every", self.checkpoint_every, "an integer >= 1")
        _check(self.async_checkpoint in SWITCHES, "train.async_checkpoint", self.async_checkpoint,
               "one of auto, on, off")
        _check(self.finite_check_every >= 1, "train.finite_check_every", self.finite_check_every,
               "an integer >= 1")
        _check(self.compile in COMPILE_MODES, "train.compile", self.compile, f"one of {', '.join(COMPILE_MODES)}")
        _check(self.cudnn_benchmark in SWITCHES, "train.cudnn_benchmark", self.cudnn_benchmark,
               "one of auto, on, off")
        _check(self.foreach in SWITCHES, "train.foreach", self.foreach, "one of auto, on, off")


#: the train.* fields that change speed, not results: out of the config hash (with device, threads)
EXECUTION_KEYS = ("device", "threads", "checkpoint_every", "async_checkpoint", "finite_check_every",
                  "compile", "cudnn_benchmark", "deterministic", "foreach")


@dataclass(frozen=True)
class CropConfig:
    """How the views' crop boxes are placed.

    ``random``: RandomResizedCrop, as each view of the augmentation recipe specifies. ``ccrop``:
    ContrastiveCrop (Peng et al., CVPR 2022, https://arxiv.org/abs/2202.03278;
    ``benchmark/contrastive_crop.py``): from epoch ``warmup_epochs`` on, every image's crops are
    centred inside the box that the model's last feature map localises (heat map > ``threshold``),
    with centres drawn from Beta(``alpha``, ``alpha``); the boxes are recomputed every
    ``update_every`` epochs. Crop area and aspect ratio stay the views' RandomResizedCrop draws.

    The section is left out of :meth:`Config.to_dict` (and so of the hash, config.json,
    checkpoints and MLflow params) while it equals these defaults: configs that do not use it
    keep the identity they had before it existed.

    Attributes:
        mode: ``random`` or ``ccrop``.
        alpha: Beta(alpha, alpha) of the crop centres in the box; < 1 pushes them away from the
            box centre (centre-suppressed), 1 is uniform. 0.6: the official ImageNet config
            (xyupeng/ContrastiveCrop configs/IN1K/mocov2_ccrop.py) and the transform's default;
            the official CIFAR / Tiny-ImageNet configs use 0.1.
        threshold: heat-map threshold k in [0, 1) (``box_thresh`` 0.1 in every official config).
        warmup_epochs: epochs of plain random crops before the first localisation (20 of 100 in
            the official ImageNet config, 100 of 500 on CIFAR).
        update_every: epochs between localisations (``loc_interval``: 20 on ImageNet, 100 on
            CIFAR).
    """

    mode: str = "random"
    alpha: float = 0.6
    threshold: float = 0.1
    warmup_epochs: int = 20
    update_every: int = 20

    def __post_init__(self) -> None:
        _check(self.mode in CROP_MODES, "crop.mode", self.mode, f"one of {', '.join(CROP_MODES)}")
        _check(_is_number(self.alpha) and 0 < self.alpha < math.inf, "crop.alpha", self.alpha,
               "a positive number")
        _check(_is_number(self.threshold) and 0 <= self.threshold < 1, "crop.threshold",
               self.threshold, "a number in [0, 1)")
        _check(_is_int(self.warmup_epochs) and self.warmup_epochs >= 0, "crop.warmup_epochs",
               self.warmup_epochs, "an integer >= 0")
        _check(_is_int(self.update_every) and self.update_every >= 1, "crop.update_every",
               self.update_every, "an integer >= 1")


@dataclass(frozen=True)
class BackgroundConfig:
    """Background augmentation (Ryali et al. 2021, https://arxiv.org/abs/2103.12719;
    ``benchmark/background.py``): in each view, with probability ``p`` per image, the pixels
    outside the image's foreground mask are replaced; foreground pixels are never changed. The
    operation runs on the full image before the view's crop, so the mask follows the crop.

    Like ``crop`` the section is left out of :meth:`Config.to_dict` (and so of the hash) while it
    equals these defaults (off).

    Attributes:
        mode: ``off``; ``bg_rm`` (BG_RM: the background becomes ``fill``) or ``bg_random``
            (BG_Random: the background is another image of the batch).
        p: probability that an image's view gets the operation (each view draws its own). 0.2 is
            sslbench's default, not a value verified against the paper's text.
        saliency: the foreground's source, no downloaded weights (the paper uses U^2-Net masks):
            ``spectral`` (Hou & Zhang's spectral residual, CVPR 2007) or ``activation`` (the
            encoder's own last feature map, ContrastiveCrop's heat map).
        threshold: foreground = saliency above ``threshold`` x the image's mean saliency (3: Hou
            & Zhang's object map).
        fill: BG_RM's background: ``grey`` (mid-grey 128), ``random`` (a random grey level per
            image and view) or ``grayscale`` (the image's own background in grayscale).
        start_epoch: the operation starts at this epoch (``activation`` maps of an untrained
            encoder say little; ContrastiveCrop waits for the same reason).
    """

    mode: str = "off"
    p: float = 0.2
    saliency: str = "spectral"
    threshold: float = 3.0
    fill: str = "grey"
    start_epoch: int = 0

    def __post_init__(self) -> None:
        _check(self.mode in BACKGROUND_MODES, "background.mode", self.mode,
               f"one of {', '.join(BACKGROUND_MODES)}")
        _check(_is_number(self.p) and 0 <= self.p <= 1, "background.p", self.p, "a number in [0, 1]")
        _check(self.saliency in BACKGROUND_SALIENCY, "background.saliency", self.saliency,
               f"one of {', '.join(BACKGROUND_SALIENCY)}")
        _check(_is_number(self.threshold) and 0 <= self.threshold < math.inf, "background.threshold",
               self.threshold, "a number >= 0 (a multiple of the mean saliency)")
        _check(self.fill in BACKGROUND_FILLS, "background.fill", self.fill,
               f"one of {', '.join(BACKGROUND_FILLS)}")
        _check(_is_int(self.start_epoch) and self.start_epoch >= 0, "background.start_epoch",
               self.start_epoch, "an integer >= 0")

    @property
    def enabled(self) -> bool:
        """Whether any view can change (a mode, and p > 0): off, the views are the same draws as
        without the section."""
        return self.mode != "off" and self.p > 0


@dataclass(frozen=True)
class MonitorConfig:
    """Online monitoring during pretraining (:mod:`sslbench.benchmark.monitor`): curves logged to
    MLflow under ``monitor/``, to watch a run, never to report. Final numbers always come from the
    offline protocols on the finished encoder (``sslbench eval``).

    Monitoring never changes the trained weights (the monitor runs the encoder in eval mode under
    no_grad, trains only its own head and draws only from its own generators; tested bit-identical),
    so the section is kept out of :meth:`Config.hash` whatever its values: a run may be resumed
    with monitoring switched on, off or changed, and runs that differ only here are the same run.
    Like ``crop`` it is also left out of :meth:`Config.to_dict` while at its defaults.

    Attributes:
        probe_every_steps: every this many optimiser steps (and at step 0), the diagnostics of
            :mod:`sslbench.protocols.diagnostics` (alignment, uniformity, RankMe, normalised std)
            on two fixed augmented views of ``probe_size`` fixed training images, with the
            collapse alarm; 0 turns it off.
        probe_size: images of the probe batch (clamped to the training split's size).
        knn_every_epochs: every this many epochs (and after the last), the weighted kNN of the
            ``knn-k200-t0.1`` protocol: a stratified held-out slice of the training split
            classified against the rest; 0 turns it off.
        linear_every_epochs: train a linear head on detached features at every step and report its
            top-1 on the held-out slice every this many epochs (and after the last); 0 turns it off.
        holdout_fraction: the held-out share of the labelled training images (per class, seeded by
            ``train.seed``); never the test split.
    """

    probe_every_steps: int = 0
    probe_size: int = 512
    knn_every_epochs: int = 0
    linear_every_epochs: int = 0
    holdout_fraction: float = 0.1

    def __post_init__(self) -> None:
        for key in ("probe_every_steps", "knn_every_epochs", "linear_every_epochs"):
            value = getattr(self, key)
            _check(_is_int(value) and value >= 0, f"monitor.{key}", value, "an integer >= 0 (0: off)")
        _check(_is_int(self.probe_size) and self.probe_size >= 2, "monitor.probe_size", self.probe_size,
               "an integer >= 2")
        _check(_is_number(self.holdout_fraction) and 0 < self.holdout_fraction < 1,
               "monitor.holdout_fraction", self.holdout_fraction, "a number in (0, 1)")

    @property
    def enabled(self) -> bool:
        """Whether any monitoring is on."""
        return bool(self.probe_every_steps or self.knn_every_epochs or self.linear_every_epochs)


@dataclass(frozen=True)
class Config:
    """A fully resolved pretraining configuration.

    Attributes:
        method: a registered method name.
        backbone: ``small-cnn``, ``resnet18-small``, ``resnet50-small`` or any timm model name.
        augment: a registered augmentation recipe name.
        recipe: the named recipe this config was built from (for the record).
        method_args: the method's hyperparameters, validated against its config dataclass.
        data, optim, train: see their classes.
        crop: crop placement (RandomResizedCrop or ContrastiveCrop), see :class:`CropConfig`.
        background: background augmentation (BG_RM, BG_Random), see :class:`BackgroundConfig`.
        monitor: online monitoring curves during pretraining, see :class:`MonitorConfig`; never
            part of the hash.
    """

    method: str
    backbone: str
    augment: str
    recipe: str = "custom"
    method_args: Mapping[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    crop: CropConfig = field(default_factory=CropConfig, metadata={OMIT_WHEN_DEFAULT: True})
    monitor: MonitorConfig = field(default_factory=MonitorConfig, metadata={OMIT_WHEN_DEFAULT: True})
    background: BackgroundConfig = field(default_factory=BackgroundConfig, metadata={OMIT_WHEN_DEFAULT: True})

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data (what is logged and stored in checkpoints).

        Sections added after runs existed (``crop``, ``monitor``, ``background``) are present only
        when they differ from their defaults, so configs that do not use them keep their hash and
        stored form (the same rule as :func:`added_key` for method hyperparameters).
        """
        out = dataclasses.asdict(self)
        out["method_args"] = dict(self.method_args)
        _drop_defaults(out, dataclasses.fields(self), lambda name: getattr(self, name))
        # The execution settings added to train.* after runs existed: stored only when set.
        _drop_defaults(out["train"], dataclasses.fields(self.train), lambda name: getattr(self.train, name))
        # The same for the folder-dataset settings added to data.* (cache, strict, load_size).
        _drop_defaults(out["data"], dataclasses.fields(self.data), lambda name: getattr(self.data, name))
        return out

    def hash(self) -> str:
        """A stable hash of everything that changes the result (not paths, workers, the folder
        cache and strictness, device, nor the ``monitor`` section, which never changes the
        trained weights, nor a ``background`` section that is not enabled)."""
        d = self.to_dict()
        d.pop("monitor", None)
        if not self.background.enabled:  # mode off or p = 0: trains exactly as without the section
            d.pop("background", None)
        for key in ("data_dir", "download", "num_workers"):
            d["data"].pop(key)
        for key in ("cache", "strict"):  # speed / error handling, never the trained weights
            d["data"].pop(key, None)
        for key in EXECUTION_KEYS:
            d["train"].pop(key, None)
        d.pop("recipe")
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Derived:
    """Values computed once from a config, the dataset size and the number of processes;
    logged with every run.

    Attributes:
        lr: peak learning rate, scaled by the global batch.
        steps_per_epoch: optimisation steps per epoch (full global batches).
        total_steps: steps in the whole run.
        warmup_steps: linear warm-up steps.
        final_lr: learning rate at the end of the cosine.
        world_size: data-parallel processes (GPUs).
        batch_per_rank: images each process takes from every global batch.
    """

    lr: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    final_lr: float
    world_size: int
    batch_per_rank: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def scaled_lr(optim: OptimConfig, batch_size: int) -> float:
    """The peak learning rate after batch-size scaling (see :class:`OptimConfig`)."""
    if optim.lr_scaling == "linear":
        return optim.base_lr * batch_size / 256
    if optim.lr_scaling == "sqrt":
        return optim.base_lr * math.sqrt(batch_size / 256)
    return optim.base_lr


def derive(cfg: Config, num_train: int, world_size: int = 1) -> Derived:
    """Computes the derived training quantities (learning rate, step counts, per-rank batch).

    Args:
        cfg: the resolved config (``data.batch_size`` is the global batch).
        num_train: images in the training split.
        world_size: data-parallel processes.

    Raises:
        ConfigError: the batch is larger than the training split, or does not split evenly
            over ``world_size`` processes.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if cfg.data.batch_size % world_size:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} (the global batch) does not split evenly "
            f"over {world_size} processes.",
            f"Use a multiple of {world_size} (e.g. {max(1, cfg.data.batch_size // world_size) * world_size}) "
            "or another number of GPUs.",
        )
    steps_per_epoch = num_train // cfg.data.batch_size
    if steps_per_epoch == 0 and cfg.train.epochs > 0:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} is larger than the training split "
            f"({num_train} images), so an epoch has no full batch.",
            "Lower data.batch_size.",
        )
    lr = scaled_lr(cfg.optim, cfg.data.batch_size)
    return Derived(
        lr=lr,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * cfg.train.epochs,
        warmup_steps=round(cfg.optim.warmup_epochs * steps_per_epoch),
        final_lr=lr * cfg.optim.final_lr_ratio,
        world_size=world_size,
        batch_per_rank=cfg.data.batch_size // world_size,
    )


# ---------------------------------------------------------------------------------------------
# Strict overrides
# ---------------------------------------------------------------------------------------------

_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "train": TrainConfig, "crop": CropConfig,
             "monitor": MonitorConfig, "background": BackgroundConfig}
_TOP_LEVEL = ("method", "backbone", "augment")


def valid_keys(method_config: type | None = None) -> list[str]:
    """Every key that :func:`apply_overrides` accepts."""
    keys = list(_TOP_LEVEL)
    for section, cls in _SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    if method_config is not None:
        keys += [f"method.{f.name}" for f in dataclasses.fields(method_config)]
    return keys


def parse_override(text: str) -> tuple[str, str]:
    """Splits ``key=value``.

    Raises:
        ConfigError: there is no ``=``.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"Override '{text}' is not of the form key=value.",
                          "Write e.g. --set optim.base_lr=0.3.")
    return key.strip(), value.strip()


def coerce(key: str, raw: Any, annotation: Any) -> Any:
    """Converts a raw override value (usually a string) to the type a field declares.

    Raises:
        ConfigError: the value does not fit the type.
    """
    if isinstance(annotation, str):  # postponed annotations
        annotation = eval(annotation, vars(typing), {})  # noqa: S307 - our own annotations only
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, raw, arg)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(f"{key}: cannot parse {raw!r}.")
    if origin is tuple:
        items = raw if isinstance(raw, (list, tuple)) else [
            s for s in str(raw).strip("()[] ").split(",") if s.strip()]
        if args and args[-1] is Ellipsis:
            return tuple(coerce(key, item, args[0]) for item in items)
        if len(items) != len(args):
            raise ConfigError(f"{key} takes {len(args)} comma-separated values, got {raw!r}.",
                              f"Write e.g. {key}=" + ",".join("1" for _ in args) + ".")
        return tuple(coerce(key, item, a) for item, a in zip(items, args))
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key} must be true or false, got {raw!r}.", f"Write {key}=true.")
    if annotation in (int, float):
        if isinstance(raw, bool):
            raise ConfigError(f"{key} must be a number, got {raw!r}.")
        try:
            value = float(raw)
            if annotation is int:
                if value != int(value):
                    raise ValueError
                return int(value)
            return value
        except (TypeError, ValueError):
            kind = "an integer" if annotation is int else "a number"
            raise ConfigError(f"{key} must be {kind}, got {raw!r}.",
                              f"Write e.g. {key}={'8' if annotation is int else '0.1'}.") from None
    if annotation is str:
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise ConfigError(f"{key} must be a string, got {raw!r}.")
        return str(raw)
    if annotation is Any:
        return raw
    raise ConfigError(f"{key}: unsupported field type {annotation!r}.")


def added_key(default: Any) -> Any:
    """A dataclass field for a hyperparameter added to a method after runs of it exist: while it
    keeps its default it is left out of the resolved ``method_args`` (so the config hash, stored
    checkpoints and result identities of earlier runs stay valid); set, it is recorded as usual.

    Use as ``loss: str = added_key("infonce")``.
    """
    return field(default=default, metadata={OMIT_WHEN_DEFAULT: True})


def build_method_args(method_config: type, values: Mapping[str, Any], method: str) -> dict[str, Any]:
    """Validates method hyperparameters against the method's config dataclass.

    Returns the full, resolved set (defaults filled in) as a plain dict, less the fields declared
    with :func:`added_key` that keep their default.

    Raises:
        ConfigError: an unknown key, a wrong type, or a value the dataclass rejects.
    """
    fields = {f.name: f for f in dataclasses.fields(method_config)}
    typed = {}
    for key, raw in values.items():
        if key not in fields:
            raise ConfigError(
                f"Unknown key 'method.{key}' for method '{method}'.",
                f"Valid method keys: {', '.join('method.' + k for k in fields) or '(none)'}.",
            )
        typed[key] = coerce(f"method.{key}", raw, _hint(method_config, key))
    try:
        instance = method_config(**typed)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Invalid method settings for '{method}': {exc}",
                          "Fix the method.* values.") from None
    resolved = dataclasses.asdict(instance)
    _drop_defaults(resolved, dataclasses.fields(method_config), lambda name: getattr(instance, name))
    return resolved


def _drop_defaults(out: dict[str, Any], fields: Iterable[dataclasses.Field[Any]],
                   value: Callable[[str], Any]) -> None:
    """Removes from ``out`` the fields marked :data:`OMIT_WHEN_DEFAULT` whose value equals their
    default (or their default factory's product)."""
    for f in fields:
        if not f.metadata.get(OMIT_WHEN_DEFAULT):
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value(f.name) == default:
            del out[f.name]


def apply_overrides(cfg: Config, overrides: Iterable[str] | Mapping[str, Any],
                    method_config: type | None = None) -> Config:
    """Returns a new config with ``key=value`` overrides applied, strictly.

    Args:
        cfg: the starting config (usually a recipe).
        overrides: ``["optim.base_lr=0.3", ...]`` or a mapping ``{"optim.base_lr": 0.3}``.
        method_config: the method's hyperparameter dataclass (validates ``method.*`` keys).

    Raises:
        ConfigError: an unknown key, or a value of the wrong type or out of range.
    """
    pairs = list(overrides.items()) if isinstance(overrides, Mapping) else [
        parse_override(o) for o in overrides]
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    method_args = dict(cfg.method_args)
    for key, raw in pairs:
        head, _, rest = key.partition(".")
        if not rest and head in _TOP_LEVEL:
            top[head] = coerce(key, raw, str)
        elif head in _SECTIONS and rest:
            cls = _SECTIONS[head]
            names = {f.name for f in dataclasses.fields(cls)}
            if rest not in names:
                raise _unknown_key(key, method_config)
            sections[head][rest] = coerce(key, raw, _hint(cls, rest))
        elif head == "method" and rest:
            method_args[rest] = raw
        else:
            raise _unknown_key(key, method_config)
    try:
        replaced = {name: dataclasses.replace(getattr(cfg, name), **sections[name]) for name in _SECTIONS}
        new = dataclasses.replace(cfg, **top, **replaced)
    except TypeError as exc:
        raise ConfigError(f"Invalid override: {exc}.") from None
    if "method" in top and top["method"] != cfg.method:
        method_args = {k: v for k, v in method_args.items() if k not in cfg.method_args}
    if method_config is not None:
        method_args = build_method_args(method_config, method_args, new.method)
    return dataclasses.replace(new, method_args=method_args)


def config_from_dict(d: Mapping[str, Any]) -> Config:
    """Rebuilds a config from :meth:`Config.to_dict` output (checkpoints, config.json).

    Raises:
        ConfigError: the mapping does not describe a config.
    """
    try:
        return Config(
            method=d["method"], backbone=d["backbone"], augment=d["augment"],
            recipe=d.get("recipe", "custom"), method_args=dict(d.get("method_args", {})),
            data=DataConfig(**d["data"]), optim=OptimConfig(**d["optim"]),
            train=TrainConfig(**d["train"]), crop=CropConfig(**d.get("crop", {})),
            monitor=MonitorConfig(**d.get("monitor", {})),
            background=BackgroundConfig(**d.get("background", {})),
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"Stored config is incomplete or from another version: {exc}.",
                          "Re-create the run from a recipe.") from None


def _hint(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _unknown_key(key: str, method_config: type | None) -> ConfigError:
    return ConfigError(f"Unknown config key '{key}'.",
                       f"Valid keys: {', '.join(valid_keys(method_config))}.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: it must be {expected}.",
                          f"Fix {key} in the recipe or the --set override.")
