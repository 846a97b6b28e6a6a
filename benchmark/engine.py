"""The one training loop every method runs under.

Read top to bottom: schedules -> augmentation -> forward under autocast -> finite-loss record ->
backward -> ``before_optimizer_step`` -> step -> ``on_step_end``; an atomic checkpoint every
``train.checkpoint_every`` epochs (and at the end), then the saved epochs' metrics to MLflow. The
loss and the methods' logs stay on the device during an epoch (no host synchronisation per step):
finiteness is checked every ``train.finite_check_every`` steps and before each checkpoint. All randomness after model initialisation is drawn from generators seeded
by ``(seed, epoch)`` (and the rank, for augmentation under data parallelism), so a run resumed
from an epoch checkpoint continues exactly as an uninterrupted one would (bit-identical weights
on CPU).

With ``crop.mode=ccrop`` (ContrastiveCrop, ``benchmark/contrastive_crop.py``) the scheduled epochs
begin by localising a box in every training image with the current encoder; each batch's crops are
then placed in its images' boxes. The boxes are kept in the checkpoint, so resuming stays exact.

With a ``background`` section (``benchmark/background.py``) each view is made from its own
composite of the batch (foreground kept, background replaced with probability p), with draws from
a per-epoch generator of their own, so the views' crops and colours stay those of a run without it.

With a ``monitor`` section (``benchmark/monitor.py``) a :class:`~sslbench.benchmark.monitor.Monitor`
probes the encoder every N steps and runs an online kNN / linear head every N epochs, logging
``monitor/*`` curves after each epoch's checkpoint; it never changes the trained weights, and final
numbers always come from the offline protocols.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from sslbench.benchmark.augment import BatchAugment, get_augment_recipe
from sslbench.benchmark.background import BackgroundAugment
from sslbench.benchmark.checkpoint import CheckpointWriter, load_checkpoint, save_checkpoint
from sslbench.benchmark.config import Config, Derived, derive
from sslbench.benchmark.console import bars_enabled, epoch_line, say
from sslbench.benchmark.contrastive_crop import (
    ContrastiveCropSampler,
    check_feature_map,
    is_localization_epoch,
    localize,
    mean_box_area,
)
from sslbench.benchmark.datasets import ArrayDataset, full_frame_sampler, load_dataset
from sslbench.benchmark.distributed import (
    DistEnv,
    barrier,
    init_distributed,
    mean_over_ranks,
    rank_device,
    read_dist_env,
    teardown,
    wrap_ddp,
)
from sslbench.benchmark.errors import CheckpointError, ConfigError, NonFiniteLossError, SSLBenchError
from sslbench.benchmark.execution import compile_modules, execution_settings, switch
from sslbench.benchmark.monitor import Monitor
from sslbench.benchmark.optim import build_optimizer, set_lr
from sslbench.benchmark.schedules import warmup_cosine
from sslbench.methods import Method, StepContext, get_method
from sslbench.methods.base import InputSpec, ViewGeometry
from sslbench.methods.encoders import EncoderSpec, build_encoder
from sslbench.results.tracking import METRIC_FINAL_WALL_TIME_S, TAG_RUN_DIR

CHECKPOINT_NAME = "last.pt"


@dataclass(frozen=True)
class Tracking:
    """Where runs are logged (``uri=None``: ``MLFLOW_TRACKING_URI`` or ./mlruns.db)."""

    uri: str | None = None
    experiment: str = "sslbench"


@dataclass
class PretrainResult:
    """What a pretraining run leaves behind.

    Attributes:
        run_dir: the run's folder (checkpoint, config.json).
        checkpoint: path of the final checkpoint.
        encoder: the trained backbone (on ``device``, eval mode).
        config: the resolved config.
        derived: the derived values (learning rate, steps).
        run_id: the MLflow run id (None when tracking is off).
        metrics: final metrics (loss, wall time, images/s).
        device: where it trained.
        tags: the identity tags, copied onto evaluation runs.
        is_main: this process is rank 0 (the one that wrote the checkpoint and the MLflow run;
            evaluate there only). Always True for one process.
    """

    run_dir: Path
    checkpoint: Path
    encoder: nn.Module
    config: Config
    derived: Derived
    run_id: str | None
    metrics: dict[str, float]
    device: torch.device
    tags: dict[str, str]
    is_main: bool = True


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU.

    Raises:
        ConfigError: CUDA was asked for and is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA device is available.",
                          "Use train.device=cpu (or auto).")
    return torch.device(name)


def epoch_seed(seed: int, epoch: int, stream: int, rank: int = 0) -> int:
    """A distinct, reproducible seed per (run seed, epoch, random stream, data-parallel rank)."""
    return (seed * 1_000_003 + epoch * 7_919 + stream * 104_729 + rank * 15_485_863) % (2**63 - 1)


def encoder_spec_of(cfg: Config, input_spec: InputSpec) -> EncoderSpec | None:
    """The wrapper of ``cfg.method``'s evaluated encoder (None: the plain backbone)."""
    entry = get_method(cfg.method)
    method_cls = cast(type[Method], entry.cls)  # registered classes are Method subclasses
    return method_cls.encoder_spec(entry.config(**cfg.method_args), input_spec)


