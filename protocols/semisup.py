"""Semi-supervised fine-tuning of the whole encoder on a fixed labelled subset, with optional
SimCLR v2 distillation on the unlabelled images.

Protocol (:class:`~sslbench.protocols.spec.SemiSupSpec`):

1. the labelled subset: a :class:`~sslbench.protocols.subsets.LabelledSubset` given by the caller
   (a split file, or ImageNet's published SimCLR lists) or drawn class-balanced with
   ``fraction`` / ``per_class`` and ``subset_seed``; it is checked to belong to this training
   split, and its sha256 is recorded on the result;
2. the validation split: ``val_per_class`` images per class drawn (seeded by ``seed``) from the
   training images *outside* the labelled subset (:func:`validation_split`); their labels serve
   the learning-rate choice only;
3. for each lr of the grid: a fresh copy of the encoder and a linear head (the same seeded
   initialisation, the same mini-batch order and the same crops at every grid point) are trained
   for ``epochs`` epochs on the labelled subset with SGD (momentum 0.9, Nesterov, coupled weight
   decay on every parameter), a per-step cosine schedule and the training augmentation, BatchNorm
   in train mode, in mini-batches of about ``batch_size`` (evened out so that the last one is not
   tiny); the validation top-1 after the last epoch scores the grid point. A grid point whose
   loss turns non-finite stops and scores 0;
4. the best validation top-1 wins (ties: the smaller lr);
5. optional distillation (``distill_epochs > 0``, SimCLR v2 §2, Eq. 2): the chosen model is the
   teacher (eval mode, frozen); a student (the pretrained encoder, or the same architecture
   re-initialised) with a fresh head is trained for ``distill_epochs`` epochs over *all* training
   images, labels unused, on :func:`distillation_loss` between its logits and the teacher's on the
   same augmented batch, with the same optimiser and the chosen lr. The loss is SimCLR v2's
   Eq. 2 at the spec's tau (default 1; Hinton-style code that multiplies by tau^2 agrees at 1);
   the student starts from the pretrained encoder (``distill_student="pretrained"``, the
   default) or from the same architecture re-initialised (``"random"``);
6. the test split is read only now, once: the chosen model (and the student) are scored,
   top-1 and top-5.

The encoder passed in is never modified (every model trained here is a deep copy); its state is
checked bit-identical at the end.

Version history (:class:`~sslbench.protocols.spec.SemiSupSpec` ``version``):
    1: initial implementation.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from sslbench.benchmark.errors import ConfigError, DatasetError
from sslbench.protocols.knn import topk_correct
from sslbench.protocols.linear import (
    SGD_MOMENTUM,
    assert_frozen,
    cosine_lr_factor,
    default_preprocess,
    snapshot_state,
)
from sslbench.protocols.output import ProtocolOutput
from sslbench.protocols.spec import SemiSupSpec
from sslbench.protocols.subsets import LabelledSubset, balanced_subset

__all__ = ["distillation_loss", "fine_tune", "validation_split"]

Augment = Callable[[Tensor, torch.Generator], list[Tensor]]
#: Images per forward pass when scoring the validation and test splits.
EVAL_BATCH_SIZE = 256


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """SimCLR v2's distillation loss (Chen et al. 2020, "Big Self-Supervised Models are Strong
    Semi-Supervised Learners", Eq. 2), averaged over the batch::

        L = -(1/B) sum_i sum_y P_T(y | x_i; tau) log P_S(y | x_i; tau),
        P(y | x; tau) = softmax(logits(x) / tau)_y.

    The teacher's probabilities are constants (no gradient flows into ``teacher_logits``). Eq. 2
    has no ``tau^2`` factor (Hinton et al.'s gradient rescaling); at SimCLR v2's ``tau = 1`` the
    two agree.

    Args:
        student_logits: the student's logits.
        teacher_logits: the teacher's logits on the same images.
        temperature: tau > 0 of both softmaxes.

    Shape:
        - student_logits: (B, C)
        - teacher_logits: (B, C)
        - return: scalar
    """
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must both be (B, C).")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # half precision -> float32
    target = F.softmax(teacher_logits.detach().to(dtype) / temperature, dim=1)
    log_student = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    return -(target * log_student).sum(dim=1).mean()


def validation_split(labels: Tensor, labelled: Sequence[int], per_class: int, seed: int) -> Tensor:
    """Draws ``per_class`` training positions of every class from those *not* in ``labelled``.

    The draw uses a generator seeded by ``seed`` (classes in increasing order), so the split is
    a pure function of its arguments; it is disjoint from ``labelled`` by construction. Rows with
    a negative label (unlabelled images) are never drawn.

    Returns:
        The validation positions, sorted ascending.

    Raises:
        ConfigError: a class has fewer than ``per_class`` images outside the labelled subset.

    Shape:
        - labels: (N,) the training split's labels
        - return: (C * per_class,) int64
    """
    labels = labels.detach().cpu().long()
    in_subset = torch.zeros(labels.numel(), dtype=torch.bool)
    in_subset[torch.as_tensor(list(labelled), dtype=torch.long)] = True
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for c in torch.unique(labels[labels >= 0]).tolist():
        rows = torch.nonzero((labels == c) & ~in_subset).flatten()
        if rows.numel() < per_class:
            raise ConfigError(
                f"Class {c} has {rows.numel()} training images outside the labelled subset, fewer than "
                f"the val_per_class={per_class} needed for the validation split.",
                "Lower val_per_class, or label a smaller fraction of the training split.")
        parts.append(rows[torch.randperm(rows.numel(), generator=gen)[:per_class]])
    if not parts:
        raise ConfigError("The training split has no labelled image to validate on.",
                          "Fine-tune on a labelled training split.")
    val = torch.sort(torch.cat(parts)).values
    assert not in_subset[val].any(), "the validation split overlaps the labelled subset"
    return val


# --------------------------------------------------------------------------------------------
# Helpers: data, models, training, scoring
# --------------------------------------------------------------------------------------------


def _take(dataset: Any, indices: Tensor) -> Any:
    """The images of ``dataset`` at ``indices`` as a dataset of the same kind."""
    if hasattr(dataset, "subset"):  # ArrayDataset
        return dataset.subset(indices)
    if hasattr(dataset, "samples"):  # FolderDataset: decode only the chosen files
        from sslbench.benchmark.datasets import FolderDataset

        return FolderDataset([dataset.samples[i] for i in indices.tolist()], dataset.classes, dataset.info,
                             dataset.split, dataset.num_workers)
    raise ConfigError(f"Cannot take a subset of {dataset!r} for semi-supervised fine-tuning.",
                      "Pass an ArrayDataset or a FolderDataset (sslbench.benchmark.datasets.load_dataset).")


def _check_subset(subset: LabelledSubset, train: Any) -> None:
    name = str(train.info.name)
    if subset.dataset != name or subset.num_samples != len(train):
        raise DatasetError(
            f"The labelled subset '{subset.spec}' (sha256 {subset.sha256[:12]}) is for '{subset.dataset}' "
            f"({subset.num_samples} training images), not '{name}' ({len(train)}).",
            "Use a subset made for this dataset and split (balanced_subset, load_subset).")
    idx = torch.as_tensor(subset.indices, dtype=torch.long)
    if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= len(train) or bool((idx.diff() <= 0).any()):
        raise DatasetError(f"The labelled subset '{subset.spec}' holds indices outside [0, {len(train)}) "
                           "or not sorted and distinct.", "Regenerate it with balanced_subset.")


def _check_labels(labels: Tensor, num_classes: int, what: str) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(f"The {what} labels lie outside [0, {num_classes}).",
                          "Fine-tune on labelled splits (not e.g. STL-10 'unlabeled', whose labels are -1).")


def _head(dim: int, num_classes: int, seed: int, device: torch.device | str) -> nn.Linear:
    """A linear head with ``nn.Linear``'s default ranges, U(-1/sqrt(D), 1/sqrt(D)) for weight and
    bias, drawn from a generator seeded by ``seed`` (the global RNG is not touched)."""
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(dim)
    head = nn.Linear(dim, num_classes, device=device)
    with torch.no_grad():
        head.weight.copy_((torch.rand(num_classes, dim, generator=gen) * 2 - 1) * bound)
        head.bias.copy_((torch.rand(num_classes, generator=gen) * 2 - 1) * bound)
    return head


def _reinitialise(module: nn.Module, seed: int) -> None:
    """Calls ``reset_parameters`` on every submodule that has it, under ``torch.manual_seed(seed)``
    inside ``fork_rng`` (those methods draw from the global RNG; its state is restored after)."""
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in module.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()


def _feature_dim(encoder: nn.Module, images: Tensor, preprocess: Callable[[Tensor], Tensor]) -> int:
    """D, by one forward pass in eval mode (BatchNorm statistics untouched) on a few images."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        out = encoder(preprocess(images))
    encoder.train(was_training)
    if out.ndim != 2 or out.shape[0] != images.shape[0]:
        raise ConfigError(f"The encoder returned shape {tuple(out.shape)} for {images.shape[0]} images.",
                          "An encoder must map (B, C, H, W) images to (B, D) features (pool and flatten).")
    return int(out.shape[1])


def _train(model: nn.Module, data: Any, *, epochs: int, batch_size: int, lr: float, weight_decay: float,
           seed: int, device: torch.device | str, augment: Augment,
           loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor], bar: Any) -> bool:
    """Trains every parameter of ``model`` (train mode) on augmented mini-batches of ``data``.

    SGD (momentum 0.9, Nesterov, coupled weight decay), lr ``lr * cosine_lr_factor(step, total)``
    per step. The batch order and the crops come from generators seeded by ``seed``. The batch
    size is evened out to ``ceil(N / ceil(N / batch_size))``, so that a small labelled subset has
    no tiny last batch (100 images at 32 would leave 4, whose BatchNorm statistics and gradient
    are noise); a batch of a single image is skipped (BatchNorm needs two).

    Returns:
        False when the loss became non-finite (training stops there), True otherwise.
    """
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=SGD_MOMENTUM, nesterov=True,
                          weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(data) / batch_size)
    batch_size = math.ceil(len(data) / steps_per_epoch)
    total = epochs * steps_per_epoch
    shuffle_gen = torch.Generator().manual_seed(seed)
    augment_gen = torch.Generator(device=device).manual_seed(seed)
    model.train()
    step = 0
    for _ in range(epochs):
        for batch in data.batches(batch_size, shuffle=True, generator=shuffle_gen):
            factor = cosine_lr_factor(step, total)
            step += 1
            if batch.images.shape[0] < 2:
                continue
            for group in opt.param_groups:
                group["lr"] = lr * factor
            x = augment(batch.images.to(device), augment_gen)[0]
            loss = loss_fn(model, x, batch.labels.to(device))
            if not bool(torch.isfinite(loss)):
                return False
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        bar.update(1)
    return True


