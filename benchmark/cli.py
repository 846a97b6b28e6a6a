"""The ``sslbench`` command line.

Every user error is an :class:`SSLBenchError`: printed as one paragraph (no traceback), exit 2.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslbench.benchmark.errors import SSLBenchError

if TYPE_CHECKING:  # imported lazily at run time, to keep `sslbench --help` fast
    import pandas as pd

    from sslbench.benchmark.config import Config
    from sslbench.benchmark.engine import Tracking
    from sslbench.benchmark.sweep import SweepSpec

EXIT_USER_ERROR = 2


#: ``--tracking-uri none`` (any case) turns MLflow off, as ``--no-mlflow`` does.
NO_TRACKING_URI = "none"
#: The subcommands that run without MLflow; the others read their runs back from it.
_TRACKING_OPTIONAL = ("pretrain", "eval")


def _tracking_off(args: argparse.Namespace) -> bool:
    """``--no-mlflow`` or ``--tracking-uri none``: no MLflow at all (it is not even imported)."""
    uri = getattr(args, "tracking_uri", None)
    return bool(getattr(args, "no_mlflow", False)) or (isinstance(uri, str)
                                                       and uri.strip().lower() == NO_TRACKING_URI)


def _tracking(args: argparse.Namespace) -> Tracking | None:
    if _tracking_off(args):
        return None
    from sslbench.benchmark.engine import Tracking

    return Tracking(args.tracking_uri, args.experiment)


def _check_tracking(args: argparse.Namespace) -> None:
    """Refuses MLflow off for a subcommand that cannot run without it, before it starts."""
    if _tracking_off(args) and args.command not in _TRACKING_OPTIONAL:
        raise SSLBenchError(f"`sslbench {args.command}` reads its runs back from MLflow, but "
                            "--tracking-uri none / --no-mlflow turns MLflow off.",
                            f"Drop it, or point --tracking-uri at a store (only {' and '.join(_TRACKING_OPTIONAL)} "
                            "run without MLflow).")


def _add_tracking(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlruns.db)"
                        + ("; 'none': no MLflow at all" if optional else ""))
    p.add_argument("--experiment", default="sslbench", help="MLflow experiment (default: sslbench)")
    if optional:
        p.add_argument("--no-mlflow", action="store_true", help="log nothing (the same as --tracking-uri none)")


def _protocol_names(text: str) -> list[str]:
    """Comma-separated protocol names, each checked against the registry (UnknownNameError)."""
    from sslbench.protocols.spec import get_protocol

    names = [p.strip() for p in text.split(",") if p.strip()]
    for name in names:
        get_protocol(name)
    return names


def _floats(text: str) -> tuple[float, ...]:
    """``"0.485,0.456,0.406"`` -> a tuple of floats (argparse type)."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _set_threads(threads: int) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def cmd_quickstart(args: argparse.Namespace) -> int:
    from sslbench.benchmark.engine import Tracking
    from sslbench.benchmark.quickstart import run_quickstart

    _set_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    run_quickstart(Path(args.out) if args.out else None, methods=methods, seed=args.seed,
                   epochs=args.epochs, overrides=args.set,
                   tracking=Tracking(args.tracking_uri, args.experiment),
                   progress=not args.no_progress)
    return 0


def _folder_classes(args: argparse.Namespace) -> int | None:
    """The class folders of a folder dataset's training split, ``--data-dir``/train (or the
    folder itself when it has no split folders, as the dataset reads it); None when not known."""
    if args.dataset != "imagefolder" or not args.data_dir:
        return None
    root = Path(args.data_dir).expanduser()
    train = root / "train" if (root / "train").is_dir() else root
    if train == root and any((root / s).is_dir() for s in ("val", "test")):
        return None
    try:
        return sum(1 for p in train.iterdir() if p.is_dir()) or None
    except OSError:
        return None


def _folder_image_size(args: argparse.Namespace) -> int | None:
    """The side a folder dataset's images infer (None: not a folder, or not known)."""
    if args.dataset != "imagefolder" or not args.data_dir:
        return None
    from sslbench.benchmark.datasets import infer_folder_image_size
    from sslbench.benchmark.errors import DatasetError

    try:
        return infer_folder_image_size(args.data_dir)[0]
    except (DatasetError, OSError):
        return None  # the data loader reports it, with the fix