def build_method(cfg: Config, in_chans: int, image_size: int, num_samples: int = 0, *,
                 input_spec: InputSpec | None = None) -> Method:
    """Seeds the global RNG with ``train.seed`` and builds encoder + method (deterministic init).

    ``num_samples`` (the training split's size) reaches methods that keep per-image state;
    ``input_spec`` (the data's normalisation; default mean 0.5, std 0.25 per channel, for tests)
    reaches methods that convert pixels and encoder wrappers (``methods/encoders.py``).

    Raises:
        ConfigError: a colour method (CMC, colorization) on grayscale data.
    """
    entry = get_method(cfg.method)
    if entry.needs_color and in_chans != 3:
        raise ConfigError(
            f"'{cfg.method}' ({entry.family}) learns from the colour channels of RGB images, but the "
            f"data ('{cfg.data.dataset}') has {in_chans} channel(s): on grayscale images its colour "
            "views are empty or constant, so there is nothing to learn.",
            "Use a colour dataset: data.dataset=fashion-mnist-color-mini (the embedded images, "
            "generated in colour), cifar10, stl10 or an RGB image folder.")
    if input_spec is None:
        input_spec = InputSpec(in_chans, image_size, (0.5,) * in_chans, (0.25,) * in_chans)
    torch.manual_seed(cfg.train.seed)
    encoder, dim = build_encoder(cfg.backbone, input_spec, encoder_spec_of(cfg, input_spec))
    return entry.build(encoder, dim, cfg.method_args, num_samples, input_spec=input_spec)


def identity_tags(cfg: Config, device: torch.device) -> dict[str, str]:
    """The tags that identify a pretraining (copied onto its evaluation runs)."""
    from sslbench.results.tracking import provenance_tags

    return {
        "kind": "pretrain", "method": cfg.method, "recipe": cfg.recipe, "augment": cfg.augment,
        "dataset": cfg.data.dataset, "backbone": cfg.backbone,
        "batch_size": str(cfg.data.batch_size), "epochs": str(cfg.train.epochs),
        "seed": str(cfg.train.seed), "config_hash": cfg.hash(),
        # Only ContrastiveCrop runs carry a crop tag: other runs keep the tags they always had.
        **({"crop": cfg.crop.mode} if cfg.crop.mode != "random" else {}),
        **provenance_tags(str(device)),
    }


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _view_dtype(cfg: Config, device: torch.device, method: Method) -> torch.dtype:
    """bf16 views on CUDA under bf16 autocast for methods whose views only enter their networks
    (the first layer would cast them to bf16 anyway); float32 otherwise."""
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 and device.type == "cuda" and method.low_precision_views else torch.float32


def _channels_last(cfg: Config, device: torch.device) -> bool:
    return cfg.train.channels_last == "on" or (cfg.train.channels_last == "auto" and device.type == "cuda")


def _progress(iterable: Any, total: int, desc: str, enabled: bool) -> Iterator[Any]:
    """A tqdm bar over ``iterable`` when ``enabled`` and stderr is a terminal; else the plain
    iterator (a log file or pipe gets the per-epoch line instead, never a carriage return)."""
    if not bars_enabled(enabled):
        return iter(iterable)
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True))


