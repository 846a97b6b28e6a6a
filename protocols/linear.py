"""Linear probe on frozen features, with hyperparameters chosen on a held-out part of the train set.

Protocol (both modes, see :class:`~sslbench.protocols.spec.LinearSpec`):

1. carve a stratified validation split from the *train* set (``val_fraction``, ``seed``);
2. train one linear classifier per ``(lr, weight_decay)`` of the grid on the rest, for a fixed
   number of epochs, and score top-1 on the validation split; every grid point sees the same
   initialisation, the same mini-batches and (augmented mode) the same crops, so the grid is
   trained as one batched model of shape (G, D, C);
3. pick the best validation top-1; ties go to the smaller lr, then the larger weight decay;
4. retrain on the full train set with the chosen values and score the test set once, after the
   last epoch. The test split is not touched before step 4.

Version history (:class:`~sslbench.protocols.spec.LinearSpec` ``version``):
    1: initial implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sslbench.benchmark.errors import ConfigError
from sslbench.protocols.features import autocast_context, extract_features, frozen_eval, resolve_precision
from sslbench.protocols.knn import topk_correct
from sslbench.protocols.spec import LinearSpec

__all__ = [
    "LinearGrid",
    "LinearResult",
    "assert_frozen",
    "choose_hyperparameters",
    "cosine_lr_factor",
    "default_preprocess",
    "grid_key",
    "linear_probe_augmented",
    "linear_probe_features",
    "normalized_preprocess",
    "snapshot_state",
    "stratified_split",
]

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
SGD_MOMENTUM = 0.9


@dataclass(frozen=True)
class LinearResult:
    """Outcome of one linear probe.

    Args:
        top1: test top-1 accuracy (percent) of the classifier retrained on the full train set.
        top5: test top-5 accuracy (percent), None when there are fewer than 5 classes.
        val_top1: validation top-1 (percent) of the chosen grid point.
        lr: chosen learning rate.
        weight_decay: chosen weight decay.
        grid: ``grid_key(lr, wd)`` -> validation top-1 (percent) for every grid point.
    """

    top1: float
    top5: float | None
    val_top1: float
    lr: float
    weight_decay: float
    grid: dict[str, float]


def grid_key(lr: float, weight_decay: float) -> str:
    """The record key of one grid point, e.g. ``"lr=0.001,wd=0.0001"``."""
    return f"lr={lr:g},wd={weight_decay:g}"


def cosine_lr_factor(step: int, total_steps: int) -> float:
    """Cosine decay from 1 at step 0 towards 0 at ``total_steps`` (no warmup)."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def stratified_split(labels: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Splits row indices into a fit part and a validation part with the class proportions kept.

    Each class ``c`` with ``n_c`` rows gives ``round(val_fraction * n_c)`` rows to validation,
    clamped to ``[1, n_c - 1]`` (a class with a single row stays in the fit part). The rows are
    drawn with a generator seeded by ``seed``, so the split is a pure function of
    ``(labels, val_fraction, seed)``.

    Returns:
        ``(fit_indices, val_indices)``, each sorted ascending; disjoint, and together all rows.

    Shape:
        - labels: (N,)
        - fit_indices: (N - V,), val_indices: (V,) int64
    """
    labels = labels.cpu().long()
    gen = torch.Generator().manual_seed(seed)
    val_parts = []
    for c in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == c).flatten()
        n_val = min(max(round(val_fraction * rows.numel()), 1), rows.numel() - 1)
        if n_val > 0:
            val_parts.append(rows[torch.randperm(rows.numel(), generator=gen)[:n_val]])
    is_val = torch.zeros(labels.numel(), dtype=torch.bool)
    if val_parts:
        is_val[torch.cat(val_parts)] = True
    if not is_val.any():
        raise ConfigError(
            "The train set is too small to carve a validation split (every class has one image).",
            "Use a train set with at least two images per class.",
        )
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


def choose_hyperparameters(val_correct: dict[tuple[float, float], int]) -> tuple[float, float]:
    """The ``(lr, weight_decay)`` with the most correct validation predictions.

    Ties go to the smaller learning rate, then to the larger weight decay (the more conservative
    classifier), so the choice is deterministic and independent of the grid's order.

    Args:
        val_correct: ``(lr, weight_decay)`` -> number of correct validation predictions.
    """
    return min(val_correct, key=lambda lw: (-val_correct[lw], lw[0], -lw[1]))


class LinearGrid:
    """G linear classifiers trained side by side, one per ``(lr, weight_decay)`` grid point.

    All heads start from the same seeded ``nn.Linear``-style initialisation and are updated on
    the same mini-batches with the analytic softmax cross-entropy gradient. Weight decay is coupled
    L2 (added to the gradient, as ``torch.optim`` does) on the weights only, not the bias.

    Args:
        dim: feature dimension D.
        num_classes: number of classes C.
        lrs: base learning rate of each head.
        weight_decays: weight decay of each head.
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9).
        seed: seeds the initialisation.
        device: where the weights live.

    The heads are stored side by side, head index last, so that each step is two plain GEMMs
    over all of them and the softmax runs over a non-innermost dimension (several times faster on
    CPU than a softmax over an innermost dimension of size C).

    Shape:
        - weight: (D, C, G), bias: (C, G)
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        lrs: Sequence[float],
        weight_decays: Sequence[float],
        *,
        optimizer: str,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        if len(lrs) != len(weight_decays) or not lrs:
            raise ValueError("lrs and weight_decays must be non-empty and of equal length.")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer={optimizer!r} must be 'adam' or 'sgd'.")
        g = len(lrs)
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(dim)
        w0 = (torch.rand(dim, num_classes, generator=gen) * 2 - 1) * bound
        b0 = (torch.rand(num_classes, generator=gen) * 2 - 1) * bound
        self.num_heads = g
        self.weight = w0.to(device)[:, :, None].expand(dim, num_classes, g).contiguous()
        self.bias = b0.to(device)[:, None].expand(num_classes, g).contiguous()
        self.lr = torch.tensor(lrs, dtype=torch.float32, device=device)
        self.wd = torch.tensor(weight_decays, dtype=torch.float32, device=device)
        self.optimizer = optimizer
        self.step_count = 0
        # SGD: momentum buffers (w, b); Adam: first moments (w, b) then second moments (w, b).
        params = (self.weight, self.bias) * (2 if optimizer == "adam" else 1)
        self._state = [torch.zeros_like(t) for t in params]

    def logits(self, x: Tensor) -> Tensor:
        """Shape: x (B, D) -> (B, C, G)."""
        d, c, g = self.weight.shape
        return (x @ self.weight.view(d, c * g)).view(-1, c, g) + self.bias

    def step(self, x: Tensor, y: Tensor, lr_factor: float) -> None:
        """One optimiser step of every head on the mean cross-entropy of the batch.

        Shape:
            - x: (B, D), y: (B,)
        """
        b = x.shape[0]
        grad = self.logits(x).softmax(dim=1)  # d(mean CE)/d logits = (softmax - onehot) / B
        grad[torch.arange(b, device=x.device), y, :] -= 1.0
        grad /= b
        d, c, g = self.weight.shape
        g_w = (x.T @ grad.view(b, c * g)).view(d, c, g) + self.wd * self.weight
        g_b = grad.sum(dim=0)  # (C, G)
        lr = self.lr * lr_factor  # (G,): broadcasts over (D, C, G) and (C, G)
        self.step_count += 1
        if self.optimizer == "sgd":
            for p, grad_p, buf in ((self.weight, g_w, self._state[0]), (self.bias, g_b, self._state[1])):
                buf.mul_(SGD_MOMENTUM).add_(grad_p)
                p.sub_(lr * buf)
            return
        beta1, beta2 = ADAM_BETAS
        c1 = 1 - beta1**self.step_count
        c2 = 1 - beta2**self.step_count
        m_w, m_b, v_w, v_b = self._state
        for p, grad_p, m, v in ((self.weight, g_w, m_w, v_w), (self.bias, g_b, m_b, v_b)):
            m.mul_(beta1).add_(grad_p, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad_p, grad_p, value=1 - beta2)
            update = (m / c1) / ((v / c2).sqrt() + ADAM_EPS)
            p.sub_(lr * update)

    @torch.no_grad()
    def correct(self, x: Tensor, y: Tensor, ks: tuple[int, ...] = (1,), chunk_size: int = 4096) -> list[dict[int, int]]:
        """Per head, the number of rows whose label is in the top-k predictions (ties: smaller class)."""
        out = [dict.fromkeys(ks, 0) for _ in range(self.num_heads)]
        for start in range(0, x.shape[0], chunk_size):
            logits = self.logits(x[start : start + chunk_size])
            labels = y[start : start + chunk_size]
            for g in range(len(out)):
                for k, n in topk_correct(logits[:, :, g], labels, ks).items():
                    out[g][k] += n
        return out


