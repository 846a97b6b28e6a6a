"""Transfer to object detection: torchvision's Faster R-CNN / Mask R-CNN with an FPN on a pretrained
encoder, fine-tuned end to end and scored once on the test split (:class:`DetectionSpec`).

Protocol (:func:`run_detection`):

1. deep-copy the encoder (the caller's is never touched) and find its multi-scale feature maps: the
   top-level blocks of an ``nn.Sequential`` (sslbench's ``small-cnn``) or the ``feature_info``
   modules of a timm CNN (ResNets, ...), whose strides are measured on a probe image; the last map
   of each stride >= 4 feeds a :class:`torchvision.ops.FeaturePyramidNetwork` (plus a max-pooled
   extra level, as torchvision's ResNet-FPN). Encoder wrappers (CPC v2's patch grid, CMC's
   one backbone per colour group) name their CNNs through ``dense_branches()``
   (:func:`build_fpn_backbone`). ViTs and other structures are a ``ConfigError``;
2. apply ``spec.norm`` to the encoder's BatchNorm layers: ``"frozen"`` -> ``FrozenBatchNorm2d``
   with the pretrained statistics and affine parameters; ``"sync"`` -> ``SyncBatchNorm`` (in one
   process it normalises with the statistics of the whole batch, which is what SyncBN computes
   over all GPUs; a CPU run under an initialised process group, where SyncBN cannot run, falls
   back to plain BN and says so in ``params["norm"]``); ``"train"`` -> plain BN;
3. build the detector (:data:`HEAD_SIZES` ``[spec.head_size]``: FPN width, box-head width,
   sampled RoIs, proposals, anchor sizes = scale x level stride, aspect ratios 0.5/1/2), with
   ``image_mean / image_std`` = the pretraining normalisation, so the encoder sees the inputs it
   was trained on;
4. train with SGD (momentum 0.9, weight decay except on norm layers as detectron2), linear
   warm-up from 0.001 x lr, lr / 10 at each ``lr_steps`` fraction, ``iterations`` steps of
   ``batch_size`` images in a seeded order (reshuffled every pass), with seeded horizontal flips
   and a seeded shorter-side size per step from ``train_sizes``;
5. evaluate once on the test split at ``test_size``: COCO AP / AP50 / AP75 / APs / APm / APl
   (pycocotools), ``mask_*`` for Mask R-CNN, ``voc07_AP50`` when ``spec.metric == "voc07"``.

Every random choice comes from ``spec.seed``: the data order, flips and sizes from a
``torch.Generator``; the initialisation of the new layers and torchvision's internal sampling
(RPN / RoI sampling draws from the global generator) run inside ``torch.random.fork_rng`` seeded
with ``spec.seed``, so the caller's global RNG state is restored afterwards.

Differences from detectron2 (MoCo's detection code) beyond those in the spec's docstring:
torchvision's RoIAlign is ``aligned=False`` (detectron2's ROIAlignV2 is aligned); torchvision keeps
2000 training proposals per image (detectron2's R50-FPN 1000); the box head, RPN and FPN are
torchvision's (no norm layers, so MoCo's SyncBN in the new layers has no counterpart); no
test-time augmentation in either.

Version history (:class:`~sslbench.protocols.spec.DetectionSpec` ``version``):
    1: initial implementation.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sslbench.benchmark.errors import ConfigError, DatasetError, NonFiniteLossError
from sslbench.protocols.detection_data import DetectionDataset
from sslbench.protocols.detection_metrics import COCO_METRICS, coco_metrics, voc07_ap50
from sslbench.protocols.output import ProtocolOutput
from sslbench.protocols.spec import DetectionSpec

__all__ = [
    "HEAD_SIZES",
    "FeaturePyramidBackbone",
    "HeadSizes",
    "apply_norm",
    "build_detector",
    "anchor_sizes",
    "build_fpn_backbone",
    "detection_lr_factor",
    "run_detection",
    "training_plan",
]

SGD_MOMENTUM = 0.9
#: detectron2's SOLVER.WARMUP_FACTOR: the lr starts at this fraction of the base lr.
WARMUP_FACTOR = 1e-3
#: Side of the probe image that measures the strides of the encoder's feature maps.
PROBE_SIZE = 64
#: Above this many characters the detections are not stored as an artifact.
MAX_ARTIFACT_CHARS = 5_000_000


@dataclass(frozen=True)
class HeadSizes:
    """Sizes of the detector's new layers, chosen by ``DetectionSpec.head_size``.

    Args:
        fpn_channels: FPN output channels (also the RPN head's and mask head's width).
        box_head_dim: width of the two-layer box head (``TwoMLPHead``).
        rois_per_image: RoIs sampled per image for the box (and mask) loss.
        pre_nms_train: RPN boxes per FPN level entering NMS in training.
        pre_nms_test: the same at test time.
        proposals_train: RPN proposals kept per image after NMS in training.
        proposals_test: the same at test time.
        anchor_scales: anchor sides as multiples of each level's stride (one anchor per scale
            and aspect ratio 0.5, 1, 2 at every position).
    """

    fpn_channels: int
    box_head_dim: int
    rois_per_image: int
    pre_nms_train: int
    pre_nms_test: int
    proposals_train: int
    proposals_test: int
    anchor_scales: tuple[float, ...]


HEAD_SIZES: dict[str, HeadSizes] = {
    # torchvision's fasterrcnn_resnet50_fpn / maskrcnn_resnet50_fpn defaults (detectron2's R50-FPN
    # has the same widths and anchors 32..512 = 8 x stride; it keeps 1000 proposals in training).
    "standard": HeadSizes(fpn_channels=256, box_head_dim=1024, rois_per_image=512, pre_nms_train=2000,
                          pre_nms_test=1000, proposals_train=2000, proposals_test=1000, anchor_scales=(8.0,)),
    # CPU-sized for ~128 px images with a few 16..64 px objects (the embedded set): narrow heads,
    # fewer RoIs and proposals (RoIAlign's backward and the RPN's NMS dominate a CPU step), and
    # anchors of 4 x stride (16, 32, 64 px for small-cnn's strides 4, 8 and the pooled 16).
    "small": HeadSizes(fpn_channels=64, box_head_dim=256, rois_per_image=64, pre_nms_train=600, pre_nms_test=300,
                       proposals_train=300, proposals_test=100, anchor_scales=(4.0,)),
}


# ----------------------------------------------------------------------------------------------
# Encoder -> multi-scale backbone + FPN


class _SequentialFeatures(nn.Module):
    """Runs the first blocks of an ``nn.Sequential`` encoder and returns the outputs of the chosen
    ones (no global pooling)."""

    def __init__(self, blocks: Sequence[nn.Module], keep: Sequence[int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks[: max(keep) + 1])
        self.keep = tuple(keep)

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.keep:
                out.append(x)
        return out


class FeaturePyramidBackbone(nn.Module):
    """The encoder's feature maps through an FPN: images -> ``OrderedDict`` ``"0".."L-1"`` (strides
    ``strides``) and ``"pool"`` (twice the last stride), each with ``out_channels`` channels.

    Args:
        body: images -> list of L feature maps, increasing strides.
        in_channels: channels of the L maps.
        strides: strides of the L maps.
        out_channels: FPN width.
        modules: names of the encoder modules the maps come from (recorded in params).
    """

    def __init__(self, body: nn.Module, in_channels: Sequence[int], strides: Sequence[int], out_channels: int,
                 modules: Sequence[str]) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.body = body
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self.strides = tuple(strides)
        self.modules_used = tuple(modules)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.body(x)
        out: dict[str, Tensor] = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
        return out


def _first_conv_channels(encoder: nn.Module) -> int | None:
    for m in encoder.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


def _choose_levels(shapes: Sequence[torch.Size], names: Sequence[str], kind: str) -> list[int]:
    """Indices of the last map of each stride >= 4 (the largest stride when none reaches 4)."""
    if not shapes or any(len(s) != 4 for s in shapes):
        raise ConfigError(
            f"The encoder ({kind}) gives no convolutional feature maps (outputs of "
            f"{', '.join(names[:6])}: {[tuple(s) for s in shapes][:6]}).",
            "Detection needs a CNN encoder (sslbench's small-cnn, resnet*-small, or a timm CNN such as resnet50).")
    strides = [max(1, round(PROBE_SIZE / s[-1])) for s in shapes]
    last_of: dict[int, int] = {}
    for i, stride in enumerate(strides):
        last_of[stride] = i
    chosen = [i for stride, i in sorted(last_of.items()) if stride >= 4] or [last_of[max(last_of)]]
    return chosen


def _feature_list_net(encoder: nn.Module, indices: Sequence[int]) -> nn.Module:
    """timm's ``FeatureListNet`` on the ``feature_info`` modules ``indices``: top-level modules
    (ResNets) or, failing that, modules inside top-level Sequentials (``stages.0``: ConvNeXt,
    EfficientNet, RegNet)."""
    from timm.models._features import FeatureListNet

    try:
        return FeatureListNet(encoder, out_indices=tuple(indices))
    except AssertionError:
        return FeatureListNet(encoder, out_indices=tuple(indices), flatten_sequential=True)


class _BranchFeatures(nn.Module):
    """The multi-scale maps of an encoder's dense branches, concatenated along channels level by level.

    Branch ``b`` runs ``bodies[b]`` on ``transforms[b](images)``; a transform is a plain callable
    (e.g. a colour conversion bound to the encoder), not a module the detector trains.
    """

    def __init__(self, transforms: Sequence[Callable[[Tensor], Tensor]], bodies: Sequence[nn.Module]) -> None:
        super().__init__()
        self.transforms = list(transforms)
        self.bodies = nn.ModuleList(bodies)

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = [body(transform(x)) for transform, body in zip(self.transforms, self.bodies)]
        return [torch.cat(level, dim=1) for level in zip(*maps)]


def _reject_vit(encoder: nn.Module) -> None:
    name = type(encoder).__name__
    if "VisionTransformer" in name or hasattr(encoder, "patch_embed"):
        raise ConfigError(f"The encoder is a vision transformer ({name}); the detection protocol builds an FPN on "
                          "convolutional feature maps and has no ViT adapter (ViTDet's simple pyramid).",
                          "Evaluate a CNN encoder (small-cnn, resnet*-small, resnet50) on detection.")


def _multiscale_body(encoder: nn.Module, probe: Tensor) -> tuple[nn.Module, list[torch.Size], list[str]]:
    """The body of a CNN (an ``nn.Sequential`` of blocks or a timm model with ``feature_info``):
    images -> its chosen maps, with their shapes on ``probe`` and their module names.

    Raises:
        ConfigError: a ViT, or neither structure.
    """
    name = type(encoder).__name__
    _reject_vit(encoder)
    if isinstance(encoder, nn.Sequential):
        blocks = list(encoder.children())
        names = [str(i) for i in range(len(blocks))]
        shapes = []
        with torch.no_grad():
            x = probe
            for block in blocks:  # the spatial blocks: up to a global pool or a non-map output
                if isinstance(block, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)):
                    break
                x = block(x)
                if x.ndim != 4:
                    break
                shapes.append(x.shape)
        keep = _choose_levels(shapes, names, "nn.Sequential")
        body: nn.Module = _SequentialFeatures(blocks, keep)
    elif hasattr(encoder, "feature_info"):
        info: Any = encoder.feature_info
        names = [str(d["module"]) for d in (info.get_dicts() if hasattr(info, "get_dicts") else info)]
        try:
            full = _feature_list_net(encoder, range(len(names)))
            with torch.no_grad():
                shapes = [f.shape for f in full(probe)]
        except (AssertionError, RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"Cannot extract feature maps from the timm encoder {name} "
                              f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}).",
                              "Use small-cnn, resnet*-small or a timm CNN that supports features_only.") from None
        keep = _choose_levels(shapes, names, name)
        body = _feature_list_net(encoder, keep)
    else:
        raise ConfigError(f"Cannot find multi-scale feature maps in an encoder of type {name} (neither an "
                          "nn.Sequential of blocks nor a timm model with feature_info).",
                          "Use small-cnn, resnet*-small or a timm CNN such as resnet50.")
    return body, [shapes[i] for i in keep], [names[i] for i in keep]


def _branch_body(encoder: nn.Module, branches: Sequence[tuple[Callable[[Tensor], Tensor], nn.Module]],
                 probe: Tensor) -> tuple[nn.Module, list[torch.Size], list[str]]:
    """:func:`_multiscale_body` of each dense branch (probed on its transformed probe), joined by
    :class:`_BranchFeatures`: level ``l`` has the branches' channels summed, and is named
    ``"<branch>:<module>"`` joined by ``"+"`` (just ``"<module>"`` for one branch).

    Raises:
        ConfigError: branches whose levels differ in size (stride).
    """
    built = []
    for transform, cnn in branches:
        with torch.no_grad():
            branch_probe = transform(probe)
        built.append(_multiscale_body(cnn, branch_probe))
    sizes = [[tuple(s[-2:]) for s in shapes] for _, shapes, _ in built]
    if any(size != sizes[0] for size in sizes):
        raise ConfigError(f"The dense branches of {type(encoder).__name__} give feature maps of different sizes "
                          f"({sizes} on a {PROBE_SIZE} px probe), which cannot be concatenated level by level.",
                          "Give every branch the same backbone.")
    body = _BranchFeatures([t for t, _ in branches], [b for b, _, _ in built])
    first = built[0][1]
    shapes = [torch.Size((s[0], sum(int(b_shapes[level][1]) for _, b_shapes, _ in built), *s[2:]))
              for level, s in enumerate(first)]
    names = [built[0][2][level] if len(built) == 1 else
             "+".join(f"{b}:{b_names[level]}" for b, (_, _, b_names) in enumerate(built))
             for level in range(len(first))]
    return body, shapes, names


def build_fpn_backbone(encoder: nn.Module, channels: int, fpn_channels: int) -> FeaturePyramidBackbone:
    """Turns an encoder into a multi-scale FPN backbone (the encoder's modules are reused, not copied).

    The candidate maps are the top-level blocks of an ``nn.Sequential`` encoder or the
    ``feature_info`` modules of a timm model; their strides are measured on a
    ``PROBE_SIZE`` px probe (timm's recorded reductions are wrong for the small-image stems).

    Encoder wrappers (a patch grid, one backbone per colour group) are looked at first, through
    a duck-typed hook: ``encoder.dense_branches() -> [(transform, cnn), ...]`` (a transform maps
    the detector's normalised images to the CNN's input) and ``encoder.input_channels() -> int``
    (the image channels the wrapper takes). Each branch's body is built from its CNN as above and
    runs on ``transform(images)``; several branches are concatenated level by level.

    Args:
        encoder: the encoder (images (B, C, H, W) -> features (B, D)).
        channels: image channels of the detection data.
        fpn_channels: FPN width.

    Raises:
        ConfigError: a ViT or an encoder of unknown structure, a channel mismatch, or dense branches
            of different strides.
    """
    branches: list[tuple[Callable[[Tensor], Tensor], nn.Module]] | None = None
    if hasattr(encoder, "dense_branches"):
        wrapper: Any = encoder  # duck-typed: nn.Module's __getattr__ is typed as returning tensors / modules
        branches = list(wrapper.dense_branches())
        if not branches:
            raise ConfigError(f"The encoder {type(encoder).__name__} declares no dense branches.",
                              "This is a bug in the encoder wrapper's dense_branches().")
        expected = (int(wrapper.input_channels()) if hasattr(wrapper, "input_channels")
                    else _first_conv_channels(branches[0][1]))
    else:
        _reject_vit(encoder)
        expected = _first_conv_channels(encoder)
    if expected is not None and expected != channels:
        raise ConfigError(f"The encoder takes {expected}-channel images but the detection data has {channels}.",
                          "Use a detection set with the pretraining data's channels (the embedded set "
                          "'embedded-detection' is greyscale, 'embedded-detection-color' is RGB, VOC/COCO are RGB; "
                          "sslbench eval --detection-dataset NAME), or an encoder pretrained on such data.")
    probe = torch.zeros(2, channels, PROBE_SIZE, PROBE_SIZE, device=next(encoder.parameters()).device)
    was_training = encoder.training
    encoder.eval()
    try:
        if branches is None:
            body, shapes, names = _multiscale_body(encoder, probe)
        else:
            body, shapes, names = _branch_body(encoder, branches, probe)
    except RuntimeError as exc:
        raise ConfigError(f"The encoder cannot process {channels}x{PROBE_SIZE}x{PROBE_SIZE} probe images "
                          f"({str(exc).splitlines()[0][:160]}).", "Check the encoder and the data's channels.") from None
    finally:
        encoder.train(was_training)
    strides = [max(1, round(PROBE_SIZE / s[-1])) for s in shapes]
    return FeaturePyramidBackbone(body, [int(s[1]) for s in shapes], strides, fpn_channels, names)


def apply_norm(module: nn.Module, norm: str, device: torch.device | str) -> tuple[nn.Module, str]:
    """Applies a ``DetectionSpec.norm`` to the BatchNorm layers of ``module`` (in place where possible).

    Returns:
        The module and the norm actually used (``"frozen"``, ``"sync"``, ``"train"``, or
        ``"train (sync unavailable: ...)"``).
    """
    if norm == "frozen":
        from timm.layers import freeze_batch_norm_2d

        return freeze_batch_norm_2d(module), "frozen"
    if norm == "sync":
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.device(device).type == "cpu":
            return module, "train (sync unavailable: SyncBatchNorm needs GPUs under a process group)"
        return nn.SyncBatchNorm.convert_sync_batchnorm(module), "sync"
    if norm == "train":
        return module, "train"
    raise ConfigError(f"Unknown detection norm {norm!r}.", "Use 'frozen', 'sync' or 'train'.")


def anchor_sizes(backbone: FeaturePyramidBackbone, spec: DetectionSpec) -> tuple[tuple[int, ...], ...]:
    """Anchor sides per FPN level (the L feature levels, then ``pool`` at twice the last stride):
    ``round(scale * stride)`` for each of ``HEAD_SIZES[spec.head_size].anchor_scales``."""
    strides = [*backbone.strides, 2 * backbone.strides[-1]]
    scales = HEAD_SIZES[spec.head_size].anchor_scales
    return tuple(tuple(int(round(s * stride)) for s in scales) for stride in strides)


def build_detector(backbone: FeaturePyramidBackbone, num_classes: int, spec: DetectionSpec,
                   mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """torchvision's FasterRCNN (or MaskRCNN for ``maskrcnn-fpn``) on ``backbone``.

    Anchors: one size per ``anchor_scales`` entry x level stride, on every FPN level including
    ``pool``, aspect ratios 0.5, 1, 2. RoIAlign (7x7 boxes, 14x14 masks, sampling ratio 2) on the
    non-pool levels. ``num_classes`` excludes the background.
    """
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    sizes = HEAD_SIZES[spec.head_size]
    anchor_sides = anchor_sizes(backbone, spec)
    anchors = AnchorGenerator(anchor_sides, ((0.5, 1.0, 2.0),) * len(anchor_sides))
    levels = [str(i) for i in range(len(backbone.strides))]
    c = backbone.out_channels
    common: dict[str, Any] = dict(
        min_size=spec.train_sizes[0], max_size=spec.max_size, image_mean=[float(v) for v in mean],
        image_std=[float(v) for v in std], rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=sizes.pre_nms_train, rpn_pre_nms_top_n_test=sizes.pre_nms_test,
        rpn_post_nms_top_n_train=sizes.proposals_train, rpn_post_nms_top_n_test=sizes.proposals_test,
        box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(c * 7 * 7, sizes.box_head_dim),
        box_predictor=FastRCNNPredictor(sizes.box_head_dim, num_classes + 1),
        box_batch_size_per_image=sizes.rois_per_image,
    )
    if spec.model == "maskrcnn-fpn":
        return MaskRCNN(backbone, num_classes=None, mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2),
                        mask_head=MaskRCNNHeads(c, (c,) * 4, 1), mask_predictor=MaskRCNNPredictor(c, c, num_classes + 1),
                        **common)
    return FasterRCNN(backbone, num_classes=None, **common)


# ----------------------------------------------------------------------------------------------
# Training


def detection_lr_factor(step: int, spec: DetectionSpec) -> float:
    """The lr multiplier at ``step`` (0-based): detectron2's WarmupMultiStepLR.

    ``factor = w(step) * 0.1 ** #{f in lr_steps : step >= round(f * iterations)}`` with the linear
    warm-up ``w(step) = WARMUP_FACTOR * (1 - a) + a``, ``a = step / warmup_iters`` while
    ``step < warmup_iters`` (else 1).
    """
    if step < spec.warmup_iters:
        alpha = step / spec.warmup_iters
        warm = WARMUP_FACTOR * (1 - alpha) + alpha
    else:
        warm = 1.0
    drops = sum(step >= round(f * spec.iterations) for f in spec.lr_steps)
    return warm * 0.1**drops


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """All trainable parameters; no weight decay on norm layers (detectron2's WEIGHT_DECAY_NORM = 0)."""
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if isinstance(module, norm_types) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _train_sample(data: DetectionDataset, index: int, flip: bool, has_masks: bool
                  ) -> tuple[Tensor, dict[str, Tensor]]:
    """Image ``index`` and its training target (crowd regions removed), flipped horizontally if asked."""
    image, target = data[index]
    keep = ~target["iscrowd"]
    out = {"boxes": target["boxes"][keep], "labels": target["labels"][keep]}
    if has_masks:
        out["masks"] = target["masks"][keep]
    if flip:
        width = image.shape[-1]
        image = image.flip(-1)
        boxes = out["boxes"].clone()
        boxes[:, 0], boxes[:, 2] = width - out["boxes"][:, 2], width - out["boxes"][:, 0]
        out["boxes"] = boxes
        if has_masks:
            out["masks"] = out["masks"].flip(-1)
    return image, out


def training_plan(num_images: int, spec: DetectionSpec) -> tuple[Tensor, Tensor, Tensor]:
    """The seeded data schedule of a run, drawn from ``torch.Generator().manual_seed(spec.seed)``:
    consecutive passes over the training images, each in a fresh random order, cut into
    ``iterations`` batches of ``batch_size``; a horizontal flip per image (probability 1/2); a
    shorter-side size per step, uniform over ``train_sizes``.

    Returns:
        ``(indices, flips, sizes)``.

    Shape:
        indices: (iterations, batch_size) int64; flips: (iterations, batch_size) bool;
        sizes: (iterations,) int64.
    """
    gen = torch.Generator().manual_seed(spec.seed)
    total = spec.iterations * spec.batch_size
    passes = math.ceil(total / num_images)
    order = torch.cat([torch.randperm(num_images, generator=gen) for _ in range(passes)])[:total]
    flips = torch.rand(spec.iterations, spec.batch_size, generator=gen) < 0.5
    choice = torch.randint(len(spec.train_sizes), (spec.iterations,), generator=gen)
    return order.view(spec.iterations, spec.batch_size), flips, torch.tensor(spec.train_sizes)[choice]


class _StepBatches(torch.utils.data.Dataset[list[tuple[Tensor, dict[str, Tensor]]]]):
    """Item ``k``: the uint8 images and training targets of step ``k`` of a :func:`training_plan`."""

    def __init__(self, data: DetectionDataset, order: Tensor, flips: Tensor, masks: bool) -> None:
        self.data, self.order, self.flips, self.masks = data, order, flips, masks

    def __len__(self) -> int:
        return int(self.order.shape[0])

    def __getitem__(self, step: int) -> list[tuple[Tensor, dict[str, Tensor]]]:
        return [_train_sample(self.data, int(i), bool(f), self.masks)
                for i, f in zip(self.order[step], self.flips[step])]


def _identity(batch: Any) -> Any:
    return batch


def _to_device(image: Tensor, target: dict[str, Tensor], device: torch.device | str
               ) -> tuple[Tensor, dict[str, Tensor]]:
    return image.to(device).float().div_(255.0), {k: v.to(device) for k, v in target.items()}


def _detections(outputs: list[dict[str, Tensor]], image_ids: Sequence[int], category_ids: Sequence[int],
                masks: bool) -> list[dict[str, Any]]:
    """torchvision outputs -> COCO result dicts (xywh boxes; masks thresholded at 0.5 -> RLE)."""
    from pycocotools import mask as mask_utils

    results = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].cpu().double()
        boxes[:, 2:] -= boxes[:, :2]
        rles = []
        if masks:
            binary = (out["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
            rles = [mask_utils.encode(np.asfortranarray(m)) for m in binary]
        for k in range(boxes.shape[0]):
            det: dict[str, Any] = {"image_id": int(image_id), "category_id": int(category_ids[int(out["labels"][k]) - 1]),
                                   "bbox": [float(v) for v in boxes[k]], "score": float(out["scores"][k])}
            if masks:
                det["segmentation"] = {"size": rles[k]["size"], "counts": rles[k]["counts"].decode("ascii")}
            results.append(det)
    return results


def _check_inputs(spec: DetectionSpec, train: DetectionDataset, test: DetectionDataset,
                  mean: Sequence[float], std: Sequence[float]) -> None:
    if not isinstance(spec, DetectionSpec):
        raise ConfigError(f"run_detection got {type(spec).__name__}, not a DetectionSpec.",
                          "Pass a detection spec, e.g. get_protocol('detection-embedded').")
    for what, data in (("train", train), ("test", test)):
        if not isinstance(data, DetectionDataset):
            raise ConfigError(f"The {what} split is a {type(data).__name__}, not a DetectionDataset.",
                              "Load it with sslbench.protocols.detection_data.load_detection_dataset.")
        if len(data) == 0:
            raise DatasetError(f"The {what} split of '{data.name}' has no images.", "Use a non-empty split.")
    if train.categories != test.categories or train.category_ids != test.category_ids:
        raise DatasetError(f"The train and test splits of '{train.name}' / '{test.name}' have different categories.",
                           "Use two splits of the same dataset.")
    if spec.model == "maskrcnn-fpn" and not (train.has_masks and test.has_masks):
        raise ConfigError(f"Spec '{spec.name}' trains Mask R-CNN but '{train.name}' has no instance masks.",
                          "Use a fasterrcnn-fpn spec, or a dataset with segmentations (COCO, the embedded set).")
    if train.channels != test.channels:
        raise DatasetError(f"The train split has {train.channels} channels, the test split {test.channels}.",
                           "Use two splits of the same dataset.")
    if len(mean) != train.channels or len(std) != train.channels or min(std) <= 0:
        raise ConfigError(f"mean={tuple(mean)} / std={tuple(std)} do not give one value (std > 0) per channel of "
                          f"the {train.channels}-channel detection data.",
                          "Pass the pretraining normalisation (the checkpoint's meta['mean'], meta['std']).")
    if spec.head_size not in HEAD_SIZES:
        raise ConfigError(f"Spec '{spec.name}' has head_size={spec.head_size!r}.", f"Use one of: {', '.join(HEAD_SIZES)}.")


def run_detection(
    encoder: nn.Module,
    spec: DetectionSpec,
    *,
    train: DetectionDataset,
    test: DetectionDataset,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    progress: bool = True,
    eval_batch_size: int = 8,
    num_workers: int = 0,
) -> ProtocolOutput:
    """Fine-tunes a detector on a copy of ``encoder`` and scores it once on ``test`` (module docstring).

    Args:
        encoder: the pretrained encoder, already on ``device``; never modified (deep-copied).
        spec: the detection spec.
        train: the training split.
        test: the test split, used once at the end.
        mean, std: the pretraining normalisation per channel, on the [0, 1] scale.
        device: where to train.
        progress: show a tqdm bar over the iterations.
        eval_batch_size: images per forward pass at test time.
        num_workers: processes decoding the training images (0: the main process, right for the
            in-memory embedded set; use a few for VOC / COCO).

    Returns:
        ``metrics``: ``AP, AP50, AP75, APs, APm, APl`` (bbox, percent; NaN for a size without
        ground truth), ``mask_AP ... mask_APl`` for Mask R-CNN, ``voc07_AP50`` for
        ``metric="voc07"``. ``params``: dataset, sizes, the norm used, feature levels, anchors,
        train seconds, images/s, the mean loss of the last 10 % of the steps. ``artifacts``:
        ``detections.json`` (boxes) unless too large.

    Raises:
        ConfigError: a ViT / unknown encoder, a channel mismatch, Mask R-CNN without masks.
        NonFiniteLossError: the training loss became NaN or infinite.
    """
    if num_workers < 0:
        raise ConfigError(f"num_workers={num_workers} must be >= 0.", "Pass 0 to decode in the main process.")
    _check_inputs(spec, train, test, mean, std)
    sizes = HEAD_SIZES[spec.head_size]
    masks = spec.model == "maskrcnn-fpn"
    cuda_devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(spec.seed)
        body_encoder = copy.deepcopy(encoder).to(device)
        for p in body_encoder.parameters():
            p.requires_grad_(True)
        body_encoder, norm_used = apply_norm(body_encoder, spec.norm, device)
        backbone = build_fpn_backbone(body_encoder, train.channels, sizes.fpn_channels)
        model = build_detector(backbone, train.num_classes, spec, mean, std).to(device)
        transform: Any = model.transform
        optimizer = torch.optim.SGD(_param_groups(model, spec.weight_decay), lr=spec.lr, momentum=SGD_MOMENTUM)

        # Training: a seeded order (reshuffled after each pass), flips and sizes.
        model.train()
        order, flips, step_sizes = training_plan(len(train), spec)
        steps = _StepBatches(train, order, flips, masks)
        loader: Any = (steps[k] for k in range(len(steps))) if num_workers == 0 else torch.utils.data.DataLoader(
            steps, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_identity,
            # its own generator: drawing the workers' base seed from the global one would change the
            # RPN / RoI sampling below
            generator=torch.Generator().manual_seed(spec.seed))
        losses: list[float] = []
        start = time.perf_counter()
        bar = tqdm(total=spec.iterations, desc=f"{spec.name} ({train.name})", disable=not progress, leave=False)
        for step, samples in enumerate(loader):
            transform.min_size = (int(step_sizes[step]),)
            batch = [_to_device(image, target, device) for image, target in samples]
            for group in optimizer.param_groups:
                group["lr"] = spec.lr * detection_lr_factor(step, spec)
            loss_dict = model([b[0] for b in batch], [b[1] for b in batch])
            loss = sum(loss_dict.values())
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"The detection loss became {float(loss)} at step {step} of '{spec.name}' "
                    f"({', '.join(f'{k}={float(v):.3g}' for k, v in loss_dict.items())}).",
                    "Lower the spec's lr or raise warmup_iters.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.close()
        train_seconds = time.perf_counter() - start

        # The test split is looked at only now, once.
        model.eval()
        transform.min_size = (spec.test_size,)
        detections: list[dict[str, Any]] = []
        eval_start = time.perf_counter()
        with torch.no_grad():
            for lo in range(0, len(test), eval_batch_size):
                ids = list(range(lo, min(lo + eval_batch_size, len(test))))
                outputs = model([test.image(i).to(device).float().div_(255.0) for i in ids])
                detections += _detections(outputs, [test.records[i].image_id for i in ids], test.category_ids, masks)
        gt = test.to_coco()
        metrics = coco_metrics(gt, detections, "bbox")
        if masks:
            metrics.update({f"mask_{k}": v for k, v in coco_metrics(gt, detections, "segm").items()})
        if spec.metric == "voc07":
            metrics["voc07_AP50"] = voc07_ap50(gt, detections)
        eval_seconds = time.perf_counter() - eval_start

    tail = losses[-max(1, len(losses) // 10):]
    params: dict[str, float | str] = {
        "dataset": train.name, "num_train": float(len(train)), "num_test": float(len(test)), "norm": norm_used,
        "feature_modules": ",".join(backbone.modules_used),
        "feature_strides": ",".join(str(s) for s in backbone.strides),
        "anchor_sizes": json.dumps([list(a) for a in anchor_sizes(backbone, spec)]),
        "train_seconds": train_seconds, "images_per_second": spec.iterations * spec.batch_size / train_seconds,
        "eval_seconds": eval_seconds, "final_train_loss": sum(tail) / len(tail),
        "num_detections": float(len(detections)),
    }
    artifacts = {}
    boxes_only = [{k: (round(v, 2) if k == "score" else ([round(x, 1) for x in v] if k == "bbox" else v))
                   for k, v in d.items() if k != "segmentation"} for d in detections]
    text = json.dumps(boxes_only)
    if len(text) <= MAX_ARTIFACT_CHARS:
        artifacts["detections.json"] = text
    assert set(COCO_METRICS) <= set(metrics)
    return ProtocolOutput(metrics=metrics, params=params, artifacts=artifacts)