def pretrain(cfg: Config, run_dir: str | Path, *, resume: bool = False,
             tracking: Tracking | None = Tracking(), progress: bool = True,
             stop_after_epochs: int | None = None, run_id: str | None = None,
             extra_tags: dict[str, str] | None = None, max_steps: int | None = None,
             step_hook: Callable[[int], None] | None = None,
             echo: Callable[[str], None] | None = say) -> PretrainResult:
    """Pretrains ``cfg.method`` and returns its encoder.

    Args:
        cfg: the resolved config.
        run_dir: the run's folder; ``checkpoints/last.pt`` is written there every epoch.
        resume: continue from ``run_dir``'s checkpoint (a finished run returns at once).
        tracking: where to log (None: no MLflow).
        progress: show tqdm bars (only where stderr is a terminal).
        stop_after_epochs: stop after this many completed epochs, as a preempted job would
            (the checkpoint lets ``resume=True`` finish the run).
        run_id: log into this existing MLflow run when no checkpoint names one (a sweep cell
            whose job died before its first checkpoint goes on in the run it had created).
        extra_tags: more tags for the pretraining run (e.g. the sweep and cell it belongs to).
        max_steps: stop after this many optimisation steps in all, mid-epoch, without writing a
            checkpoint for the unfinished epoch (benchmarks: ``bench_train``).
        step_hook: called with the global step count after every optimisation step (a
            benchmark's timer; it must not synchronise unless it means to).
        echo: where the line of each finished epoch goes (rank 0 only; None: nowhere).

    Raises:
        SSLBenchError: bad config, missing data, a checkpoint that is corrupt or from another
            config, an existing run without ``resume``, a non-finite loss.

    Data parallelism: started as W processes (torchrun, or SLURM tasks; see
    ``benchmark/distributed.py``), every rank calls this function with the same arguments
    (``run_dir`` on a shared file system). ``data.batch_size`` stays the global batch: all ranks
    draw the same shuffle, each trains on its contiguous ``batch_size / W`` slice of every global
    batch (augmented with its own generator), and DDP averages the gradients. Batch norm is
    synchronised on CUDA (SyncBatchNorm); on CPU (gloo) each rank normalises with its own
    slice's statistics. Only rank 0 writes config.json, checkpoints and MLflow.
    """
    env = read_dist_env()
    device = rank_device(resolve_device(cfg.train.device), env)
    owns_group = init_distributed(env, device)
    try:
        with execution_settings(cfg.train, device):
            return _pretrain(cfg, Path(run_dir), env, device, resume=resume, tracking=tracking,
                             progress=progress, stop_after_epochs=stop_after_epochs, run_id=run_id,
                             extra_tags=extra_tags, max_steps=max_steps, step_hook=step_hook,
                             echo=echo)
    finally:
        if owns_group:
            teardown()