def _check_labels(labels: Tensor, num_classes: int, what: str) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(f"The {what} labels of the linear probe lie outside [0, {num_classes}).",
                          "Evaluate on labelled splits (not e.g. STL-10 'unlabeled', whose labels are -1).")


def _standardise(fit: Tensor, *others: Tensor) -> list[Tensor]:
    """Standardises every tensor with the per-feature mean / std of ``fit`` (constant features -> 0)."""
    mean = fit.mean(dim=0)
    std = fit.std(dim=0).clamp_min(1e-6)  # a constant feature is centred to 0, not divided by 0
    return [(t - mean) / std for t in (fit, *others)]


def _fit_features(x: Tensor, y: Tensor, num_classes: int, configs: list[tuple[float, float]], spec: LinearSpec,
                  bar: Any) -> LinearGrid:
    """Trains one head per config on standardised features (mode "features")."""
    grid = LinearGrid(x.shape[1], num_classes, [c[0] for c in configs], [c[1] for c in configs],
                      optimizer="adam", seed=spec.seed, device=x.device)
    n = x.shape[0]
    bs = min(spec.batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    total = spec.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(spec.seed)
    for _ in range(spec.epochs):
        order = torch.randperm(n, generator=gen).to(x.device) if bs < n else torch.arange(n, device=x.device)
        for s in range(steps_per_epoch):
            idx = order[s * bs : (s + 1) * bs]
            grid.step(x[idx], y[idx], cosine_lr_factor(grid.step_count, total))
        bar.update(1)
    return grid


def linear_probe_features(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    spec: LinearSpec,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> LinearResult:
    """Linear probe on pre-computed features (mode ``"features"``, no augmentation).

    Features are standardised with the statistics of the part they are trained on (the fit part
    for the grid search, the full train set for the final classifier). See the module docstring
    for the protocol.

    Args:
        train_features: train-set features.
        train_labels: train-set labels in ``[0, num_classes)``.
        test_features: test-set features (used only after the choice).
        test_labels: test-set labels (used only after the choice).
        num_classes: number of classes C.
        spec: a ``LinearSpec`` with ``mode="features"``.
        device: where the classifiers are trained.
        progress: show a tqdm bar over epochs.

    Shape:
        - train_features: (N, D), train_labels: (N,)
        - test_features: (M, D), test_labels: (M,)
    """
    if spec.mode != "features":
        raise ConfigError(f"linear_probe_features got spec '{spec.name}' with mode={spec.mode!r}.",
                          "Use linear_probe_augmented for mode 'augmented' (or sslbench.protocols.evaluate).")
    if train_features.ndim != 2 or train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"train features {tuple(train_features.shape)} / labels {tuple(train_labels.shape)} "
                         "must be (N, D) / (N,).")
    if test_features.ndim != 2 or test_labels.shape != (test_features.shape[0],):
        raise ValueError(f"test features {tuple(test_features.shape)} / labels {tuple(test_labels.shape)} "
                         "must be (M, D) / (M,).")
    _check_labels(train_labels, num_classes, "train")
    x = train_features.to(device=device, dtype=torch.float32)
    y = train_labels.to(device=device, dtype=torch.long)
    fit_idx, val_idx = stratified_split(train_labels, spec.val_fraction, spec.seed)
    fit_idx, val_idx = fit_idx.to(device), val_idx.to(device)
    configs = [(lr, wd) for lr in spec.lrs for wd in spec.weight_decays]

    with tqdm(total=2 * spec.epochs, desc=f"{spec.name} ({len(configs)} grid points)", disable=not progress,
              leave=False) as bar:
        # Grid search: only train features are touched.
        x_fit, x_val = _standardise(x[fit_idx], x[val_idx])
        grid = _fit_features(x_fit, y[fit_idx], num_classes, configs, spec, bar)
        val_correct = {c: counts[1] for c, counts in zip(configs, grid.correct(x_val, y[val_idx]))}
        lr, wd = choose_hyperparameters(val_correct)

        # Final classifier on the full train set; the test set is looked at only now.
        _check_labels(test_labels, num_classes, "test")
        x_train, x_test = _standardise(x, test_features.to(device=device, dtype=torch.float32))
        final = _fit_features(x_train, y, num_classes, [(lr, wd)], spec, bar)
    return _result(final, x_test, test_labels.to(device=device, dtype=torch.long), num_classes, val_correct,
                   val_idx.numel(), lr, wd)


def _result(final: LinearGrid, x_test: Tensor, y_test: Tensor, num_classes: int,
            val_correct: dict[tuple[float, float], int], n_val: int, lr: float, wd: float) -> LinearResult:
    ks = (1, 5) if num_classes >= 5 else (1,)
    counts = final.correct(x_test, y_test, ks)[0]
    n_test = y_test.numel()
    return LinearResult(
        top1=100.0 * counts[1] / n_test,
        top5=100.0 * counts[5] / n_test if 5 in counts else None,
        val_top1=100.0 * val_correct[(lr, wd)] / n_val,
        lr=lr,
        weight_decay=wd,
        grid={grid_key(c_lr, c_wd): 100.0 * n / n_val for (c_lr, c_wd), n in val_correct.items()},
    )


# --------------------------------------------------------------------------------------------
# Augmented mode: frozen encoder, fresh linear-eval crops every epoch.
# --------------------------------------------------------------------------------------------

def snapshot_state(module: nn.Module) -> dict[str, Tensor]:
    """A detached copy of ``module.state_dict()`` (parameters and buffers), for :func:`assert_frozen`."""
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def _bit_equal(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if torch.equal(a, b):
        return True
    # torch.equal says NaN != NaN; compare the raw bits of floating tensors instead.
    if a.is_floating_point() and a.element_size() in (2, 4, 8):
        as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))
    return False


