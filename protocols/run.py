"""Runs a list of protocol specs on one frozen encoder: what the CLI and the quickstart call.

kNN and the linear probe share one feature extraction; semi-supervised fine-tuning, detection and
diagnostics have their own runners (imported when first needed: detection brings pycocotools).
Every runner gets the encoder frozen and must leave it bit-identical, which is checked at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sslbench.benchmark.console import bars_enabled
from sslbench.benchmark.errors import ConfigError
from sslbench.protocols.features import extract_features, resolve_precision
from sslbench.protocols.knn import knn_classify
from sslbench.protocols.linear import (
    LinearResult,
    assert_frozen,
    linear_probe_augmented,
    linear_probe_features,
    normalized_preprocess,
    snapshot_state,
)
from sslbench.protocols.output import ProtocolOutput
from sslbench.protocols.spec import (
    DetectionSpec,
    DiagnosticsSpec,
    KNNSpec,
    LinearSpec,
    ProtocolSpec,
    SemiSupSpec,
)
from sslbench.protocols.subsets import LabelledSubset

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
            ``feature_dim`` / ``feature_seconds`` when features were extracted, and
            ``feature_precision`` (``"fp32"`` or ``"bf16"``: the autocast the encoder ran under)
            for kNN and linear specs.
            Semi-supervised, detection and diagnostics specs report their own (see their runners).
        eval_dataset: the dataset evaluated on (the test split's; a detection spec's dataset).
        seconds: wall-clock time of this protocol's own step. Feature extraction shared by the
            feature-based specs is *not* included; it is in ``params["feature_seconds"]``.
        artifacts: extra files for the evaluation run, file name -> text.
    """

    spec: ProtocolSpec
    metrics: dict[str, float]
    params: dict[str, float | str]
    eval_dataset: str
    seconds: float
    artifacts: dict[str, str] = field(default_factory=dict)


