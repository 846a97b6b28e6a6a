"""Encoders for evaluation from any weights file: an sslbench checkpoint or a plain state dict.

``sslbench eval`` accepts both. An sslbench checkpoint says which backbone it holds, on what
data and with which normalisation it was trained, and which MLflow run trained it. A plain state
dict (a timm or torchvision ``state_dict()``, or a published checkpoint that nests one under
``state_dict`` / ``model`` / ``teacher`` with a ``module.`` or ``backbone.`` prefix) says none of
that, so the user names the backbone and the input: its tensors are matched to the backbone's by
the key prefix that fits the most of them, the classifier (``fc``, ``head``, ``classifier``) is
dropped, and anything else missing, left over or of the wrong shape is an error that names the
tensors: the usual sign of a checkpoint from another backbone.

Evaluated images are normalised the way the weights were trained (:func:`fit_to_data`): an
sslbench checkpoint records its mean and std; a plain state dict takes ``mean``/``std`` when given
(``sslbench eval --mean/--std``), else the normalisation of timm's pretrained weights for the
backbone name (``pretrained_cfg``, read without downloading anything: ``resnet50`` gives
ImageNet's, ``vit_small_patch16_224`` 0.5 / 0.5, ``vit_small_patch16_224.dino`` ImageNet's), and
only for a name timm does not know (sslbench's own backbones) the evaluation data's. RGB weights
on grayscale data see the channel repeated three times (:class:`GrayToRGB`).

Every file is read with ``torch.load(weights_only=True)``: a downloaded file cannot run code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sslbench.benchmark.backbones import build_backbone, list_backbones
from sslbench.benchmark.checkpoint import check_checkpoint, is_sslbench_checkpoint, read_tensor_file
from sslbench.benchmark.errors import CheckpointError, ConfigError

__all__ = ["EncoderSource", "GrayToRGB", "encoder_from_checkpoint", "find_state_dict", "fit_to_data",
           "load_any_encoder", "match_state_dict", "timm_input_config"]

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
        mean, std: the normalisation the weights expect: the pretraining one (sslbench
            checkpoints), the one given, or timm's for the backbone name; None when not known
            (a plain state dict of an sslbench backbone: the evaluation data's is used).
        normalization: where ``mean`` and ``std`` come from, in words (``""`` when None).
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
    normalization: str = ""


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


def timm_input_config(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...], int, str] | None:
    """The input timm's pretrained weights for a backbone name expect, from its ``pretrained_cfg``
    (nothing is downloaded): ``(mean, std, image side, "<architecture>.<tag>")``; None for a name
    timm does not know, and for sslbench's own backbones (``resnet18-small`` has no timm weights).

    A tagged name picks those weights' input: ``vit_small_patch16_224`` is timm's AugReg weights
    (mean and std 0.5), ``vit_small_patch16_224.dino`` DINO's (ImageNet's).
    """
    if backbone in list_backbones():
        return None
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(backbone)
    if cfg is None or cfg.mean is None or cfg.std is None:
        return None
    side = int(cfg.input_size[-1]) if cfg.input_size else 224
    label = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else str(cfg.architecture or backbone)
    return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std), side, label


def _check_stats(mean: tuple[float, ...] | None, std: tuple[float, ...] | None, in_chans: int) -> None:
    if (mean is None) != (std is None):
        raise ConfigError("Only one of --mean and --std was given.",
                          "Pass both, one value per input channel (e.g. --mean 0.485,0.456,0.406 "
                          "--std 0.229,0.224,0.225).")
    if mean is not None and std is not None:
        if len(mean) != in_chans or len(std) != in_chans:
            raise ConfigError(f"--mean/--std need {in_chans} values (one per input channel of the weights), "
                              f"got {len(mean)} and {len(std)}.", "Pass one value per channel, comma-separated.")
        if min(std) <= 0:
            raise ConfigError(f"--std must be positive, got {std}.", "Pass the weights' per-channel std.")


def load_any_encoder(path: str | Path, *, backbone: str | None = None, in_chans: int | None = None,
                     image_size: int | None = None, mean: tuple[float, ...] | None = None,
                     std: tuple[float, ...] | None = None,
                     map_location: str | torch.device = "cpu") -> tuple[nn.Module, EncoderSource]:
    """Builds the encoder held by a weights file, in eval mode.

    Args:
        path: an sslbench checkpoint or a plain state dict.
        backbone: for a plain state dict, its backbone (required): any sslbench or timm name, a
            timm name with a tag (``vit_small_patch16_224.dino``) naming whose weights they are;
            for an sslbench checkpoint, the backbone the caller expects (an error if it holds another).
        in_chans: input channels of a plain state dict (default 3).
        image_size: input side of a plain state dict (default: timm's for the name, else 224).
        mean, std: the normalisation a plain state dict was trained with (both or neither;
            default: timm's for the name, see :func:`timm_input_config`).
        map_location: where the tensors are loaded.

    Raises:
        CheckpointError: unreadable file, no state dict, weights that do not fit the backbone,
            or an sslbench checkpoint of another backbone than ``backbone``.
        ConfigError: a plain state dict without ``backbone``; ``mean``/``std`` for an sslbench
            checkpoint, only one of them, or not one value per channel.
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
        if mean is not None or std is not None:
            raise ConfigError(f"'{path}' is an sslbench checkpoint: it records the normalisation it was "
                              "trained with.", "Drop --mean/--std for sslbench checkpoints.")
        recorded = "mean" in meta and "std" in meta
        source = EncoderSource(
            path=str(path), kind="sslbench", backbone=meta["backbone"], in_chans=int(meta["in_chans"]),
            image_size=int(meta["image_size"]), sha256=sha, dataset=meta.get("dataset"),
            mean=tuple(meta["mean"]) if recorded else None, std=tuple(meta["std"]) if recorded else None,
            config=dict(state.get("config", {})), mlflow_run_id=state.get("mlflow_run_id"), epoch=state.get("epoch"),
            normalization=f"the checkpoint's (pretraining on {meta.get('dataset')})" if recorded else "")
        return encoder.eval(), source
    if backbone is None:
        raise ConfigError(
            f"'{path}' is not an sslbench checkpoint but a plain weights file, which does not say which "
            "backbone it holds.",
            "Name it: --backbone resnet50 (any timm or sslbench backbone name), plus --in-chans and "
            "--image-size when they are not 3 and 224.")
    in_chans = in_chans or 3
    _check_stats(mean, std, in_chans)
    timm_input = timm_input_config(backbone)
    image_size = image_size or (timm_input[2] if timm_input else 224)
    normalization = ""
    if mean is not None and std is not None:
        normalization = "--mean/--std"
    elif timm_input is not None and len(timm_input[0]) == in_chans:
        mean, std, normalization = timm_input[0], timm_input[1], f"timm pretrained_cfg of {timm_input[3]}"
    encoder, _ = build_backbone(backbone, in_chans, image_size)
    matched, prefix, dropped = match_state_dict(find_state_dict(state, path), encoder.state_dict(), path=path,
                                                backbone=backbone)
    encoder.load_state_dict(matched, strict=False)
    return encoder.eval(), EncoderSource(path=str(path), kind="state_dict", backbone=backbone, in_chans=in_chans,
                                         image_size=image_size, sha256=sha, prefix=prefix, dropped=dropped,
                                         mean=mean, std=std, normalization=normalization)


class GrayToRGB(nn.Module):
    """An encoder of RGB images fed grayscale ones: the channel repeated three times, then the
    weights' own per-channel normalisation, then the encoder.

    It takes images scaled to [0, 1] (normalised with mean 0 and std 1, the normalisation
    :func:`fit_to_data` hands the protocols); the encoder's parameters are its own, so freezing
    checks, fine-tuning copies and detection see the wrapped network. Detection finds it through the
    ``dense_branches()`` / ``input_channels()`` hooks of ``protocols/detection.py``.

    Args:
        encoder: maps normalised RGB images to features.
        mean, std: the encoder's RGB normalisation (3 values each).

    Shape:
        images: (B, 1, H, W) in [0, 1]; return: the encoder's features (B, D).
    """

    def __init__(self, encoder: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"GrayToRGB needs 3 means and stds, got {mean!r} / {std!r}")
        self.encoder = encoder
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def to_rgb(self, images: Tensor) -> Tensor:
        """Shape: images (B, 1, H, W) in [0, 1]; return (B, 3, H, W), normalised for the encoder."""
        if images.shape[1] != 1:
            raise ValueError(f"GrayToRGB takes 1-channel images, got {images.shape[1]} channels")
        mean, std = self.mean, self.std
        assert isinstance(mean, Tensor) and isinstance(std, Tensor)
        return (images.expand(-1, 3, -1, -1) - mean.to(images.dtype)) / std.to(images.dtype)

    def forward(self, images: Tensor) -> Tensor:
        out: Tensor = self.encoder(self.to_rgb(images))
        return out

    def input_channels(self) -> int:
        """The image channels it takes (detection's channel check)."""
        return 1

    def dense_branches(self) -> list[tuple[Any, nn.Module]]:
        """The encoder's CNN(s) behind the channel repeat: detection builds its FPN on them."""
        inner: Any = self.encoder
        if hasattr(inner, "dense_branches"):
            return [(_compose(self.to_rgb, t), cnn) for t, cnn in inner.dense_branches()]
        return [(self.to_rgb, self.encoder)]


def _compose(first: Any, then: Any) -> Any:
    def both(x: Tensor) -> Tensor:
        out: Tensor = then(first(x))
        return out

    return both


def fit_to_data(encoder: nn.Module, source: EncoderSource, channels: int | None,
                data_mean: tuple[float, ...], data_std: tuple[float, ...]
                ) -> tuple[nn.Module, tuple[tuple[float, ...], tuple[float, ...], int], str]:
    """The encoder and input normalisation to evaluate on data with ``channels`` channels.

    The weights' own normalisation (``source.mean``/``std``) when known, else the evaluation
    data's (``data_mean``/``data_std``, repeated for RGB weights on grayscale data). RGB weights on
    1-channel data are wrapped in :class:`GrayToRGB`, and the protocols are told to scale images
    to [0, 1] only (mean 0, std 1): the wrapper normalises after repeating the channel.

    Args:
        encoder: from :func:`load_any_encoder`.
        source: its :class:`EncoderSource`.
        channels: the evaluation data's channels (None: not known yet, e.g. detection only).
        data_mean, data_std: the evaluation data's statistics.

    Returns:
        The encoder to evaluate, ``(mean, std, image_size)`` for the protocols, and one line: the
        mean and std the weights see and where they come from (recorded with the runs).

    Raises:
        ConfigError: grayscale weights on RGB data, or weights whose channels match neither.
    """
    known = source.mean is not None and source.std is not None
    if known:
        assert source.mean is not None and source.std is not None
        mean, std, where = tuple(source.mean), tuple(source.std), source.normalization or "the weights'"
    else:
        repeat = source.in_chans if len(data_mean) == 1 else 1
        mean, std = tuple(data_mean) * repeat, tuple(data_std) * repeat
        where = "the evaluation data's (the weights carry none)"
    where = f"mean {','.join(f'{v:g}' for v in mean)} std {','.join(f'{v:g}' for v in std)}, {where}"
    if channels is None or channels == source.in_chans:
        return encoder, (mean, std, source.image_size), where
    if source.in_chans == 3 and channels == 1:
        return (GrayToRGB(encoder, mean, std), ((0.0,), (1.0,), source.image_size),
                where + "; the grayscale channel repeated to RGB")
    raise ConfigError(f"The encoder takes {source.in_chans}-channel images but the data has {channels}.",
                      "Evaluate on a dataset with the same number of channels (RGB weights on grayscale data "
                      "are handled: the channel is repeated).")