def _pretrain(cfg: Config, run_dir: Path, env: DistEnv, device: torch.device, *, resume: bool,
              tracking: Tracking | None, progress: bool, stop_after_epochs: int | None,
              run_id: str | None, extra_tags: dict[str, str] | None, max_steps: int | None = None,
              step_hook: Callable[[int], None] | None = None,
              echo: Callable[[str], None] | None = None) -> PretrainResult:
    ckpt_path = run_dir / "checkpoints" / CHECKPOINT_NAME
    if ckpt_path.exists() and not resume:
        raise SSLBenchError(
            f"Run folder '{run_dir}' already holds a run (checkpoint {ckpt_path}).",
            "Pass --resume to continue (or reuse) it, or choose another --out folder; sslbench "
            "never overwrites finished results.",
        )
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)

    # Image folders train on the full decoded frame (each crop a fraction of the whole photo).
    train = load_dataset(cfg.data.dataset, "train", data_dir=cfg.data.data_dir,
                         download=cfg.data.download, image_size=cfg.data.image_size,
                         num_workers=cfg.data.num_workers, cache=cfg.data.cache, strict=cfg.data.strict,
                         frame="full", load_size=cfg.data.load_size)
    if isinstance(train, ArrayDataset):
        train = train.to(device)  # in-memory data moves to the device once
    info = train.info
    image_size = cfg.data.image_size or info.image_size
    input_spec = InputSpec(info.channels, image_size, tuple(info.mean), tuple(info.std))
    method = build_method(cfg, info.channels, image_size, len(train), input_spec=input_spec).to(device)
    if env.distributed and device.type == "cuda" and method.sync_batchnorm:  # no SyncBN on CPU
        method = cast(Method, nn.SyncBatchNorm.convert_sync_batchnorm(method))
    channels_last = _channels_last(cfg, device)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    aug_recipe = get_augment_recipe(cfg.augment)
    if len(aug_recipe.views) < method.num_views:
        raise ConfigError(
            f"Augmentation '{cfg.augment}' makes {len(aug_recipe.views)} view(s) but "
            f"'{cfg.method}' needs {method.num_views}.", "Pick a recipe with enough views.")
    augment = BatchAugment(aug_recipe, info.mean, info.std, image_size)  # the monitor's: float32
    view_augment = BatchAugment(aug_recipe, info.mean, info.std, image_size, out_dtype=_view_dtype(cfg, device, method),
                                channels_last=channels_last)  # the training views, as the model takes them
    if cfg.crop.mode == "ccrop":  # fail now, not at the first localisation
        check_feature_map(method.encoder, cfg.backbone, info.channels, image_size)
    background = None  # background augmentation: each view made from its own composite images
    if cfg.background.enabled:
        background = BackgroundAugment(cfg.background, info.mean, info.std, cfg.backbone)
        background.check(method.encoder, info.channels, image_size)  # fail now, not at its first step
    boxes: torch.Tensor | None = None  # ContrastiveCrop boxes (N, 4); None: random crops
    derived = derive(cfg, len(train), env.world_size)
    optimizer = build_optimizer(method.param_groups(), cfg.optim, derived.lr,
                                foreach=switch(cfg.train.foreach, device))
    monitor = Monitor(cfg.monitor, encoder=method.encoder, train=train, augment=augment, image_size=image_size,
                      feature_dim=method.feature_dim, seed=cfg.train.seed, device=device, method=cfg.method,
                      batch_size=cfg.data.batch_size, active=env.is_main,
                      forward_context=lambda: _autocast(device, cfg.train.precision))

    start_epoch, step, history, elapsed = 0, 0, [], 0.0
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device)
        _check_resumable(state, cfg, ckpt_path)
        try:
            method.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"Checkpoint '{ckpt_path}' does not fit the model built from its config "
                f"({str(exc).splitlines()[0][:160]}).", "Start a fresh run in another folder.",
            ) from None
        start_epoch, step = state["epoch"], state["global_step"]
        if state.get("ccrop_boxes") is not None:
            boxes = state["ccrop_boxes"].to(device)
        monitor.load_state_dict(state.get("monitor"))
        run_id = state.get("mlflow_run_id") or run_id
        history, elapsed = list(state.get("history", [])), float(state.get("wall_time_s", 0.0))
        # Nothing left to do: never re-train or re-log a finished run. (A job killed after its
        # last checkpoint but before MLflow heard the end goes on below, training nothing, to
        # log the missing epochs and final metrics and mark the run FINISHED.)
        if state.get("finished") and not _tracking_unfinished(tracking, run_id):
            method.encoder.eval()
            return PretrainResult(run_dir, ckpt_path, method.encoder, cfg, derived, run_id,
                                  _final_metrics(history, elapsed), device, identity_tags(cfg, device),
                                  env.is_main)

    # The engine calls `model` (DDP's gradient averaging under data parallelism); the per-step
    # hook and the checkpoints use the unwrapped `method`.
    compiled = bool(compile_modules(method, cfg.train.compile))  # in place: same state_dict keys
    model = wrap_ddp(method, device) if env.distributed else method
    tags = identity_tags(cfg, device)
    run_tags = {**tags, **(extra_tags or {}), TAG_RUN_DIR: str(run_dir.resolve())}
    run_ctx = _tracked_run(tracking if env.is_main else None, cfg, run_tags, run_id)
    wall0 = time.perf_counter()
    with run_ctx as run:
        run_id = run.run_id if run is not None else None
        if run is not None:
            # Params are idempotent (TrackedRun skips equal values), so a run resumed before its
            # first checkpoint, or re-attached by a sweep, logs its config exactly once. The
            # monitor settings may change on resume: they go into a tag (Monitor.start) instead.
            params = {k: v for k, v in cfg.to_dict().items() if k != "monitor"}
            run.log_params({**params, "derived": derived.to_dict()})
            if start_epoch == 0:
                run.log_dict(cfg.to_dict(), "config.json")
            # A job killed between an epoch's checkpoint and its metrics leaves that epoch
            # unlogged: log what the checkpoint's history has and MLflow lacks, never twice.
            logged = run.metric_steps("train/loss") if start_epoch else set()
            for h in history:
                if int(h["epoch"]) not in logged:
                    run.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=int(h["epoch"]))
        monitor.start(run, fresh=start_epoch == 0)
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(_json(cfg.to_dict()))

        stop = min(stop_after_epochs if stop_after_epochs is not None else cfg.train.epochs,
                   cfg.train.epochs)
        writer = CheckpointWriter(asynchronous=switch(cfg.train.async_checkpoint, device))
        unlogged: list[dict[str, float]] = []  # epochs whose checkpoint is not yet on disk

        def log_saved() -> None:  # a logged epoch is always a saved epoch
            while unlogged and unlogged[0]["epoch"] <= writer.durable_epoch:
                h = unlogged.pop(0)
                if run is not None:
                    run.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=int(h["epoch"]))
            if not unlogged:
                monitor.flush()

        watch = _FiniteWatch(device, cfg.train.finite_check_every)
        compile_time: float | None = None
        stopped_by_steps = False
        try:
            for epoch in range(start_epoch, stop):
                if max_steps is not None and step >= max_steps:
                    stopped_by_steps = True
                    break
                shuffle_gen = torch.Generator().manual_seed(epoch_seed(cfg.train.seed, epoch, 0))
                aug_seed = epoch_seed(cfg.train.seed, epoch, 1, env.rank)  # own augmentations per rank
                aug_gen = torch.Generator(device=device).manual_seed(aug_seed)
                # Background draws on their own stream: the views' draws stay those of a run without it.
                bg_seed = epoch_seed(cfg.train.seed, epoch, 2, env.rank)
                bg_gen = torch.Generator(device=device).manual_seed(bg_seed)
                t0, crop_logs = time.perf_counter(), {}
                sums = _StepSums(device)  # the loss and StepOutput.logs, summed on the device
                hook_logs: Mapping[str, Any] = {}
                if is_localization_epoch(epoch, cfg.crop):  # every rank, the whole split, same weights
                    with _autocast(device, cfg.train.precision):
                        boxes = localize(method.encoder, cfg.backbone, train, mean=info.mean, std=info.std,
                                         threshold=cfg.crop.threshold, batch_size=cfg.data.batch_size,
                                         device=device)
                    crop_logs = {"train/ccrop_box_area": mean_box_area(boxes)}
                with torch.no_grad(), _autocast(device, cfg.train.precision):
                    epoch_ctx = StepContext(step, derived.total_steps, derived.steps_per_epoch, seed=cfg.train.seed)
                    epoch_logs = method.on_epoch_start(epoch_ctx, _EpochData(train, info, image_size, device))
                method.train()
                batches = train.batches(cfg.data.batch_size, shuffle=True, generator=shuffle_gen,
                                        drop_last=True, rank=env.rank, world_size=env.world_size)
                desc = f"{cfg.method} epoch {epoch + 1}/{cfg.train.epochs}"
                epoch_steps = 0
                for batch in _progress(batches, derived.steps_per_epoch, desc, progress and env.is_main):
                    lr = warmup_cosine(step, derived.total_steps, derived.warmup_steps, derived.lr,
                                       derived.final_lr)
                    set_lr(optimizer, lr)
                    indices = batch.indices.to(device, non_blocking=True)
                    sampler = full_frame_sampler(train, indices)  # None but for full-frame folders
                    if boxes is not None:
                        sampler = ContrastiveCropSampler(boxes[indices], cfg.crop.alpha)
                    images = batch.images.to(device, non_blocking=True)
                    view_images = None
                    if background is not None and epoch >= cfg.background.start_epoch:
                        view_images = background(images, augment.num_views, bg_gen, method.encoder)
                    geometry = None
                    if method.needs_geometry:
                        views, view_params = view_augment(images, aug_gen, crop_sampler=sampler,
                                                          return_params=True, view_images=view_images)
                        geometry = view_geometry(view_params, images.shape[-2], images.shape[-1])
                    else:
                        views = view_augment(images, aug_gen, crop_sampler=sampler, view_images=view_images)
                    ctx = StepContext(step, derived.total_steps, derived.steps_per_epoch, indices, cfg.train.seed,
                                      geometry)
                    first = compile_time is None and compiled
                    t_step = time.perf_counter() if first else 0.0
                    with _autocast(device, cfg.train.precision):
                        out = model(views, ctx)
                    loss = out.loss.detach()
                    watch.record(loss, step, lr)  # no host synchronisation (checked every N steps)
                    optimizer.zero_grad(set_to_none=True)
                    out.loss.backward()
                    method.before_optimizer_step(ctx)
                    optimizer.step()
                    hook_logs = method.on_step_end(out, ctx)
                    sums.add(loss, out.logs)
                    step += 1
                    epoch_steps += 1
                    if first:  # the first compiled step: its time is the compile time, reported apart
                        _synchronize(device)
                        compile_time = time.perf_counter() - t_step
                    if watch.due(step):
                        watch.check(cfg.method, derived.steps_per_epoch, run_dir)
                    monitor.after_step(step, views[0], batch.labels, indices)
                    if step_hook is not None:
                        step_hook(step)
                    if max_steps is not None and step >= max_steps:
                        break
                watch.check(cfg.method, derived.steps_per_epoch, run_dir)  # before the checkpoint
                if epoch_steps < derived.steps_per_epoch:
                    stopped_by_steps = True  # a benchmark's step limit, mid-epoch: nothing to save or log
                    break
                seconds = time.perf_counter() - t0
                totals = sums.totals(derived.steps_per_epoch)
                metrics = {
                    "train/loss": totals.pop("loss"),
                    "train/lr": lr if derived.steps_per_epoch else 0.0,
                    "train/images_per_s": derived.steps_per_epoch * cfg.data.batch_size / seconds,  # all ranks
                    "train/epoch_time_s": seconds,
                    "train/peak_memory_mb": peak_memory_mb(device),
                    **{f"train/{k}": v for k, v in totals.items()},
                    **{f"train/{k}": float(v) for k, v in hook_logs.items()},  # the epoch's last step
                    **crop_logs,
                    **{f"train/{k}": float(v) for k, v in epoch_logs.items()},
                    **({"train/compile_time_s": compile_time} if compile_time is not None and epoch == start_epoch
                       else {}),
                }
                monitor.end_epoch(epoch + 1, last=epoch + 1 == cfg.train.epochs)
                history.append({"epoch": epoch + 1, **metrics})
                if echo is not None and env.is_main:
                    _echo_epoch(echo, cfg, epoch + 1, stop, metrics, time.perf_counter() - wall0, start_epoch)
                unlogged.append(history[-1])
                final_epoch = epoch + 1 == stop  # the run's last epoch, or where it is stopped early
                if env.is_main and ((epoch + 1) % cfg.train.checkpoint_every == 0 or final_epoch):
                    writer.save(ckpt_path, _state(cfg, method, optimizer, epoch + 1, step, run_id, history,
                                                  info, input_spec, elapsed + time.perf_counter() - wall0,
                                                  boxes, monitor.state_dict()), sync=final_epoch)
                elif not env.is_main:
                    writer.durable_epoch = epoch + 1  # only rank 0 writes; the others log nothing
                log_saved()
        finally:
            writer.wait()  # a checkpoint in flight reaches the disk even when the run fails,
            log_saved()  # and the epochs it saved reach MLflow

        done = stop >= cfg.train.epochs and not stopped_by_steps
        if env.is_main and not ckpt_path.exists():  # epochs == 0: the random-init encoder, saved
            save_checkpoint(ckpt_path, _state(cfg, method, optimizer, 0, 0, run_id, history, info,
                                              input_spec, 0.0, monitor_state=monitor.state_dict()))
        monitor.flush()
        final = _final_metrics(history, elapsed + time.perf_counter() - wall0)
        if run is not None:
            if not done:  # stopped early (preemption): not finished until a resume completes it
                run.end_status = "KILLED"
            # A finished checkpoint re-opened to complete its run may have its final metrics.
            elif not (start_epoch >= cfg.train.epochs and run.metric_steps(METRIC_FINAL_WALL_TIME_S)):
                run.log_metrics(final)
    barrier()  # no rank returns before rank 0's checkpoint exists
    method.encoder.eval()
    return PretrainResult(run_dir, ckpt_path, method.encoder, cfg, derived, run_id, final, device, tags,
                          env.is_main)