def assert_frozen(before: dict[str, Tensor], module: nn.Module) -> None:
    """Checks that ``module``'s state_dict is bit-identical to a snapshot taken earlier.

    A frozen-backbone protocol must leave parameters *and* buffers (BatchNorm running statistics,
    ``num_batches_tracked``) untouched (moco-v3 ``main_lincls.py::sanity_check``).

    Args:
        before: the output of :func:`snapshot_state` (or any name -> tensor copy of the state).
        module: the module to check now.

    Raises:
        RuntimeError: an entry changed, appeared or disappeared; the message names them.
    """
    after = module.state_dict()
    changed = sorted(k for k in before.keys() & after.keys() if not _bit_equal(before[k], after[k].detach()))
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    if changed or added or removed:
        parts = [f"{what}: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}"
                 for what, names in (("changed", changed), ("added", added), ("removed", removed)) if names]
        raise RuntimeError(
            "The frozen encoder was modified during evaluation (" + "; ".join(parts) + "). A protocol must "
            "run the encoder in eval mode under torch.no_grad and never update it."
        )


def _fit_augmented(encoder: nn.Module, train: Any, in_fit: Tensor, num_classes: int,
                   configs: list[tuple[float, float]], spec: LinearSpec, device: torch.device | str,
                   augment: Callable[[Tensor, torch.Generator], list[Tensor]],
                   bar: Any, precision: str = "fp32") -> tuple[LinearGrid, nn.Module]:
    """Trains one head per config on augmented crops of the rows where ``in_fit`` (mode "augmented").

    Every head sees the same crops: the encoder runs once per batch for the whole grid. The
    features pass a shared non-affine BatchNorm (batch statistics in training, running statistics
    at evaluation, as MAE's linear probe); it has no trainable parameters, so sharing it is exact.
    Batches with fewer than two selected rows are skipped (BatchNorm needs two). The encoder runs
    under ``precision``'s autocast (:func:`~sslbench.protocols.features.autocast_context`), the
    heads in fp32.
    """
    steps_per_epoch = math.ceil(len(train) / spec.batch_size)  # upper bound: selected batches may be smaller
    total = spec.epochs * steps_per_epoch
    shuffle_gen = torch.Generator().manual_seed(spec.seed)
    augment_gen = torch.Generator(device=device).manual_seed(spec.seed)
    grid: LinearGrid | None = None
    norm: nn.Module | None = None
    step = 0
    for _ in range(spec.epochs):
        for batch in train.batches(spec.batch_size, shuffle=True, generator=shuffle_gen):
            step += 1
            bar.update(1)
            keep = in_fit[torch.as_tensor(batch.indices).long().cpu()]
            if int(keep.sum()) < 2:
                continue
            images = batch.images[keep.to(batch.images.device)].to(device)
            labels = torch.as_tensor(batch.labels).long().cpu()[keep].to(device)
            with torch.no_grad():
                with autocast_context(precision, device):
                    feats = encoder(augment(images, augment_gen)[0]).float()
                if grid is None:
                    grid = LinearGrid(feats.shape[1], num_classes, [c[0] for c in configs], [c[1] for c in configs],
                                      optimizer="sgd", seed=spec.seed, device=device)
                    norm = nn.BatchNorm1d(feats.shape[1], affine=False).to(device).train()
                assert norm is not None
                grid.step(norm(feats), labels, cosine_lr_factor(step - 1, total))
    if grid is None or norm is None:
        raise ConfigError("The linear probe saw no training batch.", "Use a larger train set or a smaller batch_size.")
    return grid, norm.eval()


