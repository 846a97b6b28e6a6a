"""No method makes the host wait for the device inside a training step (methods/base.py).

On a GPU, ``.item()``, ``float(t)``, ``bool(t)`` / ``if t:``, ``.tolist()``, a boolean-mask index
or ``nonzero`` on a device tensor stop the host until the device has caught up, every step. These
tests run every registered method's default recipe (and the variants with state-dependent
branches) on CPU under a dispatch mode that treats the step's inputs, the method's parameters and
buffers and everything computed from them as device tensors, and record every such read of
them in ``training_step``, ``backward``, ``before_optimizer_step`` and ``on_step_end``. The only
reads allowed are :meth:`Method.host_value`'s, once per build or load (a Python-side copy of a
buffer: is the queue full, is the normaliser estimated); a CPU generator's draws (not device
tensors) are free.
"""

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

from sslbench.benchmark.augment import BatchAugment, get_augment_recipe
from sslbench.benchmark.engine import build_method, view_geometry
from sslbench.benchmark.optim import build_optimizer
from sslbench.benchmark.recipes import resolve
from sslbench.methods import get_method, list_methods
from sslbench.methods.base import StepContext, TensorEpochData

#: ops whose result the host must read back (a value, or the size of a data-dependent output).
READBACK_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim",
                "unique_consecutive", "equal", "is_nonzero", "allclose", "repeat_interleave", "bincount",
                "histc", "index", "index_put"}

VARIANTS = [
    ("swav", ["method.queue_length=32", "method.epoch_queue_starts=0"]),
    ("instdisc", ["method.loss=nce", "method.num_negatives=16"]),
    ("cmc", ["method.negatives=memory", "method.loss=nce", "method.num_negatives=16"]),
    ("simclr", ["method.loss=dcl"]),
    ("mocov2", ["method.loss=align_uniform"]),
    ("pixpro", ["method.loss=pixcontrast"]),
]