def _echo_epoch(echo: Callable[[str], None], cfg: Config, epoch: int, stop: int,
                metrics: Mapping[str, float], seconds: float, start_epoch: int) -> None:
    """The finished epoch's line; the ETA is this call's mean epoch time so far times the epochs
    left until ``stop`` (compile and warm-up time included, so early ETAs err long)."""
    mean = seconds / (epoch - start_epoch)
    echo(epoch_line(cfg.method, epoch, cfg.train.epochs, metrics, mean * (stop - epoch)))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _StepSums:
    """The loss and the methods' step logs, summed over an epoch where they are (0-d tensors stay
    on the device; floats stay floats): read once, at the epoch's end.

    Sums are float64, as the Python floats they replace, so the logged means are the same numbers.
    """

    def __init__(self, device: torch.device) -> None:
        self._dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self._sums: dict[str, Any] = {}

    def add(self, loss: torch.Tensor, logs: dict[str, Any]) -> None:
        self._add("loss", loss)
        for key, value in logs.items():
            self._add(key, value)

    def _add(self, key: str, value: Any) -> None:
        value = value.detach().to(self._dtype) if isinstance(value, torch.Tensor) else float(value)
        previous = self._sums.get(key)
        self._sums[key] = value if previous is None else previous + value

    def totals(self, steps: int) -> dict[str, float]:
        """Each sum divided by ``steps`` (the loss averaged over data-parallel ranks too)."""
        sums = dict(self._sums)
        loss = sums.pop("loss", 0.0)
        if isinstance(loss, torch.Tensor):
            loss = float(mean_over_ranks(loss))  # the mean over ranks: the logged loss
        return {"loss": loss / max(1, steps), **{k: float(v) / max(1, steps) for k, v in sums.items()}}


