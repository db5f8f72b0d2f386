"""The sub-commands of `unmask`, one module per group: ``prepare`` (prepare, synth), ``train``
(train, evaluate, tune, models), ``check`` (check, serve, sample) and ``dataset`` (dataset fetch,
dataset check). Each command is a thin layer: parse its arguments, call the library (``unmask.api``
for checking), print, return the exit code; ``unmask.cli`` gathers them and turns errors into one line.

What the groups share is here: the exit codes, the registry each group fills, the argument types
(a bad value is one usage line, not a traceback) and the cluster options. A group imports what its
commands run only when they run, so `unmask --help` stays quick.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

EXIT_OK, EXIT_NOTHING_DONE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
"""What `unmask` returns (``unmask.cli``'s docstring says when)."""

Runner = Callable[[argparse.Namespace], int]
Setup = Callable[[argparse.ArgumentParser], Runner]


class Commands(dict[str, Setup]):
    """One group's commands, by name, in the order `unmask --help` lists them. A command's set-up
    adds its arguments to its parser and returns the function that runs it; its docstring is the help."""

    def register(self, name: str) -> Callable[[Setup], Setup]:
        def decorator(setup: Setup) -> Setup:
            self[name] = setup
            return setup

        return decorator


def csv_list(text: str) -> list[str]:
    """An argparse type: comma-separated items, blanks dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def ranged(convert: Callable[[str], float], low: float, high: float | None = None, above: bool = False):
    """An argparse type: ``convert`` the text, then check ``low <= value <= high`` (``above``:
    strictly over ``low``), so a bad number is one clear usage line."""
    def parse(text: str):
        value = convert(text)
        if (value <= low if above else value < low) or (high is not None and value > high):
            wanted = (f"over {low}" if above else f"at least {low}") if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
        return value

    parse.__name__ = convert.__name__  # argparse names the type in its "invalid ... value" message
    return parse


positive_int = ranged(int, 1)
probability = ranged(float, 0.0, 1.0)
positive_float = ranged(float, 0.0, above=True)
port_number = ranged(int, 0, 65535)


def print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the work runs: local processes (default), an existing Dask cluster, or a batch queue."""
    group = parser.add_argument_group("cluster", "run on Dask: local processes by default (see docs/cluster.md)")
    group.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://head:8786")
    group.add_argument("--cluster", choices=("slurm", "lsf", "pbs"),
                       help="submit Dask workers as batch jobs (dask-jobqueue)")
    group.add_argument("--jobs", type=positive_int, help="with --cluster: how many batch jobs (default: 1)")
    group.add_argument("--cluster-config", type=Path, metavar="FILE",
                       help="with --cluster: YAML/JSON job options (cores, memory, walltime, queue, account, "
                            "job_extra_directives, ...)")


def cluster_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``unmask.distributed.cluster_client`` from ``add_cluster_arguments``'s options."""
    return {"scheduler": args.scheduler, "cluster": args.cluster, "jobs": args.jobs,
            "config_file": args.cluster_config}