class DeviceReads(TorchDispatchMode):
    """Tracks the tensors that would live on the device and records every host read of one.

    A read is ``(op, where, once)``: ``where`` the innermost line in ``sslbench``, ``once``
    whether it happens inside :meth:`Method.host_value` (allowed once per build or load).
    """

    def __init__(self) -> None:
        super().__init__()
        self.device = WeakTensorKeyDictionary()
        # Seeds of the generators made for a tensor's device (their draws are on it); the
        # dispatcher hands the mode new Python objects, so they are told apart by seed.
        self.generator_seeds: set[int] = set()
        self.reads: list[tuple[str, str, bool]] = []

    def mark(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            self.device[t] = True

    def on_device(self, values: list[Any]) -> bool:
        return any(isinstance(v, torch.Tensor) and v in self.device for v in values)

    def record(self, op: str) -> None:
        stack = traceback.extract_stack()
        ours = [f for f in stack if "/methods/" in f.filename or "/benchmark/" in f.filename]
        where = f"{ours[-1].filename.rsplit('/', 1)[-1]}:{ours[-1].lineno} {ours[-1].line}" if ours else "?"
        self.reads.append((op, where, any(f.name == "host_value" for f in stack)))

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        on_device = self.on_device(flat) or any(
            isinstance(v, torch.Generator) and v.initial_seed() in self.generator_seeds for v in flat)
        if on_device:
            op = func._schema.name.split("::")[-1]
            readback = op in READBACK_OPS
            if op in ("index", "index_put"):  # only a boolean mask's count is read back
                readback = any(isinstance(v, torch.Tensor) and v.dtype == torch.bool for v in flat[1:])
            if op == "repeat_interleave" and kwargs.get("output_size") is not None:
                readback = False
            if readback:
                self.record(op)
        out = func(*args, **kwargs)
        if on_device:
            self.mark(*(o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)))
        return out

    @contextmanager
    def watching(self) -> Iterator[None]:
        """The mode, plus what bypasses the dispatcher: ``tolist`` / ``numpy`` of a device tensor,
        and ``torch.tensor(host data, device=t.device)`` (a blocking host-to-device copy, which
        waits for the device's queue); generators made by ``ctx.generator(t.device)`` draw device
        tensors (``ctx.generator()``, a CPU generator, does not)."""
        tolist, numpy, tensor, generator = torch.Tensor.tolist, torch.Tensor.numpy, torch.tensor, StepContext.generator
        mode = self

        def watched_generator(ctx: StepContext, device: Any = "cpu", stream: int = 0) -> torch.Generator:
            g = generator(ctx, device, stream)
            if isinstance(device, torch.device):
                mode.generator_seeds.add(g.initial_seed())
            return g

        def watched_tensor(data: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
            if isinstance(kwargs.get("device"), torch.device):
                mode.record("tensor(host data, device=...)")
            return tensor(data, *args, **kwargs)

        def watched_tolist(t: torch.Tensor) -> Any:
            if t in mode.device:
                mode.record("tolist")
            return tolist(t)

        def watched_numpy(t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if t in mode.device:
                mode.record("numpy")
            return numpy(t, *args, **kwargs)

        torch.Tensor.tolist, torch.Tensor.numpy = watched_tolist, watched_numpy
        torch.tensor, StepContext.generator = watched_tensor, watched_generator
        try:
            with self:
                yield
        finally:
            torch.Tensor.tolist, torch.Tensor.numpy = tolist, numpy
            torch.tensor, StepContext.generator = tensor, generator


def _setup(name: str, overrides: list[str]) -> tuple[Any, BatchAugment, torch.optim.Optimizer]:
    entry = get_method(name)
    cfg = resolve(entry.default_recipe, ["train.device=cpu", *overrides])
    c = 3 if entry.needs_color else 1
    torch.manual_seed(0)
    method = build_method(cfg, c, 28, num_samples=64)
    augment = BatchAugment(get_augment_recipe(cfg.augment), (0.5,) * c, (0.25,) * c, 28)
    optimizer = build_optimizer(method.param_groups(), cfg.optim, 1e-3)
    g = torch.Generator().manual_seed(7)
    data = TensorEpochData((torch.randint(0, 256, (64, c, 28, 28), generator=g).float() / 255 - 0.5) / 0.25)
    with torch.no_grad():
        method.on_epoch_start(StepContext(step=0, total_steps=4, steps_per_epoch=1, seed=0), data)
    return method, augment, optimizer


def _step(method: Any, augment: BatchAugment, optimizer: torch.optim.Optimizer, step: int,
          reads: DeviceReads) -> Any:
    """One engine step; the engine's own work (augmentation, optimiser) is not watched."""
    g = torch.Generator().manual_seed(100 + step)
    c = len(augment.mean)
    images = torch.randint(0, 256, (16, c, 28, 28), dtype=torch.uint8, generator=g)
    indices = torch.randperm(64, generator=g)[:16]
    geometry = None
    if method.needs_geometry:
        views, params = augment(images, torch.Generator().manual_seed(step), return_params=True)
        geometry = view_geometry(params, 28, 28)
        reads.mark(*(t for gm in geometry for t in (gm.boxes, gm.flip)))
    else:
        views = augment(images, torch.Generator().manual_seed(step))
    reads.mark(*views, indices, *method.parameters(), *method.buffers())
    ctx = StepContext(step=step, total_steps=4, steps_per_epoch=1, indices=indices, seed=0, geometry=geometry)
    with reads.watching():
        out = method(views, ctx)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        method.before_optimizer_step(ctx)
    optimizer.step()
    with reads.watching():
        method.on_step_end(out, ctx)
    return out


@pytest.mark.parametrize("name, overrides", [(n, []) for n in list_methods()] + VARIANTS,
                         ids=[*list_methods(), *("-".join([n, *o]) for n, o in VARIANTS)])
def test_a_step_reads_nothing_back_from_the_device(name, overrides):
    method, augment, optimizer = _setup(name, overrides)
    for step in range(2):
        reads = DeviceReads()
        _step(method, augment, optimizer, step, reads)
        every_step = [(op, where) for op, where, once in reads.reads if not once]
        assert not every_step, f"{name} step {step} reads the device: {every_step}"
        if step > 0:  # host_value read its buffer at step 0 and keeps the copy
            assert not reads.reads, f"{name} step {step} re-reads a buffer: {reads.reads}"


def test_the_detector_sees_a_read():
    """The tests above can fail: ``float(t)``, ``if t:``, ``.tolist()``, a boolean mask of a
    device tensor, a device generator's draw read back and host data copied to the device are
    all recorded (a CPU generator's draw is not)."""
    reads = DeviceReads()
    x = torch.randn(4)
    reads.mark(x)
    ctx = StepContext()
    with reads.watching():
        y = x * 2
        float(y.sum())
        if y.max() > 0:
            pass
        y.tolist()
        y[y > 0].sum()
        int(torch.randint(0, 3, (), generator=ctx.generator(stream=1)))
        int(torch.randint(0, 3, (), generator=ctx.generator(x.device)))
        torch.tensor([1, 2], device=x.device)
    assert [op for op, _, _ in reads.reads] == ["_local_scalar_dense", "_local_scalar_dense", "tolist", "index",
                                                "_local_scalar_dense", "tensor(host data, device=...)"]


def _state_after_one_step(name: str, overrides: list[str]) -> dict[str, torch.Tensor]:
    method, augment, optimizer = _setup(name, overrides)
    _step(method, augment, optimizer, 0, DeviceReads())
    return {k: v.clone() for k, v in method.state_dict().items()}


def test_host_copies_follow_load_state_dict():
    """A copy read before a load never outlives it: InstDisc's "Z is estimated" and SwAV's queue
    fill are re-read from the loaded buffers (a resumed run continues exactly)."""
    nce = ["method.loss=nce", "method.num_negatives=16"]
    fresh = _setup("instdisc", nce)[0].state_dict()
    fresh = {k: v.clone() for k, v in fresh.items()}
    trained = _state_after_one_step("instdisc", nce)
    assert float(trained["normalizer"]) > 0 > float(fresh["normalizer"])
    method, augment, optimizer = _setup("instdisc", nce)
    out = _step(method, augment, optimizer, 0, DeviceReads())
    assert "normalizer" in out.state  # estimated on the first batch
    method.load_state_dict(fresh)  # back to "not estimated": estimate again
    assert "normalizer" in _step(method, augment, optimizer, 1, DeviceReads()).state
    method.load_state_dict(trained)  # estimated: keep the loaded Z
    assert "normalizer" not in _step(method, augment, optimizer, 1, DeviceReads()).state
    assert float(method.normalizer) == float(trained["normalizer"])

    queue = ["method.queue_length=16", "method.epoch_queue_starts=0"]
    full = _state_after_one_step("swav", queue)  # 16 images: the queue is full
    assert int(full["queue_fill"]) == 16
    method, augment, optimizer = _setup("swav", queue)
    assert _step(method, augment, optimizer, 0, DeviceReads()).logs["queue_used"] == 0.0  # empty
    method.load_state_dict({**full, "queue_fill": torch.zeros((), dtype=torch.long)})
    assert _step(method, augment, optimizer, 1, DeviceReads()).logs["queue_used"] == 0.0
    method.load_state_dict(full)
    assert _step(method, augment, optimizer, 1, DeviceReads()).logs["queue_used"] == 1.0