class _FiniteWatch:
    """Finds the first non-finite training loss without a host synchronisation per step.

    :meth:`record` keeps, on the device, the first step whose loss was not finite and its value;
    :meth:`check` (every ``every`` steps and at each epoch end) reads them once and, on every
    data-parallel rank alike, raises the error that names that step.
    """

    _NONE = 2**62  # "no bad step yet"

    def __init__(self, device: torch.device, every: int) -> None:
        self.every = every
        self._bad_step = torch.full((), self._NONE, dtype=torch.int64, device=device)
        self._bad_value = torch.zeros((), dtype=torch.float32, device=device)
        self._lrs: dict[int, float] = {}

    def record(self, loss: torch.Tensor, step: int, lr: float) -> None:
        new = ~torch.isfinite(loss) & (self._bad_step == self._NONE)
        self._bad_step = torch.where(new, step, self._bad_step)
        self._bad_value = torch.where(new, loss.float(), self._bad_value)
        self._lrs[step] = lr

    def due(self, steps_done: int) -> bool:
        return steps_done % self.every == 0

    def check(self, method: str, steps_per_epoch: int, run_dir: Path) -> None:
        """Raises:
            NonFiniteLossError: a step since the last check had a non-finite loss (on any rank).
        """
        from sslbench.benchmark.distributed import reduce_over_ranks

        first = int(-reduce_over_ranks(-self._bad_step, "max"))  # the earliest bad step of all ranks
        lrs, self._lrs = self._lrs, {}
        if first == self._NONE:
            return
        value = float(self._bad_value) if int(self._bad_step) == first else float("nan")
        lr = lrs.get(first, float("nan"))
        raise NonFiniteLossError(
            f"The training loss of '{method}' became {value} at step {first} "
            f"(epoch {first // max(1, steps_per_epoch) + 1}, lr {lr:.3g}).",
            f"The last good checkpoint is kept in {run_dir / 'checkpoints'}. Lower "
            "optim.base_lr or use optim.warmup_epochs, then start again (or resume).",
        )

