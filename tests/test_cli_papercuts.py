"""The command line's small courtesies: --version, suggestions for typos, the subcommand's usage
for an unknown flag, help on every option, saved sweeps by name, the example sweeps."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

import sslbench
from sslbench.benchmark.cli import build_parser, main
from sslbench.benchmark.sweep import (
    example_sweeps,
    expand,
    save_sweep,
    saved_sweep,
    sweep_from_dict,
    sweep_to_dict,
)


def _exit(capsys, *argv):
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_version(capsys):
    code, out, _ = _exit(capsys, "--version")
    assert code == 0 and out.strip() == f"sslbench {sslbench.__version__}"


def test_a_mistyped_command_names_the_closest_one(capsys):
    code, _, err = _exit(capsys, "pretrian", "--recipe", "simclr-quick")
    assert code == 2
    assert "sslbench: error: unknown command 'pretrian'; did you mean 'pretrain'?" in err
    assert err.startswith("usage: sslbench")
    code, _, err = _exit(capsys, "zzzz")
    assert code == 2 and "unknown command 'zzzz' (commands: quickstart, pretrain" in err


def test_a_mistyped_choice_names_the_closest_one(capsys):
    code, _, err = _exit(capsys, "sweep", "stauts", "--name", "x")
    assert code == 2 and "invalid choice 'stauts'; did you mean 'status'?" in err
    assert "usage: sslbench sweep" in err


def test_an_unknown_flag_prints_the_subcommands_usage(capsys):
    code, _, err = _exit(capsys, "pretrain", "--recipe", "simclr-quick", "--epcohs", "2")
    assert code == 2
    assert err.startswith("usage: sslbench pretrain "), err
    assert "sslbench pretrain: error: unrecognized arguments: --epcohs 2 (did you mean --epochs?)" in err
    code, _, err = _exit(capsys, "pretrain", "--epcohs", "2", "--sed", "1")
    assert code == 2 and "(did you mean --epochs for --epcohs, --seed for --sed?)" in err


def _parsers(parser: argparse.ArgumentParser, name: str = "sslbench"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {command}")


def test_every_option_and_command_has_help():
    missing = []
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{name} {a.dest}" for a in action._choices_actions if not a.help]
    assert not missing, missing


def test_example_sweeps_are_listed_printed_and_copied(tmp_path, capsys):
    assert {"quick-batch", "readme-ablation", "readme-baselines"} <= set(example_sweeps())
    assert main(["sweep", "examples"]) == 0
    listing = capsys.readouterr().out
    assert "quick-batch" in listing and "A batch-size ablation" in listing
    assert main(["sweep", "examples", "quick-batch"]) == 0
    text = capsys.readouterr().out
    assert text == example_sweeps()["quick-batch"] and 'name = "quick-batch"' in text
    copy = tmp_path / "mine.toml"
    assert main(["sweep", "examples", "quick-batch.toml", "--out", str(copy)]) == 0
    assert copy.read_text() == text
    assert main(["sweep", "examples", "quick-batch", "--out", str(copy)]) == 2  # never over a file
    assert "already exists" in capsys.readouterr().err
    assert main(["sweep", "examples", "quick-bach"]) == 2
    assert "Did you mean 'quick-batch'?" in capsys.readouterr().err
    # every example is a valid sweep (plan expands it without running anything)
    from sslbench.benchmark.sweep import load_sweep

    for name, body in example_sweeps().items():
        (tmp_path / f"{name}.toml").write_text(body)
        assert expand(load_sweep(tmp_path / f"{name}.toml"))


def _spec(tmp_path: Path, **over: object):
    raw: dict[str, object] = {
        "name": "named", "recipe": "simclr-quick", "protocols": ["knn-k20-t0.07"],
        "set": {"data.dataset": "synthetic", "train.epochs": 1}, "axes": {"seed": [0, 1], "batch_size": [32]},
        "exclude": [{"seed": 1, "batch_size": 64}], "include": [{"seed": 0, "method.temperature": 0.2}],
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlruns.db'}"},
        "slurm": {"partition": "gpu", "setup": ["module load cuda"], "additional": {"mail-type": "FAIL"},
                  "mem_gb": 8}, "local": {"workers": 2}}
    raw.update(over)
    return sweep_from_dict(raw)


def test_a_saved_sweep_reads_back_the_same(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _spec(tmp_path)
    again = sweep_from_dict(sweep_to_dict(spec))
    assert [c.config_hash for c in expand(again)] == [c.config_hash for c in expand(spec)]
    assert (again.slurm, again.local, again.tracking_uri) == (spec.slurm, spec.local, spec.tracking_uri)
    assert again.sweep_dir == spec.sweep_dir.resolve()
    save_sweep(spec)
    assert [c.id for c in expand(saved_sweep(Path("sslbench-sweeps/named")))] == [c.id for c in expand(spec)]


def test_sweep_status_by_name_needs_no_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    save_sweep(_spec(tmp_path))  # what `sweep run` does first
    assert main(["sweep", "status", "--name", "named"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Sweep 'named': 2 cells") and "2 pending" in out
    assert main(["sweep", "status", "--out", str(tmp_path / "sslbench-sweeps" / "named")]) == 0
    assert "2 pending" in capsys.readouterr().out
    assert main(["sweep", "status", "--name", "never-run"]) == 2
    assert "No sweep was run in" in capsys.readouterr().err
    assert main(["sweep", "status", "--name", "named", "--axis", "seed=1,2"]) == 2
    assert "--recipe" in capsys.readouterr().err


def test_toml_reader_on_every_supported_python():
    """Python 3.10 has no tomllib: the tomli package (the same parser) is a dependency there."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    assert 'tomli>=2; python_version < "3.11"' in project["dependencies"]
    source = (root / "benchmark" / "sweep.py").read_text()
    assert "import tomli as tomllib" in source
