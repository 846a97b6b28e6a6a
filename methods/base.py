"""The method protocol: an encoder, its heads, a loss and an explicit per-step hook.

Every method is an ``nn.Module`` subclass of :class:`Method` that

* holds ``encoder`` (the backbone whose features the protocols evaluate) and its heads;
* computes its loss in :meth:`Method.training_step` from a list of augmented views and a
  :class:`StepContext` (global step, schedule lengths, the images' dataset indices, the seed),
  without side effects (no queue writes, no EMA updates in the forward pass);
* may edit gradients in :meth:`Method.before_optimizer_step` (e.g. SwAV's prototypes and DINO's
  last layer are frozen in the first epoch), called between ``backward`` and the optimiser step;
* applies its per-step state changes (EMA targets, queues, memory banks) in
  :meth:`Method.on_step_end`, which the engine calls after the optimiser step;
* never waits for the device inside a step (no ``.item()``, ``float(tensor)``, ``.tolist()``,
  ``bool(tensor)`` or ``if tensor:`` in ``training_step``, ``before_optimizer_step`` or
  ``on_step_end``): values to log stay 0-d tensors (the engine converts them once per epoch), and
  a decision that depends on state (is the queue full, is the normaliser estimated) reads a
  Python-side copy of it (:meth:`Method.host_value`);
* exposes :meth:`Method.param_groups` (biases and norms excluded from weight decay and LARS).

Methods that learn from more than two augmented views say what else they need, once for all:

* ``needs_geometry``: where each view was cropped from (:class:`ViewGeometry`, PixPro's pixel
  positives) arrives in ``ctx.geometry``;
* :meth:`Method.on_epoch_start` sees the whole un-augmented training split (:class:`EpochData`:
  DeepCluster v2's k-means, a colour prior) before each epoch;
* :meth:`Method.encoder_spec` wraps the backbone(s) into the evaluated encoder (one encoder per
  colour view for CMC, a patch grid for CPC v2; ``methods/encoders.py``), rebuilt from the checkpoint
  by ``sslbench eval``.

Two-view methods use none of it and are unchanged.

The engine's order for one step is: ``out = method(views, ctx)`` -> finite check ->
``out.loss.backward()`` -> ``method.before_optimizer_step(ctx)`` -> ``optimizer.step()`` ->
``method.on_step_end(out, ctx)``.

Anything a method must carry across a checkpoint (target networks, queues) is a submodule or a
registered buffer, so ``state_dict()`` captures it and resume is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
from torch import nn

if TYPE_CHECKING:
    from sslbench.methods.encoders import EncoderSpec

T = TypeVar("T")
#: a logged value: a Python number, or a detached 0-d tensor left on the device (the engine
#: converts both once per epoch, so a step never waits for the device to log).
LogValue = float | torch.Tensor


@dataclass(frozen=True)
class InputSpec:
    """The training data's input, as a method that converts pixels (colour spaces) needs it.

    Attributes:
        channels: image channels (1 grayscale, 3 RGB).
        image_size: the training image side in pixels.
        mean, std: the per-channel normalisation the views carry, on the [0, 1] pixel scale.
    """

    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.channels < 1 or self.image_size < 1 or len(self.mean) != self.channels \
                or len(self.std) != self.channels or min(self.std) <= 0:
            raise ValueError(f"bad input spec: {self}")


@dataclass(frozen=True)
class ViewGeometry:
    """Where one view's images were cropped from, for the whole batch.

    Attributes:
        boxes: the crop of each image as fractions of its source image's height and width.
        flip: whether the crop was flipped horizontally (after cropping).

    Shape:
        boxes: (B, 4) ``(top, left, height, width)`` in [0, 1]; flip: (B,) bool.
    """

    boxes: torch.Tensor
    flip: torch.Tensor


class EpochData(Protocol):
    """The whole training split, un-augmented, as :meth:`Method.on_epoch_start` sees it."""

    @property
    def num_samples(self) -> int:
        """Images in the training split."""
        ...

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(images, indices)`` over the split in index order: normalised float images at the
        training image size on the training device, and their int64 positions in the split.

        Shape:
            images: (b, C, H, W); indices: (b,).
        """
        ...