def _num_classes(train: Any, test: Any) -> int:
    """The dataset's class count (discovered from the labels when the info says 0, as for image
    folders), after checking that both splits are labelled within it."""
    labels = {name: torch.as_tensor(split.labels).cpu() for name, split in (("train", train), ("test", test))}
    for name, t in labels.items():
        if t.numel() and int(t.max()) < 0:
            raise ConfigError(
                f"The {name} split is unlabelled (every label is -1: an image folder without class "
                "subfolders, or STL-10 'unlabeled'), but kNN, the linear probe and fine-tuning need labels.",
                "Evaluate on a labelled split (<split>/<class>/<image> folders); unlabelled folders are for "
                "pretraining.")
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
    batch_size: int | None = None,
    precision: str = "auto",
    progress: bool = True,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    augment: Callable[[Tensor, torch.Generator], list[Tensor]] | None = None,
    normalization: tuple[Sequence[float], Sequence[float], int] | None = None,
    finetune_encoder: nn.Module | None = None,
    subset: LabelledSubset | None = None,
    detection_dataset: str | None = None,
    detection_data_dir: str | None = None,
    on_result: Callable[[ProtocolResult], None] | None = None,
) -> list[ProtocolResult]:
    """Evaluates a frozen encoder under each spec, in order.

    Train and test features are extracted once (plain preprocessing) and shared by every
    feature-based spec (kNN, linear ``mode="features"``); ``mode="augmented"`` linear specs run the
    encoder on fresh crops; semi-supervised specs fine-tune a copy; detection specs train a
    detector on a copy, on their own detection dataset; diagnostics embed the test split. The
    encoder's state_dict is snapshotted first and checked bit-identical after everything
    (:func:`~sslbench.protocols.linear.assert_frozen`); its module modes and ``requires_grad``
    flags are restored. The encoder must already live on ``device``.

    Args:
        encoder: maps preprocessed images (B, C, H, W) to features (B, D).
        train: the train split (``.batches``, ``.labels``, ``.info``, ``len()``): the kNN bank, the
            linear probe's and fine-tuning's training (and validation) data. None when only
            detection specs run.
        test: the test split, scored once per spec (None when only detection specs run).
        specs: the protocols to run.
        device: where the encoder and protocols run.
        batch_size: images per forward pass during feature extraction (default 512 on the CPU,
            more on CUDA: :func:`~sslbench.protocols.features.default_extract_batch_size`).
        precision: the encoder's autocast for kNN and linear specs, ``"auto"`` (bf16 on CUDA,
            fp32 on the CPU), ``"fp32"`` or ``"bf16"``; recorded as ``feature_precision``. The
            other runners keep their own (fp32).
        progress: show tqdm bars (feature extraction batches, linear grids), where stderr is a
            terminal.
        preprocess: plain preprocessing of uint8 batches; default ``to_float_normalized`` with
            ``normalization`` (else ``train.info``'s mean, std and image size).
        augment: training augmentation for augmented linear specs and fine-tuning; default the
            ``"linear-eval"`` recipe with the same normalisation.
        normalization: ``(mean, std, image_size)`` the encoder expects, when it differs from the
            evaluation data's own (a transfer: the pretraining data's statistics and size).
        finetune_encoder: the module semi-supervised specs with ``from_projector_layer > 0``
            fine-tune (the encoder followed by the method's first projector layers); required
            for such specs.
        subset: the labelled subset for semi-supervised specs (a split file); default: each
            spec draws its own with :func:`~sslbench.protocols.subsets.balanced_subset`.
        detection_dataset: detection dataset for detection specs (default: the spec's).
        detection_data_dir: where that dataset lives.
        on_result: called with each result as soon as its spec has run (the per-evaluation
            line of a log).

    Returns:
        One :class:`ProtocolResult` per spec, in the order of ``specs``.

    Raises:
        ConfigError: a spec that cannot run on these inputs.
        RuntimeError: the encoder changed during evaluation.
    """
    for spec in specs:
        if not isinstance(spec, (KNNSpec, LinearSpec, SemiSupSpec, DetectionSpec, DiagnosticsSpec)):
            raise ConfigError(f"{spec!r} is not a protocol spec.", "Pass specs from sslbench.protocols.get_protocol.")
        if isinstance(spec, SemiSupSpec) and spec.from_projector_layer and finetune_encoder is None:
            raise ConfigError(
                f"Protocol '{spec.name}' fine-tunes from projector layer {spec.from_projector_layer}, but no "
                "module with projector layers was given.",
                "Evaluate an sslbench checkpoint of a method with a projector (e.g. simclrv2), or use a spec "
                "with from_projector_layer=0.")
    progress = bars_enabled(progress)  # a log file or pipe gets no bars
    needs_splits = any(not isinstance(s, DetectionSpec) for s in specs)
    if needs_splits and (train is None or test is None):
        raise ConfigError("Classification protocols need train and test splits.", "Pass both splits.")
    if normalization is None and train is not None:
        normalization = (train.info.mean, train.info.std, train.info.image_size)
    if preprocess is None and normalization is not None:
        preprocess = normalized_preprocess(*normalization)
    if augment is None and normalization is not None:
        from sslbench.benchmark.augment import BatchAugment, get_augment_recipe

        mean, std, size = normalization
        augment = BatchAugment(get_augment_recipe("linear-eval"), tuple(mean), tuple(std), size)
    num_classes = _num_classes(train, test) if needs_splits else 0
    eval_dataset = str(getattr(test.info, "name", "unknown")) if test is not None else "unknown"
    before = snapshot_state(encoder)
    common: dict[str, float | str] = ({"num_train": float(len(train)), "num_test": float(len(test))}
                                      if needs_splits else {})
    feature_precision = resolve_precision(precision, device)

    features: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
    if any(isinstance(s, KNNSpec) or (isinstance(s, LinearSpec) and s.mode == "features") for s in specs):
        assert preprocess is not None
        start = time.perf_counter()
        # kept on `device`: kNN and the linear probe run there
        train_x, train_y = extract_features(encoder, train, batch_size=batch_size, device=device,
                                            preprocess=preprocess, progress="features: train" if progress else None,
                                            precision=feature_precision, output_device=None)
        test_x, test_y = extract_features(encoder, test, batch_size=batch_size, device=device,
                                          preprocess=preprocess, progress="features: test" if progress else None,
                                          precision=feature_precision, output_device=None)
        features = (train_x, train_y, test_x, test_y)
        common["feature_dim"] = float(train_x.shape[1])
        _synchronize(device)
        common["feature_seconds"] = time.perf_counter() - start

    results = []
    for spec in specs:
        start = time.perf_counter()
        params: dict[str, float | str] = dict(common)
        artifacts: dict[str, str] = {}
        where = eval_dataset
        if isinstance(spec, KNNSpec):
            assert features is not None
            train_x, train_y, test_x, test_y = features
            metrics = knn_classify(train_x.to(device), train_y, test_x, test_y, num_classes=num_classes,
                                   k=spec.k, temperature=spec.temperature)
            params.update({"k": float(min(spec.k, train_x.shape[0])), "temperature": spec.temperature,
                           "feature_precision": feature_precision})
        elif isinstance(spec, LinearSpec):
            if spec.mode == "features":
                assert features is not None
                train_x, train_y, test_x, test_y = features
                result = linear_probe_features(train_x, train_y, test_x, test_y, num_classes=num_classes,
                                               spec=spec, device=device, progress=progress)
            else:
                result = linear_probe_augmented(encoder, train, test, spec=spec, device=device, progress=progress,
                                                num_classes=num_classes, preprocess=preprocess, augment=augment,
                                                precision=feature_precision)
            metrics, linear_params = _linear_record(result)
            params.update(linear_params)
            params["mode"] = spec.mode
            params["feature_precision"] = feature_precision
        else:
            out = _run_other(spec, encoder, train, test, device=device, progress=progress, preprocess=preprocess,
                             augment=augment, normalization=normalization, num_classes=num_classes,
                             finetune_encoder=finetune_encoder, subset=subset,
                             detection_dataset=detection_dataset, detection_data_dir=detection_data_dir)
            metrics, artifacts = out.metrics, out.artifacts
            params = {k: v for k, v in params.items() if not isinstance(spec, DetectionSpec)}
            params.update(out.params)
            if isinstance(spec, DetectionSpec):
                where = str(out.params.get("dataset", detection_dataset or spec.dataset))
        _synchronize(device)
        results.append(ProtocolResult(spec=spec, metrics=metrics, params=params, eval_dataset=where,
                                      seconds=time.perf_counter() - start, artifacts=artifacts))
        if on_result is not None:
            on_result(results[-1])
    assert_frozen(before, encoder)
    return results


