"""Sweep files: a base recipe, axes, include/exclude rules and protocols -> a list of cells.

A sweep is data, validated at the boundary. Each cell resolves to a full :class:`Config` whose
hash (stable, blind to paths, workers and device) is the cell's identity in MLflow: a finished
cell is one whose pretraining run and every protocol's evaluation run are FINISHED under that
hash, whichever sweep launched them. The same file runs on a laptop (``--executor local``) or
on SLURM (``--executor slurm``, settings under ``[slurm]``).

Example (TOML; YAML with the same keys also works)::

    name = "quick-grid"
    recipe = "simclr-quick"          # the base; a `method` axis switches to <method>-quick
    protocols = ["knn-k200-t0.1", "linear"]

    [set]                            # fixed overrides for every cell
    "train.epochs" = 5

    [axes]                           # the grid: every combination is a cell
    method = ["simclr", "byol"]
    batch_size = [128, 256]
    seed = [0, 1]

    [[exclude]]                      # drop the cells that match all of these keys
    method = "byol"
    batch_size = 128

    [[include]]                      # adds keys to the cells whose axis values it matches:
    method = "byol"                  # here a BYOL-only hyperparameter
    "method.pred_hidden_dim" = 1024

    [[include]]                      # matches no cell: a cell of its own
    method = "simclr"
    batch_size = 512
    seed = 0

    [slurm]
    partition = "gpu"
    time_min = 120
    gpus_per_node = 1
    array_parallelism = 8
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslbench.benchmark.config import Config
from sslbench.benchmark.errors import ConfigError, SSLBenchError, UnknownNameError

#: Short axis names for the keys swept most often; any full config key also works.
AXIS_ALIASES: dict[str, str] = {
    "batch_size": "data.batch_size",
    "dataset": "data.dataset",
    "seed": "train.seed",
    "epochs": "train.epochs",
    "lr": "optim.base_lr",
    "base_lr": "optim.base_lr",
}
#: Written into the sweep folder by ``sweep run``: the sweep as validated, so that
#: ``sslbench sweep status --name N`` needs neither the file nor the command line again.
SPEC_FILE = "sweep.json"
_TOP_KEYS = {"name", "recipe", "protocols", "set", "axes", "include", "exclude", "out", "tracking",
             "slurm", "local"}


@dataclass(frozen=True)
class SlurmSettings:
    """Resources of one cell's SLURM job (no cluster paths here: they come from the sweep file).

    Attributes:
        partition, account, qos, constraint: passed to sbatch when set.
        time_min: the job's time limit; a job that reaches it checkpoints and requeues itself.
        nodes: nodes per cell; ``tasks_per_node`` defaults to ``gpus_per_node`` (one task per GPU).
        gpus_per_node: GPUs per node (0 on CPU clusters).
        cpus_per_task: CPU cores per task.
        mem_gb: memory per node (0: the cluster's default).
        array_parallelism: at most this many cells of the array run at once.
        max_requeues: timeouts after which a cell stops requeueing itself.
        signal_delay_s: how long before the time limit SLURM sends the checkpoint signal.
        setup: shell lines run before the job (e.g. ``["module load cuda/12.4"]``).
        additional: extra ``#SBATCH`` options (e.g. ``{"mail-type": "FAIL"}``).
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int = 60
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    cpus_per_task: int = 2
    mem_gb: float = 0
    array_parallelism: int = 16
    max_requeues: int = 3
    signal_delay_s: int = 120
    setup: tuple[str, ...] = ()
    additional: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("time_min", "nodes", "cpus_per_task", "array_parallelism"):
            if getattr(self, name) < 1:
                raise ValueError(f"slurm.{name} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0 or self.mem_gb < 0 or self.max_requeues < 0:
            raise ValueError("slurm.gpus_per_node, mem_gb and max_requeues must be >= 0")

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)


@dataclass(frozen=True)
class LocalSettings:
    """The local executor.

    Attributes:
        workers: cells run at once (1: in this process, one after another; more: subprocesses).
        threads: torch CPU threads per cell (0: torch's default).
    """

    workers: int = 1
    threads: int = 0

    def __post_init__(self) -> None:
        if self.workers < 1 or self.threads < 0:
            raise ValueError("local.workers must be >= 1 and local.threads >= 0")


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep (see the module docstring for the file format)."""

    name: str
    recipe: str
    protocols: tuple[str, ...]
    fixed: Mapping[str, Any]
    axes: Mapping[str, tuple[Any, ...]]
    include: tuple[Mapping[str, Any], ...] = ()
    exclude: tuple[Mapping[str, Any], ...] = ()
    out: Path | None = None
    tracking_uri: str | None = None
    experiment: str = "sslbench"
    slurm: SlurmSettings = SlurmSettings()
    local: LocalSettings = LocalSettings()
    source: str = "<cli>"

    @property
    def sweep_dir(self) -> Path:
        """Where checkpoints, cell files, logs and submitit folders of this sweep live."""
        return self.out if self.out is not None else Path("sslbench-sweeps") / self.name


@dataclass(frozen=True)
class Cell:
    """One point of the grid.

    Attributes:
        id: ``<method>-b<batch>-s<seed>-<hash8>``: unique in its sweep, readable in squeue.
        config: the resolved config; ``config.hash()`` is the cell's identity in MLflow.
        protocols: evaluations to run after pretraining.
        assignment: the axis values (and include keys) that made this cell.
        run_dir: its run folder (checkpoint, config.json, cell.json).
    """

    id: str
    config: Config
    protocols: tuple[str, ...]
    assignment: Mapping[str, Any]
    run_dir: Path

    @property
    def config_hash(self) -> str:
        return self.config.hash()


# --- Loading ----------------------------------------------------------------------------------
def load_sweep(path: str | Path) -> SweepSpec:
    """Reads and validates a sweep file (``.toml``, ``.yaml`` or ``.yml``).

    Raises:
        SSLBenchError: missing or unparsable file, unknown keys, wrong types, an empty grid.
    """
    path = Path(path)
    if not path.is_file():
        raise SSLBenchError(f"Sweep file '{path}' does not exist.",
                            "Pass the path of a .toml or .yaml sweep file (README: Running sweeps).")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # Python 3.10: the same parser, as the tomli package (a dependency there)
                import tomli as tomllib

            raw: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raise SSLBenchError(f"Sweep file '{path}' is neither .toml nor .yaml.",
                                "Rename it with the extension of its format.")
    except SSLBenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - tomllib/yaml raise their own error types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SSLBenchError(f"Sweep file '{path}' is not valid {path.suffix[1:].upper()}: {first}.",
                            "Fix the syntax at the position given.") from None
    if not isinstance(raw, dict):
        raise SSLBenchError(f"Sweep file '{path}' does not hold a table of settings.",
                            "Start from the example in the README's 'Running sweeps'.")
    spec = sweep_from_dict(raw, source=str(path))
    if spec.out is not None and not spec.out.is_absolute():  # relative to the sweep file
        spec = dataclasses.replace(spec, out=(path.parent / spec.out))
    return spec


def example_sweeps() -> dict[str, str]:
    """The example sweep files shipped inside the package (``benchmark/sweeps/*.toml``, package
    data): name -> TOML text."""
    from importlib.resources import files

    folder = files("sslbench.benchmark").joinpath("sweeps")
    return {f.name.removesuffix(".toml"): f.read_text(encoding="utf-8")
            for f in sorted(folder.iterdir(), key=lambda f: f.name) if f.name.endswith(".toml")}


def example_sweep(name: str) -> str:
    """One example sweep file's text (``name`` with or without ``.toml``).

    Raises:
        UnknownNameError: no such example (listing the ones there are).
    """
    from sslbench.benchmark.errors import unknown_name

    examples = example_sweeps()
    key = name.removesuffix(".toml")
    if key not in examples:
        raise unknown_name("example sweep", name, examples, "`sslbench sweep examples` lists them.")
    return examples[key]


def sweep_to_dict(spec: SweepSpec) -> dict[str, Any]:
    """``spec`` as the table a sweep file holds (:func:`sweep_from_dict` gives it back), with the
    folder made absolute."""
    def settings(obj: Any) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v)
                for k, v in dataclasses.asdict(obj).items() if v is not None}

    tracking: dict[str, Any] = {"experiment": spec.experiment}
    if spec.tracking_uri is not None:
        tracking["uri"] = spec.tracking_uri
    return {"name": spec.name, "recipe": spec.recipe, "protocols": list(spec.protocols),
            "set": dict(spec.fixed), "axes": {k: list(v) for k, v in spec.axes.items()},
            "include": [dict(r) for r in spec.include], "exclude": [dict(r) for r in spec.exclude],
            "out": str(spec.sweep_dir.resolve()), "tracking": tracking,
            "slurm": settings(spec.slurm), "local": settings(spec.local)}


def save_sweep(spec: SweepSpec) -> Path:
    """Writes ``<sweep folder>/sweep.json`` (:data:`SPEC_FILE`) and returns its path."""
    from sslbench.benchmark.files import atomic_write_text

    return atomic_write_text(spec.sweep_dir / SPEC_FILE,
                             json.dumps(sweep_to_dict(spec), indent=2, sort_keys=True, default=str) + "\n")


def saved_sweep(sweep_dir: str | Path) -> SweepSpec:
    """The sweep that ``sweep run`` saved into ``sweep_dir`` (:func:`save_sweep`).

    Raises:
        SSLBenchError: no saved sweep there, or one that no longer validates.
    """
    path = Path(sweep_dir) / SPEC_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise SSLBenchError(f"No sweep was run in '{sweep_dir}' (it has no {SPEC_FILE}).",
                            "Give the sweep FILE (or the command-line form) once more, or --out the "
                            "sweep's folder; `sweep run` saves the sweep there.") from None
    except (OSError, ValueError) as exc:
        raise SSLBenchError(f"Cannot read '{path}' ({exc}).",
                            "Give the sweep FILE again; the next `sweep run` rewrites it.") from None
    return sweep_from_dict(raw, source=str(path))


def sweep_from_dict(raw: Mapping[str, Any], *, source: str = "<cli>") -> SweepSpec:
    """Validates a parsed sweep (file or CLI) into a :class:`SweepSpec`.

    Raises:
        SSLBenchError: unknown keys, wrong types, bad names, an empty grid.
    """
    where = f"sweep '{source}'"
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"Unknown key(s) {', '.join(unknown)} in {where}.",
                          f"Valid top-level keys: {', '.join(sorted(_TOP_KEYS))}.")
    recipe = _typed(raw, "recipe", str, where, required=True)
    name = _typed(raw, "name", str, where) or Path(source).stem
    if not name or any(c in name for c in "/\\ '\""):
        raise ConfigError(f"Sweep name '{name}' in {where} is empty or has '/', spaces or quotes.",
                          "Use letters, digits, '-', '_' and '.'.")
    protocols = _typed(raw, "protocols", list, where) or []
    if not all(isinstance(p, str) for p in protocols):
        raise ConfigError(f"'protocols' in {where} must be a list of names.",
                          "E.g. protocols = [\"knn-k200-t0.1\", \"linear\"].")
    from sslbench.protocols.spec import PROTOCOL_ALIASES

    protocols = [PROTOCOL_ALIASES.get(p, p) for p in protocols]  # "semisup" -> its default spec's name
    fixed = dict(_typed(raw, "set", dict, where) or {})
    axes_raw = _typed(raw, "axes", dict, where) or {}
    axes: dict[str, tuple[Any, ...]] = {}
    for key, values in axes_raw.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"Axis '{key}' in {where} must be a non-empty list of values.",
                              f"E.g. {key} = [value1, value2].")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(f"Axis '{key}' in {where} repeats a value.", "List each value once.")
        axes[key] = tuple(values)
    rules = {}
    for rule in ("include", "exclude"):
        entries = _typed(raw, rule, list, where) or []
        if not all(isinstance(e, dict) and e for e in entries):
            raise ConfigError(f"Every '{rule}' entry in {where} must be a non-empty table.",
                              f"Write [[{rule}]] tables of key = value (TOML) or a list of mappings.")
        rules[rule] = tuple(dict(e) for e in entries)
    tracking = _typed(raw, "tracking", dict, where) or {}
    bad = sorted(set(tracking) - {"uri", "experiment"})
    if bad:
        raise ConfigError(f"Unknown tracking key(s) {', '.join(bad)} in {where}.",
                          "Valid: uri, experiment (credentials come from the environment).")
    out = _typed(raw, "out", str, where)
    spec = SweepSpec(
        name=name, recipe=recipe, protocols=tuple(protocols), fixed=fixed, axes=axes,
        include=rules["include"], exclude=rules["exclude"], out=Path(out) if out else None,
        tracking_uri=tracking.get("uri"), experiment=tracking.get("experiment", "sslbench"),
        slurm=_settings(SlurmSettings, raw.get("slurm", {}), "slurm", where),
        local=_settings(LocalSettings, raw.get("local", {}), "local", where), source=source,
    )
    expand(spec)  # validates every cell now, not halfway through a sweep
    return spec


def _typed(raw: Mapping[str, Any], key: str, kind: type, where: str, required: bool = False) -> Any:
    if key not in raw:
        if required:
            raise ConfigError(f"{where} has no '{key}'.", f"Add {key} = ... (see README: Running sweeps).")
        return None
    value = raw[key]
    if not isinstance(value, kind):
        raise ConfigError(f"'{key}' in {where} must be a {kind.__name__}, got {type(value).__name__} "
                          f"{value!r}.", "Fix its type (README: Running sweeps).")
    return value


def _settings(cls: type, raw: Any, section: str, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{section}] in {where} must be a table.", f"Write [{section}] key = value.")
    from sslbench.benchmark.config import coerce

    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"Unknown [{section}] key(s) {', '.join(unknown)} in {where}.",
                          f"Valid: {', '.join(fields)}.")
    import typing

    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "additional":
            if not isinstance(value, dict):
                raise ConfigError(f"{section}.additional in {where} must be a table.",
                                  "E.g. additional = { mail-type = \"FAIL\" }.")
            values[key] = {str(k): str(v) for k, v in value.items()}
        elif key == "setup":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{section}.setup in {where} must be a list of shell lines.",
                                  "E.g. setup = [\"module load cuda\"].")
            values[key] = tuple(value)
        else:
            values[key] = coerce(f"{section}.{key}", value, hints[key])
    try:
        return cls(**values)
    except ValueError as exc:
        raise ConfigError(f"Invalid [{section}] in {where}: {exc}.", "Fix the value.") from None


# --- Expansion --------------------------------------------------------------------------------
def expand(spec: SweepSpec) -> list[Cell]:
    """Every cell of the sweep, in a stable order (axes' product, then includes), deduplicated.

    ``exclude`` entries drop the combinations that match all their keys (axes only). An
    ``include`` entry that matches existing combinations on its axis keys adds its other keys to
    them (e.g. a hyperparameter that only one method has); one that matches none is a new cell.

    Raises:
        SSLBenchError: a value a cell rejects (unknown key, method, recipe; wrong type), an
            exclude rule naming a key that is not an axis, or no cell at all.
    """
    where = f"sweep '{spec.source}'"
    for rule in spec.exclude:
        unknown = sorted(set(rule) - set(spec.axes))
        if unknown:
            raise ConfigError(f"An exclude rule in {where} names {', '.join(unknown)}, which "
                              "is not an axis.", f"Axes: {', '.join(spec.axes) or '(none)'}.")
    assignments: list[dict[str, Any]] = []
    keys = list(spec.axes)
    for combo in itertools.product(*(spec.axes[k] for k in keys)):
        a = dict(zip(keys, combo, strict=True))
        if not any(all(a.get(k) == v for k, v in rule.items()) for rule in spec.exclude):
            assignments.append(a)
    for rule in spec.include:  # GitHub-Actions-matrix semantics
        on_axes = {k: v for k, v in rule.items() if k in spec.axes}
        matches = [a for a in assignments if on_axes and all(a.get(k) == v for k, v in on_axes.items())]
        if matches:  # extends every cell it matches with its other keys
            for a in matches:
                a.update(rule)
        else:  # matches none: a cell of its own
            assignments.append(dict(rule))
    _check_protocols(spec.protocols)
    cells: list[Cell] = []
    seen: set[str] = set()
    for a in assignments:
        cfg = resolve_cell(spec.recipe, {**spec.fixed, **a}, where)
        h = cfg.hash()
        if h in seen:
            continue
        seen.add(h)
        cell_id = f"{cfg.method}-b{cfg.data.batch_size}-s{cfg.train.seed}-{h[:8]}"
        cells.append(Cell(cell_id, cfg, spec.protocols, a, spec.sweep_dir / "cells" / cell_id))
    if not cells:
        raise ConfigError(f"{where} has no cells: its exclude rules remove every combination.",
                          "Loosen the exclude rules or add axes values / include entries.")
    return cells


def resolve_cell(base_recipe: str, values: Mapping[str, Any], where: str) -> Config:
    """The config of one cell: its recipe (a ``method`` value switches the base recipe to that
    method's recipe of the same tier, e.g. ``simclr-quick`` -> ``byol-quick``) plus overrides."""
    from sslbench.benchmark.recipes import get_recipe, list_recipes, resolve

    values = dict(values)
    recipe = str(values.pop("recipe", base_recipe))
    method = values.pop("method", None)
    if method is not None:
        from sslbench.methods import get_method

        get_method(str(method))  # an unknown method: the registry's error, listing the valid ones
        base_method = get_recipe(recipe).config.method
        tier = recipe[len(base_method):] if recipe.startswith(base_method + "-") else None
        candidate = f"{method}{tier}" if tier else None
        if candidate is not None and candidate in list_recipes():
            recipe = candidate
        elif method != base_method:
            raise ConfigError(
                f"{where}: method '{method}' has no recipe like '{recipe}' to take its "
                "hyperparameters from.",
                f"Sweep a 'recipe' axis instead, or add it (recipes: {', '.join(list_recipes())}).")
    overrides = {AXIS_ALIASES.get(k, k): v for k, v in values.items()}
    try:
        return resolve(recipe, overrides)
    except UnknownNameError:
        raise
    except SSLBenchError as exc:
        raise ConfigError(f"{where}: {exc.problem}", exc.fix) from None


def _check_protocols(protocols: Sequence[str]) -> None:
    from sslbench.protocols.spec import get_protocol

    for name in protocols:
        get_protocol(name)


def with_slurm_overrides(spec: SweepSpec, overrides: Sequence[str]) -> SweepSpec:
    """``spec`` with ``key=value`` overrides of its ``[slurm]`` settings (``--slurm``), validated
    like the file's (``setup=...`` is one shell line)."""
    from sslbench.benchmark.config import parse_override

    merged: dict[str, Any] = {f.name: getattr(spec.slurm, f.name)
                              for f in dataclasses.fields(SlurmSettings)}
    merged["setup"], merged["additional"] = list(spec.slurm.setup), dict(spec.slurm.additional)
    for key, value in map(parse_override, overrides):
        merged[key] = [value] if key == "setup" else value
    return dataclasses.replace(spec, slurm=_settings(SlurmSettings, merged, "slurm", "--slurm"))


def parse_cli_axes(axes: Sequence[str], fixed: Sequence[str]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """``--axis key=v1,v2`` and ``--set key=value`` as a sweep's ``axes`` and ``set`` tables.

    Values are parsed as JSON where they can be (numbers, true/false), else kept as strings.
    """
    from sslbench.benchmark.config import parse_override

    def value(text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    out: dict[str, list[Any]] = {}
    for item in axes:
        key, raw = parse_override(item)
        out[key] = [value(v.strip()) for v in raw.split(",") if v.strip()]
    return out, {k: value(v) for k, v in map(parse_override, fixed)}