def _resolve_cfg(args: argparse.Namespace) -> Config:
    """The config of ``--recipe`` (as given), or of the recipe ``--method`` runs on ``--dataset``
    (:func:`~sslbench.benchmark.recipes.recipe_for`), with the flags and ``--set`` applied; prints
    ``recipe: NAME (why)`` and any note to stderr."""
    from sslbench.benchmark.recipes import quick_recipe_note, recipe_for, resolve

    adapt: tuple[str, ...] = ()
    if args.recipe:
        recipe, reason, note = args.recipe, "--recipe", None
    elif args.method:
        choice = recipe_for(args.method, args.dataset, num_classes=_folder_classes(args),
                            image_size=_folder_image_size(args))
        recipe, reason, adapt, note = choice.recipe, choice.reason, choice.overrides, choice.note
    else:
        raise SSLBenchError("Neither --recipe nor --method was given.",
                            "Pass --recipe NAME (`sslbench recipes`) or --method NAME.")
    overrides = list(args.set)
    for key, value in (("method", args.method), ("data.dataset", args.dataset),
                       ("backbone", args.backbone), ("augment", args.augment),
                       ("data.data_dir", args.data_dir), ("train.epochs", args.epochs),
                       ("train.seed", args.seed), ("data.batch_size", args.batch_size),
                       ("train.device", args.device)):
        if value is not None:
            overrides.insert(0, f"{key}={value}")
    if args.download:
        overrides.insert(0, "data.download=true")
    cfg = resolve(recipe, [*adapt, *overrides])  # the flags and --set win over the adaptation
    print(f"recipe: {recipe} ({reason})", file=sys.stderr)
    if note is None and args.recipe:
        instead = recipe_for(cfg.method, cfg.data.dataset).recipe
        note = quick_recipe_note(recipe, cfg.data.dataset, instead=instead if instead != recipe else None)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return cfg


def cmd_pretrain(args: argparse.Namespace) -> int:
    from sslbench.benchmark.engine import pretrain
    from sslbench.benchmark.evaluate import evaluate_and_log, load_eval_splits

    _set_threads(args.threads)
    protocols = _protocol_names(args.eval)  # fail before training, not after
    cfg = _resolve_cfg(args)
    out = Path(args.out) if args.out else Path("sslbench-runs") / (
        f"{cfg.recipe}-{cfg.hash()[:8]}-s{cfg.train.seed}")
    print(f"Pretraining {cfg.method} ({cfg.recipe}) on {cfg.data.dataset}; run folder {out}", flush=True)
    result = pretrain(cfg, out, resume=args.resume, tracking=_tracking(args),
                      progress=not args.no_progress)
    print(f"Checkpoint: {result.checkpoint}")
    if protocols and result.is_main:  # data-parallel: rank 0 evaluates
        train, test = load_eval_splits(cfg.data.dataset, data_dir=cfg.data.data_dir,
                                       image_size=cfg.data.image_size, device=result.device)
        # one line per evaluation as it finishes (evaluate_and_log's echo)
        evaluate_and_log(result.encoder, protocols=protocols, train=train, test=test,
                         device=result.device, parent_run_id=result.run_id,
                         tags=result.tags, tracking=_tracking(args),
                         progress=not args.no_progress)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sslbench.benchmark.config import config_from_dict
    from sslbench.benchmark.datasets import dataset_info
    from sslbench.benchmark.encoders import fit_to_data, load_any_encoder
    from sslbench.benchmark.engine import identity_tags, resolve_device
    from sslbench.benchmark.evaluate import (
        evaluate_and_log,
        finetune_module,
        load_eval_splits,
        needs_classification_splits,
        projector_layers,
        read_subset,
    )
    from sslbench.results.tracking import provenance_tags

    _set_threads(args.threads)
    protocols = _protocol_names(args.protocol)
    device = resolve_device(args.device)
    encoder, source = load_any_encoder(args.checkpoint, backbone=args.backbone, in_chans=args.in_chans,
                                       image_size=args.image_size, mean=args.mean, std=args.std,
                                       map_location=device)
    dataset = args.dataset or source.dataset
    train = test = None
    if needs_classification_splits(protocols):
        if dataset is None:
            raise SSLBenchError(f"'{args.checkpoint}' is a plain state dict: it does not say which data to "
                                "evaluate on.", "Pass --dataset (`sslbench datasets` lists them).")
        train, test = load_eval_splits(dataset, data_dir=args.data_dir, image_size=source.image_size,
                                       device=device)
    # The weights' own normalisation (checkpoint, --mean/--std, timm's pretrained_cfg), else the
    # evaluation data's; RGB weights on grayscale data get the channel repeated (encoders.py).
    info = train.info if train is not None else dataset_info(
        dataset or ("imagefolder" if source.in_chans == 3 else "fashion-mnist"))
    encoder, normalization, where = fit_to_data(encoder, source, train.info.channels if train is not None else None,
                                                tuple(info.mean), tuple(info.std))
    if source.mean is None and train is not None:
        print(f"note: '{source.backbone}' weights do not say how their inputs were normalised: using "
              f"{info.name}'s mean and std (pass --mean/--std if they were trained with others).", file=sys.stderr)
    options = {"normalization": normalization, "detection_dataset": args.detection_dataset,
               "detection_data_dir": args.detection_data_dir}
    if args.subset:
        if train is None:
            raise SSLBenchError("--subset is for semi-supervised protocols.", "Name one, e.g. --protocol semisup-1pct.")
        options["subset"] = read_subset(args.subset, train)
    layers = projector_layers(protocols)
    if layers:
        if source.kind != "sslbench":
            raise SSLBenchError("Fine-tuning from projector layers needs an sslbench checkpoint (a plain state "
                                "dict holds no projector).", "Use a spec with from_projector_layer=0.")
        options["finetune_encoder"] = finetune_module(args.checkpoint, layers, device)
    if source.kind == "sslbench":
        # The same identity tags as the pretraining run (config hash included), from the stored config.
        tags = identity_tags(config_from_dict(source.config), device)
    else:
        tags = {"method": "external", "recipe": Path(source.path).stem, "dataset": "external",
                "backbone": source.backbone, "source_file": Path(source.path).name,
                "source_sha256": source.sha256, **provenance_tags(str(device))}
    tags["source_normalization"] = where  # logged with the eval runs (a source_ tag)
    tracking, parent = _tracking(args), source.mlflow_run_id
    if parent is not None and tracking is not None:
        from sslbench.results.tracking import run_status

        try:
            run_status(parent, tracking_uri=tracking.uri)
        except SSLBenchError:  # e.g. a checkpoint from a colleague's store: log top-level runs
            print(f"note: the pretraining run {parent} is not in this tracking store; the evaluation runs "
                  "are logged top-level with tag source_pretrain_run_id.", file=sys.stderr)
            tags, parent = {**tags, "source_pretrain_run_id": parent}, None
    # one line per evaluation as it finishes (evaluate_and_log's echo)
    evaluate_and_log(encoder.to(device), protocols=protocols, train=train,
                     test=test, device=device, parent_run_id=parent,
                     tags=tags, tracking=tracking, progress=not args.no_progress, **options)
    return 0