def _synchronize(device: torch.device | str) -> None:
    """Waits for the device's queued work, so that a wall-clock time covers it (CUDA is asynchronous)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_other(spec: SemiSupSpec | DetectionSpec | DiagnosticsSpec, encoder: nn.Module, train: Any, test: Any, *,
               device: torch.device | str, progress: bool, preprocess: Callable[[Tensor], Tensor] | None,
               augment: Callable[[Tensor, torch.Generator], list[Tensor]] | None,
               normalization: tuple[Sequence[float], Sequence[float], int] | None, num_classes: int,
               finetune_encoder: nn.Module | None, subset: LabelledSubset | None,
               detection_dataset: str | None, detection_data_dir: str | None) -> ProtocolOutput:
    """Dispatches the specs that have their own runner module."""
    if isinstance(spec, SemiSupSpec):
        from sslbench.protocols.semisup import fine_tune

        module = finetune_encoder if spec.from_projector_layer else encoder
        assert module is not None
        return fine_tune(module, train, test, spec, num_classes=num_classes, device=device, preprocess=preprocess,
                         augment=augment, subset=subset, progress=progress)
    if isinstance(spec, DiagnosticsSpec):
        from sslbench.protocols.diagnostics import run_diagnostics

        return run_diagnostics(encoder, test, spec, device=device, preprocess=preprocess,
                               normalization=normalization)
    from sslbench.protocols.detection import run_detection
    from sslbench.protocols.detection_data import load_detection_dataset

    name = detection_dataset or spec.dataset
    det_train = load_detection_dataset(name, "train", data_dir=detection_data_dir)
    det_test = load_detection_dataset(name, "test", data_dir=detection_data_dir)
    if normalization is None:
        raise ConfigError(f"Protocol '{spec.name}' needs the encoder's input normalisation.",
                          "Pass normalization=(mean, std, image_size) (sslbench eval does, from the checkpoint).")
    mean, std, _ = normalization
    return run_detection(encoder, spec, train=det_train, test=det_test, mean=tuple(mean), std=tuple(std),
                         device=device, progress=progress)