@torch.no_grad()
def _correct(model: nn.Module, data: Any, preprocess: Callable[[Tensor], Tensor], device: torch.device | str,
             ks: tuple[int, ...], num_classes: int, what: str) -> dict[int, int]:
    """Number of images whose label is among the model's top-k classes (eval mode, plain
    preprocessing); a row with non-finite logits counts as wrong."""
    model.eval()
    counts = dict.fromkeys(ks, 0)
    for batch in data.batches(EVAL_BATCH_SIZE, shuffle=False):
        labels = batch.labels.to(device).long()
        _check_labels(labels, num_classes, what)
        logits = model(preprocess(batch.images.to(device))).float()
        finite = torch.isfinite(logits).all(dim=1)
        for k, n in topk_correct(logits[finite], labels[finite], ks).items():
            counts[k] += n
    return counts


def _ce_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x).float(), y)


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------


def fine_tune(
    encoder: nn.Module,
    train: Any,
    test: Any,
    spec: SemiSupSpec,
    *,
    num_classes: int,
    device: torch.device | str = "cpu",
    preprocess: Callable[[Tensor], Tensor] | None = None,
    augment: Augment | None = None,
    subset: LabelledSubset | None = None,
    progress: bool = True,
) -> ProtocolOutput:
    """Semi-supervised fine-tuning (and optional distillation) of a pretrained encoder; see the
    module docstring for the protocol.

    Args:
        encoder: maps preprocessed images (B, C, H, W) to features (B, D); may already include
            projector layers (SimCLR v2's fine-tuning from a projector layer). Never modified:
            every trained model is a deep copy. Must live on ``device``.
        train: the training split (``.batches``, ``.labels``, ``.info``, ``len()``; an
            ``ArrayDataset`` or a ``FolderDataset``).
        test: the test split; read only at the end, after every choice is made.
        spec: the protocol's settings.
        num_classes: number of classes C.
        device: where the models train.
        preprocess: plain preprocessing of uint8 batches for validation and test; default
            ``to_float_normalized`` with ``train.info``'s mean, std and image size.
        augment: training augmentation ``(uint8 images, generator) -> [view, ...]`` (the first
            view is used); default the recipe ``spec.augment`` ("auto": ``linear-eval``).
        subset: the labelled subset (e.g. from :func:`~sslbench.protocols.subsets.load_subset`);
            default drawn by :func:`~sslbench.protocols.subsets.balanced_subset` from the spec.
        progress: show a tqdm bar over epochs.

    Returns:
        metrics ``top1``, ``top5`` (>= 5 classes), ``val_top1`` (the chosen lr's), and with
        distillation ``teacher_top1``, ``teacher_top5`` and ``student_val_top1`` (``top1`` /
        ``top5`` are then the student's; the validation images were among its unlabelled
        distillation images, their labels unused); params ``lr``, ``grid`` (JSON: lr -> val
        top-1), ``subset_sha256``, ``subset_spec``, ``num_labelled``, ``num_val``, ``num_test``,
        ``feature_dim``, ``seconds`` (and ``diverged_lrs`` when a grid point diverged); the artifact
        ``labelled_subset.json``.

    Raises:
        ConfigError: a wrong spec, labels outside ``[0, num_classes)``, a class too small for the
            validation split, or every lr of the grid diverging.
        DatasetError: the subset belongs to another dataset or split.
        RuntimeError: the encoder changed.
    """
    start = time.perf_counter()
    if not isinstance(spec, SemiSupSpec):
        raise ConfigError(f"fine_tune got {spec!r}, not a SemiSupSpec.",
                          "Pass a semi-supervised spec, e.g. get_protocol('semisup-1pct').")
    info = train.info
    preprocess = preprocess or default_preprocess(info)
    if augment is None:
        from sslbench.benchmark.augment import BatchAugment, get_augment_recipe

        recipe = get_augment_recipe("linear-eval" if spec.augment == "auto" else spec.augment)
        augment = BatchAugment(recipe, info.mean, info.std, info.image_size)
    train_labels = torch.as_tensor(train.labels).detach().cpu().long()
    if subset is None:
        subset = balanced_subset(train_labels.numpy(), str(info.name), fraction=spec.fraction,
                                 per_class=spec.per_class, seed=spec.subset_seed)
    _check_subset(subset, train)
    labelled_idx = torch.as_tensor(subset.indices, dtype=torch.long)
    _check_labels(train_labels[labelled_idx], num_classes, "labelled-subset")
    val_idx = validation_split(train_labels, subset.indices, spec.val_per_class, spec.seed)
    assert not set(val_idx.tolist()) & set(subset.indices), "validation split overlaps the labelled subset"
    _check_labels(train_labels[val_idx], num_classes, "validation")
    labelled, val = _take(train, labelled_idx), _take(train, val_idx)
    ks = (1, 5) if num_classes >= 5 else (1,)
    before = snapshot_state(encoder)

    lrs = sorted(spec.lrs)
    val_correct: dict[float, int] = {}
    diverged: list[float] = []
    chosen: nn.Module | None = None
    lr = lrs[0]
    feature_dim = 0
    n_val = int(val_idx.numel())
    metrics: dict[str, float] = {}
    student: nn.Module | None = None
    total_epochs = len(lrs) * spec.epochs + spec.distill_epochs
    with tqdm(total=total_epochs, desc=f"{spec.name} ({len(lrs)} lrs)", disable=not progress, leave=False) as bar:
        for grid_lr in lrs:  # ascending, and only a strictly better one replaces: ties keep the smaller lr
            backbone = copy.deepcopy(encoder)
            if not feature_dim:
                first = next(iter(labelled.batches(2, shuffle=False)))
                feature_dim = _feature_dim(backbone, first.images.to(device), preprocess)
            model = nn.Sequential(backbone, _head(feature_dim, num_classes, spec.seed, device))
            if not _train(model, labelled, epochs=spec.epochs, batch_size=spec.batch_size, lr=grid_lr,
                          weight_decay=spec.weight_decay, seed=spec.seed, device=device, augment=augment,
                          loss_fn=_ce_loss, bar=bar):
                diverged.append(grid_lr)
                val_correct[grid_lr] = 0
                continue
            val_correct[grid_lr] = _correct(model, val, preprocess, device, (1,), num_classes, "validation")[1]
            if chosen is None or val_correct[grid_lr] > val_correct[lr]:
                chosen, lr = model, grid_lr
        if chosen is None:
            raise ConfigError(f"Semi-supervised fine-tuning diverged at every lr of {spec.lrs}.",
                              "Use smaller learning rates.")
        metrics["val_top1"] = 100.0 * val_correct[lr] / n_val

        if spec.distill_epochs > 0:
            teacher = chosen.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            student_backbone = copy.deepcopy(encoder)
            if spec.distill_student == "random":
                _reinitialise(student_backbone, spec.seed)
            student = nn.Sequential(student_backbone, _head(feature_dim, num_classes, spec.seed, device))
            tau = spec.distill_temperature

            def distill(model: nn.Module, x: Tensor, _: Tensor) -> Tensor:
                with torch.no_grad():
                    target = teacher(x)
                return distillation_loss(model(x), target, tau)

            if not _train(student, train, epochs=spec.distill_epochs, batch_size=spec.batch_size, lr=lr,
                          weight_decay=spec.weight_decay, seed=spec.seed, device=device, augment=augment,
                          loss_fn=distill, bar=bar):
                raise ConfigError(f"Distillation diverged at the chosen lr {lr:g}.", "Use smaller learning rates.")
            metrics["student_val_top1"] = 100.0 * _correct(student, val, preprocess, device, (1,), num_classes,
                                                           "validation")[1] / n_val

    # Every choice is made: the test split is read only from here on, once per scored model.
    n_test = len(test)
    scored = [("", chosen)] if student is None else [("teacher_", chosen), ("", student)]
    for prefix, scored_model in scored:
        counts = _correct(scored_model, test, preprocess, device, ks, num_classes, "test")
        metrics.update({f"{prefix}top{k}": 100.0 * counts[k] / n_test for k in ks})
    assert_frozen(before, encoder)

    params: dict[str, float | str] = {
        "lr": lr,
        "grid": json.dumps({f"{c:g}": 100.0 * n / n_val for c, n in val_correct.items()}, sort_keys=True),
        "subset_sha256": subset.sha256,
        "subset_spec": subset.spec,
        "num_labelled": float(labelled_idx.numel()),
        "num_val": float(n_val),
        "num_test": float(n_test),
        "feature_dim": float(feature_dim),
        "seconds": time.perf_counter() - start,
    }
    if diverged:
        params["diverged_lrs"] = json.dumps(diverged)
    artifacts = {"labelled_subset.json": json.dumps(subset.to_dict(), indent=1) + "\n"}
    return ProtocolOutput(metrics=metrics, params=params, artifacts=artifacts)
