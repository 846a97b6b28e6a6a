"""Encoders for evaluation from any weights file: an sslbench checkpoint or a plain state dict.

``sslbench eval`` accepts both. An sslbench checkpoint says which backbone it holds, on what
data and with which normalisation it was trained, and which MLflow run trained it. A plain state
dict (a timm or torchvision ``state_dict()``, or a published checkpoint that nests one under
``state_dict`` / ``model`` / ``teacher`` with a ``module.`` or ``backbone.`` prefix) says none of
that, so the user names the backbone and the input: its tensors are matched to the backbone's by
the key prefix that fits the most of them, the classifier (``fc``, ``head``, ``classifier``) is
dropped, and anything else missing, left over or of the wrong shape is an error that names the
tensors: the usual sign of a checkpoint from another backbone.

Every file is read with ``torch.load(weights_only=True)``: a downloaded file cannot run code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sslbench.benchmark.backbones import build_backbone
from sslbench.benchmark.checkpoint import check_checkpoint, is_sslbench_checkpoint, read_tensor_file
from sslbench.benchmark.errors import CheckpointError, ConfigError

__all__ = ["EncoderSource", "encoder_from_checkpoint", "find_state_dict", "load_any_encoder", "match_state_dict"]

#: Keys of a published checkpoint that may hold the model's state dict, tried in this order.
NESTED_KEYS = ("state_dict", "model", "model_state", "teacher", "student", "net", "network", "encoder")
#: Classifier layers a backbone built without a classifier does not have.
CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.", "last_linear.", "head_dist.")
_IGNORED_SUFFIX = "num_batches_tracked"


@dataclass(frozen=True)
class EncoderSource:
    """Where an evaluated encoder came from (recorded on its evaluation runs).

    Attributes:
        path: the weights file.
        kind: ``"sslbench"`` (a checkpoint of ``sslbench pretrain``) or ``"state_dict"``.
        backbone, in_chans, image_size: the encoder's architecture and input.
        sha256: of the file's bytes.
        dataset: the pretraining dataset (sslbench checkpoints; None for a state dict).
        mean, std: the pretraining normalisation (None for a state dict: use the eval dataset's).
        config: the pretraining config (sslbench checkpoints; empty otherwise).
        mlflow_run_id: the pretraining run (sslbench checkpoints logged to MLflow).
        epoch: the epoch the checkpoint was saved after.
        prefix: the key prefix stripped from a state dict (``""`` for none).
        dropped: state-dict keys not loaded (the classifier).
    """

    path: str
    kind: str
    backbone: str
    in_chans: int
    image_size: int
    sha256: str
    dataset: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    epoch: int | None = None
    prefix: str = ""
    dropped: tuple[str, ...] = ()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tensor_count(d: object) -> int:
    return sum(isinstance(v, Tensor) for v in d.values()) if isinstance(d, dict) else 0


def find_state_dict(state: Any, path: str | Path) -> dict[str, Tensor]:
    """The state dict inside a loaded file: the file itself when it maps names to tensors, else
    the nested dict (under :data:`NESTED_KEYS`, one level deep) holding the most tensors.

    Raises:
        CheckpointError: no dict of tensors in the file.
    """
    candidates = [state] + [state[k] for k in NESTED_KEYS if isinstance(state, dict) and k in state]
    best = max(candidates, key=_tensor_count)
    if _tensor_count(best) == 0:
        raise CheckpointError(f"'{path}' holds no state dict (no name -> tensor mapping at the top level or "
                              f"under {', '.join(NESTED_KEYS)}).",
                              "Pass a state_dict() saved with torch.save, or an sslbench checkpoint.")
    assert isinstance(best, dict)
    return {str(k): v for k, v in best.items() if isinstance(v, Tensor)}


def _prefixes(keys: list[str]) -> set[str]:
    out = {""}
    for key in keys:
        parts = key.split(".")
        out.update(".".join(parts[:i]) + "." for i in range(1, min(len(parts), 4)))
    return out


def match_state_dict(weights: dict[str, Tensor], target: dict[str, Tensor], *, path: str | Path,
                     backbone: str, fix: str = ("Pass the backbone the weights were trained with (--backbone, a "
                                                "timm or sslbench name) and its input channels (--in-chans).")
                     ) -> tuple[dict[str, Tensor], str, tuple[str, ...]]:
    """Matches a file's tensors to a backbone's state dict.

    Picks the key prefix (``""``, ``module.``, ``module.encoder_q.``, ``backbone.``, ...) whose
    stripping matches the most of ``target``'s keys; drops the classifier; and checks that every
    tensor of the backbone is there with its shape and nothing else is left over.

    Returns:
        The matched weights, the prefix stripped, and the keys dropped (the classifier).

    Raises:
        CheckpointError: tensors missing, left over, or of another shape (another backbone, or
            another number of input channels).
    """
    wanted = {k for k in target if not k.endswith(_IGNORED_SUFFIX)}
    prefix = max(sorted(_prefixes(list(weights))),
                 key=lambda p: sum(k.startswith(p) and k[len(p):] in wanted for k in weights))
    stripped = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    dropped = tuple(sorted(k for k in stripped if k.startswith(CLASSIFIER_PREFIXES) and k not in target))
    left = sorted(k for k in stripped if k not in target and k not in dropped)
    missing = sorted(wanted - set(stripped))
    shapes = sorted(k for k in wanted & set(stripped) if tuple(stripped[k].shape) != tuple(target[k].shape))
    if missing or left or shapes:
        details = []
        if missing:
            details.append(f"{len(missing)} of the backbone's {len(wanted)} tensors are missing "
                           f"(e.g. {', '.join(missing[:3])})")
        if left:
            details.append(f"{len(left)} tensors of the file are not in it (e.g. {', '.join(left[:3])})")
        if shapes:
            k = shapes[0]
            details.append(f"{len(shapes)} have another shape (e.g. {k}: file {tuple(stripped[k].shape)}, "
                           f"backbone {tuple(target[k].shape)})")
        raise CheckpointError(
            f"The weights in '{path}' (key prefix {prefix!r}) do not fit backbone '{backbone}': "
            + "; ".join(details) + ". This is a checkpoint of another backbone or input.", fix)
    return {k: v for k, v in stripped.items() if k in target}, prefix, dropped


def _build_checkpoint_encoder(meta: dict[str, Any], path: str | Path) -> nn.Module:
    """The (untrained) encoder an sslbench checkpoint's metadata describes: its backbone, or the
    wrapper it records (CMC's colour views, CPC v2's patch grid; ``methods/encoders.py``)."""
    wrapper = meta.get("wrapper")
    if wrapper is None:
        return build_backbone(meta["backbone"], meta["in_chans"], meta["image_size"])[0]
    from sslbench.methods.base import InputSpec
    from sslbench.methods.encoders import EncoderSpec, build_encoder

    try:
        spec = InputSpec(int(meta["in_chans"]), int(meta["image_size"]), tuple(meta["mean"]), tuple(meta["std"]))
        return build_encoder(meta["backbone"], spec, EncoderSpec(str(wrapper["name"]), dict(wrapper["args"])))[0]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"'{path}' records an encoder wrapper sslbench cannot rebuild ({exc!r}).",
                              "An sslbench checkpoint says what it holds: this one is corrupt or was edited.") from None


def encoder_from_checkpoint(state: dict[str, Any], path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder held by a loaded sslbench checkpoint (eval mode) and its ``encoder`` metadata.

    Raises:
        CheckpointError: no encoder in it, or weights that do not fit its declared backbone.
    """
    meta = state.get("encoder")
    if not isinstance(meta, dict) or "model" not in state:
        raise CheckpointError(f"'{path}' holds no encoder.", "Pass a checkpoint from `sslbench pretrain`.")
    encoder = _build_checkpoint_encoder(meta, path)
    weights = {k[len("encoder."):]: v for k, v in state["model"].items() if k.startswith("encoder.")}
    matched, _, _ = match_state_dict(weights, encoder.state_dict(), path=path, backbone=meta["backbone"],
                                     fix="An sslbench checkpoint says what it holds: this one is corrupt or was edited.")
    encoder.load_state_dict(matched, strict=False)
    return encoder.eval(), meta


def load_any_encoder(path: str | Path, *, backbone: str | None = None, in_chans: int | None = None,
                     image_size: int | None = None,
                     map_location: str | torch.device = "cpu") -> tuple[nn.Module, EncoderSource]:
    """Builds the encoder held by a weights file, in eval mode.

    Args:
        path: an sslbench checkpoint or a plain state dict.
        backbone: for a plain state dict, its backbone (required); for an sslbench checkpoint,
            the backbone the caller expects (an error if the checkpoint holds another).
        in_chans: input channels of a plain state dict (default 3).
        image_size: input side of a plain state dict (default 224; ViTs need it).
        map_location: where the tensors are loaded.

    Raises:
        CheckpointError: unreadable file, no state dict, weights that do not fit the backbone,
            or an sslbench checkpoint of another backbone than ``backbone``.
        ConfigError: a plain state dict without ``backbone``.
    """
    state = read_tensor_file(path, map_location)
    sha = file_sha256(path)
    if is_sslbench_checkpoint(state):
        state = check_checkpoint(state, path)
        encoder, meta = encoder_from_checkpoint(state, path)
        if backbone is not None and backbone != meta["backbone"]:
            raise CheckpointError(
                f"'{path}' is an sslbench checkpoint of a '{meta['backbone']}' encoder, not '{backbone}'.",
                "Drop --backbone (sslbench checkpoints say what they hold), or pass a checkpoint of a "
                f"'{backbone}' run.")
        if in_chans is not None and in_chans != meta["in_chans"]:
            raise CheckpointError(f"'{path}' holds an encoder of {meta['in_chans']}-channel images, not {in_chans}.",
                                  "Drop --in-chans for sslbench checkpoints.")
        source = EncoderSource(
            path=str(path), kind="sslbench", backbone=meta["backbone"], in_chans=int(meta["in_chans"]),
            image_size=int(meta["image_size"]), sha256=sha, dataset=meta.get("dataset"),
            mean=tuple(meta["mean"]) if "mean" in meta else None, std=tuple(meta["std"]) if "std" in meta else None,
            config=dict(state.get("config", {})), mlflow_run_id=state.get("mlflow_run_id"), epoch=state.get("epoch"))
        return encoder.eval(), source
    if backbone is None:
        raise ConfigError(
            f"'{path}' is not an sslbench checkpoint but a plain weights file, which does not say which "
            "backbone it holds.",
            "Name it: --backbone resnet50 (any timm or sslbench backbone name), plus --in-chans and "
            "--image-size when they are not 3 and 224.")
    in_chans, image_size = in_chans or 3, image_size or 224
    encoder, _ = build_backbone(backbone, in_chans, image_size)
    matched, prefix, dropped = match_state_dict(find_state_dict(state, path), encoder.state_dict(), path=path,
                                                backbone=backbone)
    encoder.load_state_dict(matched, strict=False)
    return encoder.eval(), EncoderSource(path=str(path), kind="state_dict", backbone=backbone, in_chans=in_chans,
                                         image_size=image_size, sha256=sha, prefix=prefix, dropped=dropped)