def linear_probe_augmented(
    encoder: nn.Module,
    train: Any,
    test: Any,
    *,
    spec: LinearSpec,
    device: torch.device | str = "cpu",
    progress: bool = True,
    num_classes: int | None = None,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    augment: Callable[[Tensor, torch.Generator], list[Tensor]] | None = None,
    precision: str = "auto",
) -> LinearResult:
    """Linear probe on a frozen encoder with linear-eval augmentation (mode ``"augmented"``).

    The encoder runs in eval mode with ``requires_grad=False`` under ``torch.no_grad`` (its modes
    are restored afterwards) and must already live on ``device``. Train crops are fresh every epoch;
    validation and test images are plain-preprocessed. Afterwards the encoder's state_dict is
    checked bit-identical to before (:func:`assert_frozen`). Use this path for real datasets.

    Args:
        encoder: maps preprocessed images (B, C, H, W) to features (B, D).
        train: a dataset (``.batches``, ``.labels``, ``.info``, ``len()``).
        test: a dataset of the same kind.
        spec: a ``LinearSpec`` with ``mode="augmented"``.
        device: where the encoder and heads run.
        progress: show tqdm bars.
        num_classes: number of classes C; default ``train.info.num_classes``.
        preprocess: plain preprocessing of uint8 batches for val/test; default
            ``to_float_normalized`` with ``train.info``'s mean, std and image size.
        augment: ``(uint8 images, generator) -> [one view]``; default the ``"linear-eval"``
            recipe of :mod:`sslbench.benchmark.augment`.
        precision: the encoder's autocast on train crops and val/test images alike, ``"auto"``
            (bf16 on CUDA, fp32 on the CPU), ``"fp32"`` or ``"bf16"``.

    Raises:
        RuntimeError: the encoder changed during the probe.
    """
    if spec.mode != "augmented":
        raise ConfigError(f"linear_probe_augmented got spec '{spec.name}' with mode={spec.mode!r}.",
                          "Use linear_probe_features for mode 'features' (or sslbench.protocols.evaluate).")
    info = train.info
    num_classes = int(num_classes or info.num_classes)
    preprocess = preprocess or default_preprocess(info)
    if augment is None:
        from sslbench.benchmark.augment import BatchAugment, get_augment_recipe

        augment = BatchAugment(get_augment_recipe("linear-eval"), info.mean, info.std, info.image_size)
    train_labels = torch.as_tensor(train.labels).long().cpu()
    _check_labels(train_labels, num_classes, "train")
    fit_idx, val_idx = stratified_split(train_labels, spec.val_fraction, spec.seed)
    in_fit = torch.zeros(len(train), dtype=torch.bool)
    in_fit[fit_idx] = True
    configs = [(lr, wd) for lr in spec.lrs for wd in spec.weight_decays]
    before = snapshot_state(encoder)
    batches_per_run = spec.epochs * math.ceil(len(train) / spec.batch_size)
    extract_bs = max(spec.batch_size, 256)
    precision = resolve_precision(precision, device)  # fails early on a bad value

    with frozen_eval(encoder), tqdm(total=2 * batches_per_run, desc=f"{spec.name} ({len(configs)} grid points)",
                                    disable=not progress, leave=False) as bar:
        # Grid search: only the train set is touched.
        val_x, val_y = extract_features(encoder, train, batch_size=extract_bs, device=device,
                                        preprocess=preprocess, subset=~in_fit, precision=precision,
                                        output_device=None)
        grid, norm = _fit_augmented(encoder, train, in_fit, num_classes, configs, spec, device, augment, bar,
                                    precision)
        with torch.no_grad():
            val_counts = grid.correct(norm(val_x.to(device)), val_y.to(device))
        val_correct = {c: counts[1] for c, counts in zip(configs, val_counts)}
        lr, wd = choose_hyperparameters(val_correct)

        # Final head on the full train set; the test set is looked at only now.
        final, final_norm = _fit_augmented(encoder, train, torch.ones(len(train), dtype=torch.bool), num_classes,
                                           [(lr, wd)], spec, device, augment, bar, precision)
        test_x, test_y = extract_features(encoder, test, batch_size=extract_bs, device=device, preprocess=preprocess,
                                          precision=precision, output_device=None)
        _check_labels(test_y, num_classes, "test")
        with torch.no_grad():
            test_x = final_norm(test_x.to(device))
    assert_frozen(before, encoder)
    return _result(final, test_x, test_y.to(device), num_classes, val_correct, val_idx.numel(), lr, wd)


def normalized_preprocess(mean: Sequence[float], std: Sequence[float], size: int) -> Callable[[Tensor], Tensor]:
    """Plain preprocessing: ``to_float_normalized`` with this mean, std and output size."""
    from sslbench.benchmark.augment import to_float_normalized

    def preprocess(images: Tensor) -> Tensor:
        out: Tensor = to_float_normalized(images, tuple(mean), tuple(std), size=size)
        return out

    return preprocess


def default_preprocess(info: Any) -> Callable[[Tensor], Tensor]:
    """Plain preprocessing for a dataset: ``to_float_normalized`` with its mean, std and image size."""
    return normalized_preprocess(info.mean, info.std, info.image_size)
