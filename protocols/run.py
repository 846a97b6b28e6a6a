"""Runs a list of protocol specs on one frozen encoder: what the CLI and the quickstart call."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sslbench.benchmark.errors import ConfigError
from sslbench.protocols.features import extract_features
from sslbench.protocols.knn import knn_classify
from sslbench.protocols.linear import (
    LinearResult,
    assert_frozen,
    default_preprocess,
    linear_probe_augmented,
    linear_probe_features,
    snapshot_state,
)
from sslbench.protocols.spec import KNNSpec, LinearSpec, ProtocolSpec

__all__ = ["ProtocolResult", "evaluate"]


@dataclass(frozen=True)
class ProtocolResult:
    """One protocol's result on one encoder.

    Args:
        spec: the full spec it was measured under (store ``spec.to_dict()`` with the numbers).
        metrics: ``"top1"``, ``"top5"`` (percent; top-5 only with >= 5 classes), and for linear
            probes ``"val_top1"`` (the chosen grid point's top-1 on the held-out train split).
        params: values resolved at run time: kNN ``k`` (after clamping to the train-set size) and
            ``temperature``; linear ``lr``, ``weight_decay``, ``mode`` and the val top-1
            of every grid point, as a JSON string under ``grid``: the keys hold ``=`` and ``,``, which
            MLflow does not allow in parameter names); always ``num_train``, ``num_test``, and
            ``feature_dim`` / ``feature_seconds`` when features were extracted.
        eval_dataset: the test split's dataset name.
        seconds: wall-clock time of this protocol's own step. Feature extraction shared by the
            feature-based specs is *not* included; it is in ``params["feature_seconds"]``.
    """

    spec: ProtocolSpec
    metrics: dict[str, float]
    params: dict[str, float | str]
    eval_dataset: str
    seconds: float


def _num_classes(train: Any, test: Any) -> int:
    """The dataset's class count (discovered from the labels when the info says 0, as for image
    folders), after checking that both splits are labelled within it."""
    labels = {name: torch.as_tensor(split.labels).cpu() for name, split in (("train", train), ("test", test))}
    num_classes = int(getattr(train.info, "num_classes", 0) or 0)
    if num_classes <= 0:
        num_classes = max(int(t.max()) for t in labels.values() if t.numel()) + 1
    for name, t in labels.items():
        if t.numel() == 0:
            raise ConfigError(f"The {name} split is empty.", "Evaluate on non-empty train and test splits.")
        if int(t.min()) < 0 or int(t.max()) >= num_classes:
            raise ConfigError(f"The {name} split has labels outside [0, {num_classes}).",
                              "Evaluate on labelled splits (not e.g. STL-10 'unlabeled', whose labels are -1).")
    return num_classes


def _linear_record(result: LinearResult) -> tuple[dict[str, float], dict[str, float | str]]:
    metrics = {"top1": result.top1, "val_top1": result.val_top1}
    if result.top5 is not None:
        metrics["top5"] = result.top5
    params: dict[str, float | str] = {"lr": result.lr, "weight_decay": result.weight_decay}
    params["grid"] = json.dumps(result.grid, sort_keys=True)
    return metrics, params


def evaluate(
    encoder: nn.Module,
    train: Any,
    test: Any,
    specs: Sequence[ProtocolSpec],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    progress: bool = True,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    augment: Callable[[Tensor, torch.Generator], list[Tensor]] | None = None,
) -> list[ProtocolResult]:
    """Evaluates a frozen encoder under each spec, in order.

    Train and test features are extracted once (plain preprocessing) and shared by every
    feature-based spec (kNN, linear ``mode="features"``); ``mode="augmented"`` linear specs run the
    encoder on fresh crops. The encoder's state_dict is snapshotted first and checked
    bit-identical after everything (:func:`~sslbench.protocols.linear.assert_frozen`); its module
    modes and ``requires_grad`` flags are restored. The encoder must already live on ``device``.

    Args:
        encoder: maps preprocessed images (B, C, H, W) to features (B, D).
        train: the train split (``.batches``, ``.labels``, ``.info``, ``len()``): the kNN bank and
            the linear probe's training (and validation) data.
        test: the test split, scored once per spec.
        specs: the protocols to run.
        device: where the encoder and protocols run.
        batch_size: images per forward pass during feature extraction.
        progress: show tqdm bars (feature extraction batches, linear grids).
        preprocess: plain preprocessing of uint8 batches; default ``to_float_normalized`` with
            ``train.info``'s mean, std and image size.
        augment: training augmentation for augmented linear specs; default the ``"linear-eval"``
            recipe.

    Returns:
        One :class:`ProtocolResult` per spec, in the order of ``specs``.

    Raises:
        RuntimeError: the encoder changed during evaluation.
    """
    for spec in specs:
        if not isinstance(spec, (KNNSpec, LinearSpec)):
            raise ConfigError(f"{spec!r} is not a protocol spec.", "Pass specs from sslbench.protocols.get_protocol.")
    preprocess = preprocess or default_preprocess(train.info)
    num_classes = _num_classes(train, test)
    eval_dataset = str(getattr(test.info, "name", "unknown"))
    before = snapshot_state(encoder)
    common: dict[str, float | str] = {"num_train": float(len(train)), "num_test": float(len(test))}

    features: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
    if any(isinstance(s, KNNSpec) or s.mode == "features" for s in specs):
        start = time.perf_counter()
        train_x, train_y = extract_features(encoder, train, batch_size=batch_size, device=device,
                                            preprocess=preprocess, progress="features: train" if progress else None)
        test_x, test_y = extract_features(encoder, test, batch_size=batch_size, device=device,
                                          preprocess=preprocess, progress="features: test" if progress else None)
        features = (train_x, train_y, test_x, test_y)
        common["feature_dim"] = float(train_x.shape[1])
        common["feature_seconds"] = time.perf_counter() - start

    results = []
    for spec in specs:
        start = time.perf_counter()
        params: dict[str, float | str] = dict(common)
        if isinstance(spec, KNNSpec):
            assert features is not None
            train_x, train_y, test_x, test_y = features
            metrics = knn_classify(train_x.to(device), train_y, test_x, test_y, num_classes=num_classes,
                                   k=spec.k, temperature=spec.temperature)
            params.update({"k": float(min(spec.k, train_x.shape[0])), "temperature": spec.temperature})
        else:
            if spec.mode == "features":
                assert features is not None
                train_x, train_y, test_x, test_y = features
                result = linear_probe_features(train_x, train_y, test_x, test_y, num_classes=num_classes,
                                               spec=spec, device=device, progress=progress)
            else:
                result = linear_probe_augmented(encoder, train, test, spec=spec, device=device, progress=progress,
                                                num_classes=num_classes, preprocess=preprocess, augment=augment)
            metrics, linear_params = _linear_record(result)
            params.update(linear_params)
            params["mode"] = spec.mode
        results.append(ProtocolResult(spec=spec, metrics=metrics, params=params, eval_dataset=eval_dataset,
                                      seconds=time.perf_counter() - start))
    assert_frozen(before, encoder)
    return results