def _tracked_run(tracking: Tracking | None, cfg: Config, tags: dict[str, str],
                 run_id: str | None) -> contextlib.AbstractContextManager[Any]:
    if tracking is None:
        return contextlib.nullcontext()
    from sslbench.benchmark.recipes import get_recipe
    from sslbench.results.run_artifacts import finishing
    from sslbench.results.tracking import PROVENANCE_TAGS, TrackedRun, git_commit, pretrain_run_name

    if run_id is not None:  # a resumed run keeps the provenance it started with
        tags = {k: v for k, v in tags.items() if k not in PROVENANCE_TAGS}
        tags["resumed_git_commit"] = git_commit()
    # The name says what ran: the recipe and seed, and where the run departs from its recipe,
    # the dataset, batch size and epochs (a sweep's cells differ there).
    try:
        base: Config | None = get_recipe(cfg.recipe).config
    except SSLBenchError:  # a config that names no registered recipe
        base = None
    name = pretrain_run_name(
        cfg.recipe, cfg.train.seed,
        dataset=cfg.data.dataset if base is None or cfg.data.dataset != base.data.dataset else None,
        batch_size=cfg.data.batch_size if base is None or cfg.data.batch_size != base.data.batch_size else None,
        epochs=cfg.train.epochs if base is None or cfg.train.epochs != base.train.epochs else None)
    run = TrackedRun(run_name=name, tags=tags, experiment=tracking.experiment,
                     tracking_uri=tracking.uri, run_id=run_id)
    # A finished run also stores its final checkpoint (or its sha256) and training curves.
    return finishing(run, Path(tags[TAG_RUN_DIR]) / "checkpoints" / CHECKPOINT_NAME, name)


def _tracking_unfinished(tracking: Tracking | None, run_id: str | None) -> bool:
    """Whether the MLflow run of a finished checkpoint was left unfinished (job killed at its end).

    Every data-parallel rank asks (before any rank changes the run), so all take the same path.
    """
    if tracking is None or run_id is None:
        return False
    from sslbench.results.tracking import run_status

    return run_status(run_id, tracking_uri=tracking.uri) != "FINISHED"