@dataclass
class StepOutput:
    """What :meth:`Method.training_step` returns.

    Attributes:
        loss: the scalar to minimise.
        logs: scalars to log: floats or 0-d tensors (detached; left on the device, never turned
            into Python numbers in the step); the engine converts them once per epoch.
        state: tensors the per-step hook needs (e.g. keys to enqueue), never logged.
    """

    loss: torch.Tensor
    logs: dict[str, Any] = field(default_factory=dict)
    state: dict[str, torch.Tensor] = field(default_factory=dict)


class TensorEpochData:
    """An :class:`EpochData` over images already in memory (normalised float tensors), for calling
    :meth:`Method.on_epoch_start` outside the engine (tests, notebooks).

    Shape:
        images: (N, C, H, W).
    """

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.num_samples, batch_size):
            end = min(start + batch_size, self.num_samples)
            yield self.images[start:end], torch.arange(start, end)


@dataclass(frozen=True)
class StepContext:
    """What the engine knows about a training step besides its images.

    Schedules (EMA momentum, teacher temperature, freezing in the first epoch, a queue that starts
    at epoch N) are pure functions of these numbers, so a resumed run continues exactly.

    Attributes:
        step: 0-based global step.
        total_steps: steps in the whole run.
        steps_per_epoch: optimisation steps per epoch (>= 1).
        indices: the batch's positions in the training split (instance-discrimination methods:
            InstDisc's memory bank), on the views' device; None where the caller has none.
        seed: the run's seed; a method that samples (e.g. NCE negatives) seeds a generator from
            ``(seed, step)`` so every random choice is reproducible.
        geometry: one :class:`ViewGeometry` per view; filled only for methods with
            ``needs_geometry`` (None otherwise).

    Shape:
        indices: (B,) int64, row i is the image of row i of every view.
    """

    step: int = 0
    total_steps: int = 1
    steps_per_epoch: int = 1
    indices: torch.Tensor | None = None
    seed: int = 0
    geometry: tuple[ViewGeometry, ...] | None = None

    def __post_init__(self) -> None:
        if self.steps_per_epoch < 1 or self.total_steps < 1 or self.step < 0:
            raise ValueError(f"bad step context: step {self.step}, total_steps {self.total_steps}, "
                             f"steps_per_epoch {self.steps_per_epoch}")

    @property
    def epoch(self) -> int:
        """0-based epoch of this step."""
        return self.step // self.steps_per_epoch

    @property
    def epoch_float(self) -> float:
        """Fractional epoch at the start of this step (``step / steps_per_epoch``)."""
        return self.step / self.steps_per_epoch

    def generator(self, device: torch.device | str = "cpu", stream: int = 0) -> torch.Generator:
        """A generator seeded by ``(seed, step, stream)``: the same draws on a resumed run."""
        g = torch.Generator(device=device)
        g.manual_seed((self.seed * 1_000_003 + self.step * 7_919 + stream * 104_729) % (2**63 - 1))
        return g


def forward_views(module: Callable[[torch.Tensor], torch.Tensor], views: list[torch.Tensor]) -> list[torch.Tensor]:
    """Runs ``module`` on each view, batching consecutive views of equal resolution together
    (one forward per resolution, as DINO's ``MultiCropWrapper``; batch norm then sees all views of
    a resolution at once, like SimCLR's global BN over 2N).

    Shape:
        views: tensors of shape (B, C, H_v, W_v); returns one (B, ...) output per view.
    """
    outputs: list[torch.Tensor] = []
    start = 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        out = module(torch.cat(views[start:end]))
        outputs.extend(out.chunk(end - start))
        start = end
    return outputs