def cmd_subset(args: argparse.Namespace) -> int:
    from sslbench.benchmark.datasets import load_dataset
    from sslbench.protocols.subsets import balanced_subset, save_subset

    train = load_dataset(args.dataset, "train", data_dir=args.data_dir)
    subset = balanced_subset(train.labels.cpu().numpy(), train.info.name, fraction=args.fraction,
                             per_class=args.per_class, seed=args.seed)
    save_subset(subset, args.out)
    print(f"{args.out}: {len(subset.indices)} of {subset.num_samples} '{subset.dataset}' training images "
          f"({subset.spec}, seed {subset.seed}), sha256 {subset.sha256}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from sslbench.results.aggregate import aggregate, load_runs
    from sslbench.results.tables import comparison_table, to_markdown, write_tables

    if args.what == "export":
        return _results_export(args)
    runs, uri = _load_eval_runs(args)
    out = Path(args.out)
    if args.what == "table":
        agg = aggregate(runs, metrics=(args.metric,))
        paths = write_tables(agg, out, stem=args.stem, metric=args.metric)
        print(to_markdown(comparison_table(agg, metric=args.metric)))
        print(f"\nWrote {', '.join(str(p) for p in paths.values())}")
    elif args.what == "plot":
        from sslbench.results.plots import plot_accuracy_vs_batch_size

        images = plot_accuracy_vs_batch_size(runs, out / args.stem, protocol=args.protocol,
                                             metric=args.metric)
        print(f"Wrote {', '.join(str(p) for p in images)}")
    elif args.what == "ablation":
        from sslbench.results.ablation import write_ablation_report
        from sslbench.results.reference import load_reference

        pretrains = load_runs(tracking_uri=args.tracking_uri, experiment=args.experiment, kind="pretrain")
        written = write_ablation_report(runs, pretrains, out, tracking_uri=args.tracking_uri,
                                        protocol=args.protocol, metric=args.metric,
                                        reference=load_reference(), baseline_augment=args.baseline_augment)
        print(f"Wrote {', '.join(str(p) for p in written.values())}")
    else:  # baselines
        from sslbench.results.baselines import baseline_rows, to_csv
        from sslbench.results.reference import load_reference

        recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
        chosen = runs[runs["recipe"].isin(recipes)] if recipes else runs
        rows = baseline_rows(chosen, command=args.command_text, metrics=[args.metric])
        target = Path(args.out)
        if target.suffix != ".csv":
            raise SSLBenchError(f"results baselines writes one CSV file, not '{target}'.",
                                "Pass --out results/reference/sslbench.csv (or another *.csv).")
        from sslbench.benchmark.files import atomic_write_text

        atomic_write_text(target, to_csv(rows))
        load_reference(target.parent)  # the file must pass the schema it will be read with
        print(f"Wrote {len(rows)} baseline rows to {target} (from {uri})")
    return 0


def _results_export(args: argparse.Namespace) -> int:
    from sslbench.results.aggregate import aggregate, export_frame, load_runs

    kind = None if args.kind == "all" else args.kind
    runs = load_runs(tracking_uri=args.tracking_uri, experiment=args.experiment, kind=kind)
    frame = aggregate(runs, metrics=(args.metric,)) if args.aggregated else runs
    path = export_frame(frame, Path(args.out))
    print(f"Wrote {len(frame)} rows to {path}")
    return 0


def _load_eval_runs(args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    """Finished evaluation runs of the store, or the one-paragraph error when there are none."""
    from sslbench.results.aggregate import load_runs
    from sslbench.results.tracking import redact_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    runs = load_runs(tracking_uri=uri, experiment=args.experiment, kind="eval")
    if runs.empty:
        raise SSLBenchError(f"No finished evaluation runs in experiment '{args.experiment}' of "
                            f"{redact_uri(uri)}.",
                            "Run `sslbench quickstart` or `sslbench pretrain --eval ...` first, or "
                            "point --tracking-uri / --experiment at your store.")
    return runs, redact_uri(uri)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from sslbench.results.reference import load_reference
    from sslbench.results.reproduce import NOT_REPRODUCED, counts, reproduce, summary_table, write_report
    from sslbench.results.tables import to_markdown

    runs, uri = _load_eval_runs(args)
    reference = load_reference(extra=[Path(d) for d in args.reference])
    metrics = [m.strip() for m in args.metric.split(",") if m.strip()]
    methods = [m.strip() for m in args.method.split(",") if m.strip()] if args.method else None
    report = reproduce(runs, reference, metrics=metrics, methods=methods)
    print(to_markdown(summary_table(report).drop(columns=["source"])))
    paths = write_report(report, Path(args.out), uri)
    print(", ".join(f"{n} {v}" for v, n in counts(report).items()))
    print(f"Wrote {', '.join(str(p) for p in paths.values())}")
    if args.strict and counts(report)[NOT_REPRODUCED]:
        print("sslbench: --strict: some comparable configurations were not reproduced.", file=sys.stderr)
        return 1
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from sslbench.results.aggregate import load_runs
    from sslbench.results.leaderboard import build_leaderboard, to_markdown_table, write_leaderboard

    runs, uri = _load_eval_runs(args)
    pretrains = load_runs(tracking_uri=args.tracking_uri, experiment=args.experiment, kind="pretrain")
    datasets = [d.strip() for d in args.dataset.split(",") if d.strip()] if args.dataset else None
    frame, columns, primary = build_leaderboard(runs, pretrains, primary=args.rank_by,
                                                datasets=datasets)
    print(to_markdown_table(frame, columns))
    paths = write_leaderboard(frame, columns, primary, Path(args.out), uri)
    print(f"Wrote {', '.join(str(p) for p in paths.values())}")
    return 0


#: The CLI form's sweep name when --name is not given.
_CLI_SWEEP_NAME = "cli-sweep"


def _sweep_spec(args: argparse.Namespace) -> SweepSpec:
    """The sweep from FILE, from the CLI form (--recipe, --axis, --set, --protocols), or, with
    only --name (or --out), the one ``sweep run`` saved in its folder."""
    import dataclasses

    from sslbench.benchmark.sweep import load_sweep, parse_cli_axes, saved_sweep, sweep_from_dict

    if args.file:
        if args.recipe or args.axis:
            raise SSLBenchError("A sweep FILE and --recipe/--axis were both given.",
                                "Use one: the file, or the command-line form.")
        spec = load_sweep(args.file)
    elif args.recipe:
        name = args.name or _CLI_SWEEP_NAME
        axes, fixed = parse_cli_axes(args.axis, args.set)
        raw: dict[str, object] = {"name": name, "recipe": args.recipe, "axes": axes,
                                  "set": fixed, "protocols": _protocol_names(args.protocols)}
        if args.out:
            raw["out"] = args.out
        spec = sweep_from_dict(raw, source=f"--name {name}")
    elif args.name or args.out:
        if args.axis or args.set or args.protocols:
            raise SSLBenchError("--axis, --set and --protocols build a sweep with --recipe; --name alone "
                                "reads a sweep already run.", "Add --recipe NAME, or drop them.")
        spec = saved_sweep(Path(args.out) if args.out else Path("sslbench-sweeps") / args.name)
    else:
        raise SSLBenchError("No sweep file, no --recipe and no --name.",
                            "Pass FILE, --recipe NAME with --axis key=v1,v2 (repeatable), or --name N "
                            "of a sweep `sweep run` has run.")
    if args.file and args.out:  # the folder can be moved for a file's sweep too
        spec = dataclasses.replace(spec, out=Path(args.out))
    if args.tracking_uri or args.experiment:
        spec = dataclasses.replace(spec, tracking_uri=args.tracking_uri or spec.tracking_uri,
                                   experiment=args.experiment or spec.experiment)
    if args.slurm:
        from sslbench.benchmark.sweep import with_slurm_overrides

        spec = with_slurm_overrides(spec, args.slurm)
    return spec


def cmd_sweep(args: argparse.Namespace) -> int:
    from sslbench.benchmark import sweep_run
    from sslbench.benchmark.console import say

    if args.action == "examples":
        return _sweep_examples(args)
    spec = _sweep_spec(args)
    if args.action == "plan":
        print(sweep_run.plan(spec))
    elif args.action == "status":
        print(sweep_run.status_text(spec))
    else:
        _set_threads(args.threads)
        report = sweep_run.run(spec, args.executor, workers=args.workers, wait=args.wait, echo=say,
                               progress=not args.no_progress)
        if report.elsewhere:
            print(f"{len(report.elsewhere)} cell(s) were running in another driver; `sslbench sweep "
                  "status` follows them.", file=sys.stderr)
        if report.failed:
            print(f"{len(report.failed)} cell(s) failed; `sslbench sweep status` shows why.",
                  file=sys.stderr)
            return 1
    return 0


def _sweep_examples(args: argparse.Namespace) -> int:
    """``sweep examples``: the example sweep files shipped with the package; ``examples NAME``
    prints one, ``--out FILE`` copies it (never over an existing file)."""
    from sslbench.benchmark.sweep import example_sweep, example_sweeps

    if not args.file:
        for name, text in example_sweeps().items():
            first = next((line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")), "")
            print(f"{name:18s} {first.rstrip(':')}")
        print("\nPrint one: sslbench sweep examples NAME; copy it to edit: sslbench sweep examples NAME "
              "--out FILE.toml")
        return 0
    text = example_sweep(args.file)
    if not args.out:
        print(text, end="")
        return 0
    target = Path(args.out)
    if target.exists():
        raise SSLBenchError(f"'{target}' already exists.", "Choose another --out; sslbench never overwrites files.")
    from sslbench.benchmark.files import atomic_write_text

    atomic_write_text(target, text)
    print(f"Wrote {target}; run it with: sslbench sweep run {target}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    what = args.command
    if what == "methods":
        print(methods_listing(markdown=args.markdown), end="")
    elif what == "recipes":
        from sslbench.benchmark.recipes import get_recipe, list_recipes

        for name in list_recipes():
            print(f"{name:18s} {get_recipe(name).description}")
    elif what == "datasets":
        from sslbench.benchmark.datasets import dataset_info, list_datasets

        for name in list_datasets():
            i = dataset_info(name)
            print(f"{name:18s} {i.channels}x{i.image_size}x{i.image_size}, {i.num_classes or '?'} "
                  f"classes. {i.source}")
    elif what == "protocols":
        from sslbench.protocols.spec import get_protocol, list_protocols

        for name in list_protocols():
            print(f"{name:18s} {json.dumps(get_protocol(name).to_dict(), sort_keys=True)}")
    elif what == "augmentations":
        from sslbench.benchmark.augment import get_augment_recipe, list_augment_recipes

        for name in list_augment_recipes():
            r = get_augment_recipe(name)
            print(f"{name:18s} {len(r.views)} views. {r.source}")
    elif what == "backbones":
        from sslbench.benchmark.backbones import list_backbones

        print("\n".join(list_backbones()) + "\n(and any timm model name)")
    return 0


def methods_listing(markdown: bool = False) -> str:
    """Every registered method with its family, default recipe and paper: aligned text, or the
    Markdown table the README carries (``sslbench methods --markdown``)."""
    from sslbench.methods import get_method, list_methods

    entries = [get_method(n) for n in list_methods()]
    if markdown:
        lines = ["| method | family | default recipe | paper |", "|---|---|---|---|"]
        for e in entries:
            title, _, url = e.paper.rpartition(", ")
            lines.append(f"| `{e.name}` | {e.family} | `{e.default_recipe}` | [{title}]({url}) |")
        return "\n".join(lines) + "\n"
    w = max(len(e.name) for e in entries)
    f = max(len(e.family) for e in entries)
    return "".join(f"{e.name:{w}s}  {e.family:{f}s}  {e.default_recipe:20s}  {e.paper}\n" for e in entries)


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _resolve_cfg(args)
    print(json.dumps({**cfg.to_dict(), "config_hash": cfg.hash()}, indent=2, sort_keys=True))
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="named recipe (`sslbench recipes`)")
    p.add_argument("--method", help="method; without --recipe, its recipe for --dataset (README: "
                                    "Which recipe runs), else its default recipe")
    p.add_argument("--dataset", help="dataset name (`sslbench datasets`)")
    p.add_argument("--backbone", help="backbone: small-cnn, resnet18-small, ... or any timm model")
    p.add_argument("--augment", help="augmentation recipe (`sslbench augmentations`)")
    p.add_argument("--data-dir", help="where the dataset lives")
    p.add_argument("--download", action="store_true", help="allow torchvision to download the dataset")
    p.add_argument("--epochs", type=int, help="pretraining epochs (train.epochs)")
    p.add_argument("--batch-size", type=int, help="global batch size, over all GPUs (data.batch_size)")
    p.add_argument("--seed", type=int, help="seed of the run (train.seed)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.base_lr=0.3 (repeatable)")


_NO_PROGRESS_HELP = ("no progress bars (they are drawn only on a terminal anyway); the line of each "
                     "finished epoch and evaluation is still printed")
_THREADS_HELP = "torch CPU threads (0: torch's default)"


class _Parser(argparse.ArgumentParser):
    """argparse that names the closest command or choice to a mistyped one."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is None or value in action.choices:
            return
        names = [str(c) for c in action.choices]
        close = difflib.get_close_matches(str(value), names, n=1)
        maybe = f"; did you mean '{close[0]}'?" if close else ""
        if isinstance(action, argparse._SubParsersAction):
            raise argparse.ArgumentError(None, f"unknown command '{value}'{maybe}"
                                         + ("" if close else f" (commands: {', '.join(names)})"))
        raise argparse.ArgumentError(action, f"invalid choice '{value}'{maybe} (choose from {', '.join(names)})")


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of ``command`` (``parser`` itself when it has no such subcommand)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def _unrecognized(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """``unrecognized arguments: ...``, naming the closest option to each mistyped one."""
    options = [o for action in parser._actions for o in action.option_strings]
    hints: dict[str, str] = {}  # mistyped flag -> the closest option
    for extra in extras:
        flag = extra.split("=", 1)[0]
        close = difflib.get_close_matches(flag, options, n=1) if flag.startswith("--") else []
        if close:
            hints[flag] = close[0]
    text = f"unrecognized arguments: {' '.join(extras)}"
    if len(hints) == 1:
        return text + f" (did you mean {next(iter(hints.values()))}?)"
    if hints:
        return text + f" (did you mean {', '.join(f'{v} for {k}' for k, v in hints.items())}?)"
    return text


def build_parser() -> argparse.ArgumentParser:
    from sslbench import __version__

    parser = _Parser(prog="sslbench", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print sslbench's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do (`sslbench COMMAND --help` for its options)")

    p = sub.add_parser("quickstart", help="pretrain SimCLR, MoCo v2, BYOL on the embedded data, "
                                          "evaluate, log, compare")
    p.add_argument("--out", help="output folder (default sslbench-output/quickstart-<time>)")
    p.add_argument("--methods", default="simclr,mocov2,byol",
                   help="methods to pretrain, comma-separated (each with its <method>-quick recipe)")
    p.add_argument("--epochs", type=int, help="override the recipes' epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key in every recipe (repeatable)")
    p.add_argument("--threads", type=int, default=0, help=_THREADS_HELP)
    p.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    _add_tracking(p)
    p.set_defaults(fn=cmd_quickstart)

    p = sub.add_parser("pretrain", help="pretrain one method (optionally evaluate it)")
    _add_run_options(p)
    p.add_argument("--out", help="run folder (default sslbench-runs/<recipe>-<hash>-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--eval", default="", help="protocols to run afterwards, comma-separated "
                                              "(e.g. knn-k200-t0.1,knn-k20-t0.07,linear)")
    p.add_argument("--threads", type=int, default=0, help=_THREADS_HELP)
    p.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    _add_tracking(p, optional=True)
    p.set_defaults(fn=cmd_pretrain)

    p = sub.add_parser("eval", help="evaluate a checkpoint under protocols")
    p.add_argument("checkpoint", help="an sslbench checkpoint (last.pt) or a plain timm / torchvision state dict")
    p.add_argument("--protocol", default="knn-k200-t0.1,knn-k20-t0.07,linear",
                   help="protocols, comma-separated (`sslbench protocols`; default: both kNNs and linear)")
    p.add_argument("--dataset", help="evaluation dataset (default: the pretraining one; another one "
                   "makes a transfer, recorded as eval_dataset)")
    p.add_argument("--data-dir", help="where the evaluation dataset lives")
    p.add_argument("--backbone", help="the backbone of a plain timm / torchvision state dict")
    p.add_argument("--in-chans", type=int, help="input channels of a plain state dict (default 3)")
    p.add_argument("--image-size", type=int, help="input size of a plain state dict (default: timm's for the "
                   "backbone name, else 224)")
    p.add_argument("--mean", type=_floats, help="per-channel mean a plain state dict was trained with, e.g. "
                   "0.485,0.456,0.406 (default: timm's pretrained_cfg for the backbone name, else the data's)")
    p.add_argument("--std", type=_floats, help="per-channel std, with --mean")
    p.add_argument("--subset", help="labelled subset for semisup protocols: an sslbench subset file, or a "
                   "list of training file names (ImageNet's SimCLR 1percent.txt)")
    p.add_argument("--detection-dataset", help="detection dataset (default: the spec's): embedded-detection, embedded-detection-color, "
                   "voc07, voc0712, coco2017, coco-folder")
    p.add_argument("--detection-data-dir", help="where the detection dataset lives")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--threads", type=int, default=0, help=_THREADS_HELP)
    p.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    _add_tracking(p, optional=True)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("subset", help="write a class-balanced labelled subset file (semi-supervised splits)")
    p.add_argument("--dataset", required=True, help="dataset name (`sslbench datasets`)")
    p.add_argument("--data-dir", help="where the dataset lives")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--fraction", type=float, help="e.g. 0.01 for 1 %%")
    group.add_argument("--per-class", type=int, help="images per class")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    p.add_argument("--out", required=True, help="the subset file to write (JSON)")
    p.set_defaults(fn=cmd_subset)

    p = sub.add_parser("results", help="aggregate MLflow runs: tables, plots, ablations, exports",
                       description="table: comparison table (Markdown + CSV); plot: accuracy vs batch "
                                   "size; ablation: batch-size curves with the papers' overlaid, "
                                   "drop-one augmentation table, pairwise heatmap, training curves, "
                                   "accuracy vs compute; export: the run frame (or --aggregated) as "
                                   "CSV or Parquet (by --out's suffix); baselines: sslbench's own "
                                   "reference rows from the runs (results/reference/sslbench.csv).")
    p.add_argument("what", choices=("table", "plot", "ablation", "export", "baselines"),
                   help="table, plot, ablation, export or baselines (see above)")
    p.add_argument("--out", default="sslbench-output",
                   help="folder (table, plot, ablation) or file (export: .csv/.parquet; baselines: .csv)")
    p.add_argument("--stem", default="results", help="table, plot: file name without suffix (default results)")
    p.add_argument("--metric", default="top1", help="the metric to aggregate (default top1)")
    p.add_argument("--protocol", help="plot, ablation: one protocol only")
    p.add_argument("--baseline-augment", help="ablation: the full augmentation recipe the drop-one "
                                              "variants (<recipe>-no-<t>) are compared with")
    p.add_argument("--kind", choices=("eval", "pretrain", "all"), default="eval", help="export: which runs")
    p.add_argument("--aggregated", action="store_true", help="export: mean/std/n over seeds instead of runs")
    p.add_argument("--recipes", default="simclr-quick,mocov2-quick,byol-quick,baseline",
                   help="baselines: the recipes whose runs become baselines")
    p.add_argument("--command-text", default="bash docs/results/regenerate.sh",
                   help="baselines: the command that produced the runs (recorded as the source)")
    _add_tracking(p)
    p.set_defaults(fn=cmd_results)

    p = sub.add_parser("reproduce", help="check MLflow runs against published and baseline numbers",
                       description="Matches each configuration's runs to the closest reference row "
                                   "(method, dataset, backbone, epochs, batch size, protocol) and gives "
                                   "a verdict: reproduced, within tolerance, not reproduced, or not "
                                   "comparable (naming what differs). README: Reading results.")
    p.add_argument("--out", default="sslbench-output", help="folder for reproduce.{md,html,csv}")
    p.add_argument("--metric", default="top1", help="metrics to check, comma-separated (top1,top5)")
    p.add_argument("--method", help="only these methods, comma-separated")
    p.add_argument("--reference", action="append", default=[], metavar="DIR",
                   help="a folder of extra reference CSVs (same schema), added to sslbench's own")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a comparable configuration is not reproduced")
    _add_tracking(p)
    p.set_defaults(fn=cmd_reproduce)

    p = sub.add_parser("leaderboard", help="write the leaderboard: static HTML page + Markdown + CSV")
    p.add_argument("--out", default="sslbench-output", help="folder for leaderboard.{html,md,csv}")
    p.add_argument("--dataset", help="only these pretraining datasets, comma-separated")
    p.add_argument("--rank-by", help="protocol to rank by (default: linear, else a kNN)")
    _add_tracking(p)
    p.set_defaults(fn=cmd_leaderboard)

    p = sub.add_parser("config", help="print the resolved config of a recipe + overrides")
    _add_run_options(p)
    p.set_defaults(fn=cmd_config)

    p = sub.add_parser("sweep", help="plan, run and follow a grid of runs (locally or on SLURM)",
                       description="A sweep is a base recipe plus axes (README: Running sweeps). "
                                   "Give a FILE (.toml/.yaml) or the command-line form.")
    p.add_argument("action", choices=("plan", "run", "status", "examples"),
                   help="plan (cells, cost; submits nothing), run, status, or examples (the example "
                        "sweep files shipped with sslbench)")
    p.add_argument("file", nargs="?", help="sweep file (.toml or .yaml); examples: the example's name")
    p.add_argument("--recipe", help="CLI form: the base recipe")
    p.add_argument("--axis", action="append", default=[], metavar="KEY=V1,V2",
                   help="CLI form: an axis, e.g. --axis method=simclr,byol --axis batch_size=64,128")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="CLI form: a fixed override for every cell")
    p.add_argument("--protocols", default="", help="CLI form: protocols after each pretraining")
    p.add_argument("--name", help=f"CLI form: the sweep's name (default {_CLI_SWEEP_NAME}); alone: the sweep "
                                  "`sweep run` saved in sslbench-sweeps/<name>, e.g. sweep status --name N")
    p.add_argument("--out", help="the sweep folder (default: the file's `out`, else sslbench-sweeps/<name>); "
                                 "examples: copy the example to this file")
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="run: local (here, cell by cell) or slurm (one job array; default local)")
    p.add_argument("--workers", type=int, help="local: cells at once (subprocesses when > 1)")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="override a [slurm] setting, e.g. --slurm partition=gpu --slurm time_min=30")
    p.add_argument("--wait", action="store_true", help="slurm: wait until the jobs have left the queue")
    p.add_argument("--threads", type=int, default=0, help=_THREADS_HELP)
    p.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (overrides the file)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (overrides the file)")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("methods", help="list methods: family, default recipe, paper")
    p.add_argument("--markdown", action="store_true", help="as the README's Markdown table")
    p.set_defaults(fn=cmd_list)
    for name in ("recipes", "datasets", "protocols", "augmentations", "backbones"):
        sub.add_parser(name, help=f"list {name}").set_defaults(fn=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sslbench`` console script."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # the subcommand's usage, not the top level's (exits 2)
        command = _subparser(parser, args.command)
        command.error(_unrecognized(command, extras))
    try:
        _check_tracking(args)
        return int(args.fn(args) or 0)
    except SSLBenchError as exc:
        print(f"sslbench: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("sslbench: interrupted; finished epochs are checkpointed (resume with --resume).",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