def _final_metrics(history: list[dict[str, float]], wall: float) -> dict[str, float]:
    if not history:
        return {"final/wall_time_s": wall}
    final = {
        "final/train_loss": history[-1]["train/loss"],
        "final/wall_time_s": wall,
        "final/images_per_s": sum(h["train/images_per_s"] for h in history) / len(history),
    }
    peaks = [h["train/peak_memory_mb"] for h in history if "train/peak_memory_mb" in h]
    if peaks:  # checkpoints written before this metric existed have none
        final["final/peak_memory_mb"] = max(peaks)
    return final


def peak_memory_mb(device: torch.device) -> float:
    """The peak memory so far in MiB: CUDA's peak allocation on ``device``, else the process's
    peak resident set size (on CPU the whole process, data and evaluation included)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _state(cfg: Config, method: Method, optimizer: torch.optim.Optimizer, epoch: int, step: int,
           run_id: str | None, history: list[dict[str, float]], info: Any,
           input_spec: InputSpec, wall_time_s: float, ccrop_boxes: torch.Tensor | None = None,
           monitor_state: dict[str, Any] | None = None) -> dict[str, Any]:
    crop = {} if ccrop_boxes is None else {"ccrop_boxes": ccrop_boxes.cpu()}
    image_size = input_spec.image_size
    wrapper = encoder_spec_of(cfg, input_spec)  # recorded only for wrapped encoders (CMC, CPC v2)
    wrapped = {} if wrapper is None else {"wrapper": wrapper.to_dict()}
    monitoring = {"monitor": monitor_state} if monitor_state else {}  # online curves, head, alarm
    return {
        **crop, **monitoring,
        "config": cfg.to_dict(), "config_hash": cfg.hash(), "epoch": epoch, "global_step": step,
        "finished": epoch >= cfg.train.epochs, "model": method.state_dict(),
        "optimizer": optimizer.state_dict(), "mlflow_run_id": run_id, "history": history,
        "wall_time_s": wall_time_s,
        "encoder": {"backbone": cfg.backbone, "in_chans": info.channels, "image_size": image_size,
                    "dataset": info.name, "mean": list(info.mean), "std": list(info.std),
                    "feature_dim": method.feature_dim, **wrapped},
    }


def view_geometry(params: list[Any], height: int, width: int) -> tuple[ViewGeometry, ...]:
    """Each view's crop boxes as fractions of the source images' side, and its flips.

    Args:
        params: the views' :class:`~sslbench.benchmark.augment.ViewParams` (boxes in pixels).
        height, width: the source images' size.
    """
    scale = torch.tensor((height, width, height, width), dtype=torch.float32)
    return tuple(ViewGeometry(p.boxes.float() / scale.to(p.boxes.device), p.flip.bool()) for p in params)


class _EpochData:
    """The training split un-augmented, for :meth:`Method.on_epoch_start`: normalised float
    images at the training size, in index order, on ``device``."""

    def __init__(self, train: Any, info: Any, image_size: int, device: torch.device) -> None:
        self._train, self._info, self._size, self._device = train, info, image_size, device

    @property
    def num_samples(self) -> int:
        return len(self._train)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from sslbench.benchmark.augment import to_float_normalized

        for batch in self._train.batches(batch_size, shuffle=False):
            images = to_float_normalized(batch.images.to(self._device), self._info.mean, self._info.std,
                                         self._size)
            yield images, batch.indices.to(self._device)


def _check_resumable(state: dict[str, Any], cfg: Config, path: Path) -> None:
    # The hash leaves out the monitor section: monitoring may be switched on, off or changed on resume.
    if state.get("config_hash") != cfg.hash():
        raise CheckpointError(
            f"Checkpoint '{path}' was written by a different configuration (hash "
            f"{state.get('config_hash')} vs {cfg.hash()} now).",
            "Resume with the same recipe and overrides, or start the new config in another "
            "--out folder.",
        )


def _json(d: dict[str, Any]) -> str:
    import json

    return json.dumps(d, indent=2, sort_keys=True, default=str)


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the backbone of an sslbench checkpoint, for evaluation
    (:func:`sslbench.benchmark.encoders.load_any_encoder` also reads plain state dicts).

    Returns:
        The encoder (eval mode) and the checkpoint's ``encoder`` metadata plus ``config``.

    Raises:
        CheckpointError: unreadable, not an sslbench checkpoint, or its weights do not fit its
            declared backbone.
    """
    from sslbench.benchmark.encoders import encoder_from_checkpoint

    state = load_checkpoint(path, map_location=map_location)  # refuses plain state dicts
    encoder, meta = encoder_from_checkpoint(state, path)
    return encoder, {**meta, "config": state.get("config", {}), "epoch": state.get("epoch"),
                     "mlflow_run_id": state.get("mlflow_run_id")}