class Method(nn.Module):
    """Base of every self-supervised method.

    Args:
        encoder: backbone mapping (B, C, H, W) images to (B, feature_dim) features.
        feature_dim: the backbone's output dimension (discovered, not configured).
    """

    #: number of augmented views the method consumes (the augmentation recipe must provide them).
    num_views: int = 2
    #: under data parallelism on CUDA the engine converts batch norm to SyncBatchNorm (global
    #: statistics, as SimCLR, BYOL and MoCo v3 do); False keeps per-GPU statistics (MoCo v1/v2's
    #: shuffling BN relies on them).
    sync_batchnorm: bool = True
    #: the engine passes each view's crop boxes and flips in ``StepContext.geometry``.
    needs_geometry: bool = False
    #: the views only go through the networks (no pixel arithmetic of the method's own), so under
    #: bf16 autocast on CUDA the augmentation may emit them in bf16 and channels-last directly,
    #: as the first convolution would cast them anyway (the same values, half the memory traffic).
    low_precision_views: bool = False

    def __init__(self, encoder: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_dim = feature_dim
        self._host_values: dict[str, Any] = {}
        self.register_load_state_dict_post_hook(_forget_host_values)

    def host_value(self, key: str, read: Callable[[], T]) -> T:
        """A Python-side copy of some of the method's device state (e.g. a buffer that says
        whether a queue is full), so that a step can branch on it without waiting for the
        device: ``read()`` (which may sync) runs the first time only; :meth:`set_host_value`
        keeps the copy in step with the buffer; ``load_state_dict`` forgets every copy (the
        next read takes the loaded buffers'). A method that writes such a buffer must call
        :meth:`set_host_value` with the value it wrote."""
        if key not in self._host_values:
            self._host_values[key] = read()
        value: T = self._host_values[key]
        return value

    def set_host_value(self, key: str, value: Any) -> None:
        """Records the Python-side copy of device state that the method has just written."""
        self._host_values[key] = value

    def forward(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        """Same as :meth:`training_step`: the engine calls the method (or its
        ``DistributedDataParallel`` wrapper, whose gradient hooks are armed by ``forward``)."""
        return self.training_step(views, ctx)

    @classmethod
    def encoder_spec(cls, cfg: Any, input_spec: InputSpec) -> EncoderSpec | None:
        """How the evaluated encoder wraps the backbone (``methods/encoders.py``), from the
        method's config; None (the default): the plain backbone."""
        return None

    def training_step(self, views: list[torch.Tensor], ctx: StepContext) -> StepOutput:
        """Computes the loss for one batch of views.

        Args:
            views: the augmented views (at least ``num_views``; multi-crop recipes give more).
            ctx: the step's context.

        Shape:
            views: tensors of shape (B, C, H_v, W_v).
        """
        raise NotImplementedError

    @torch.no_grad()
    def on_epoch_start(self, ctx: StepContext, data: EpochData) -> dict[str, float]:
        """State computed from the whole training split before each epoch (k-means over the
        dataset, a colour prior); called under no_grad, also for the first epoch after a resume,
        with ``ctx.step`` the epoch's first step. Must depend only on the method's state and
        ``ctx`` (resume is exact). Returns values to log (default: nothing)."""
        return {}

    def before_optimizer_step(self, ctx: StepContext) -> None:
        """Edits gradients after ``backward`` and before the optimiser step (default: nothing)."""

    @torch.no_grad()
    def on_step_end(self, out: StepOutput, ctx: StepContext) -> Mapping[str, LogValue]:
        """Per-step state update after the optimiser step (EMA, queues); returns values to log:
        floats or 0-d tensors (never synced here); the engine converts them once per epoch.

        Args:
            out: this step's :class:`StepOutput`.
            ctx: the context of the step just completed.
        """
        return {}

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters, with biases and normalisation parameters in a group that gets
        no weight decay and no LARS adaptation (SimCLR, BYOL, MoCo v3 all do this)."""
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
        groups: list[dict[str, Any]] = [{"params": decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
        return groups


def _forget_host_values(module: nn.Module, incompatible_keys: Any) -> None:
    """``load_state_dict`` post-hook: the loaded buffers replace what the copies mirrored."""
    assert isinstance(module, Method)
    module._host_values.clear()
