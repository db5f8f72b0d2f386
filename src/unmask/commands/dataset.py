"""`unmask dataset fetch` and `unmask dataset check`: get FaceForensics++ whole, and know when it is."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unmask.commands import (
    EXIT_NOTHING_DONE, EXIT_OK, Commands, csv_list, positive_float, positive_int, print_json, ranged,
)
from unmask.errors import UnmaskError

COMMANDS = Commands()


@COMMANDS.register("dataset")
def _dataset_command(parser: argparse.ArgumentParser):
    """Get FaceForensics++ whole: check a download against the official lists, or finish it with the official script."""
    from unmask.dataset_check import CORE_DATASETS, DATASET_FOLDERS
    from unmask.dataset_fetch import SERVERS, FetchSettings

    names = ", ".join(DATASET_FOLDERS)
    actions = parser.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="what is missing, broken or stray in a FaceForensics++ download (exit 1 if not complete)",
        description="Count the videos of a FaceForensics++ download against the official lists (per official "
                    "split), and find the empty, unreadable and truncated ones. Exit 0 when complete, 1 when "
                    "something is missing or broken, 2 on bad input.")
    check.add_argument("root", type=Path, help="the download's root folder (holding original_sequences/ ...)")
    check.add_argument("--method", type=csv_list, help=f"datasets, comma separated, or all: {names} (default: "
                       "the five of FF++, and any other that has a folder)")
    check.add_argument("--compression", type=csv_list,
                       help="raw,c23,c40, comma separated (default: those with anything downloaded)")
    check.add_argument("--list-missing", action="store_true", help="name every missing file, not the first few")
    check.add_argument("--workers", type=positive_int, default=2, help="files read at once (default: 2)")
    check.add_argument("--splits", type=Path, metavar="DIR",
                       help="train/val/test.json to expect instead of the official lists (shipped with unmask)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(dataset_handler=_run_dataset_check)

    defaults = FetchSettings()
    fetch = actions.add_parser(
        "fetch", help="run your official download script until the download is complete, then check it",
        description="Run the official FaceForensics++ download script (sent by the authors to those who accept "
                    "the terms through their form) once per dataset and compression, with retries, back-off, a "
                    "change of server after repeated failures and removal of partial files; then `dataset check`. "
                    "Re-running, or running after Ctrl+C, resumes.")
    fetch.add_argument("root", type=Path, help="the download's root folder (created if absent)")
    fetch.add_argument("--script", type=Path, required=True, help="your copy of the official download script")
    fetch.add_argument("--method", type=csv_list, default=list(CORE_DATASETS),
                       help=f"datasets, comma separated, or all: {names} (default: {','.join(CORE_DATASETS)})")
    fetch.add_argument("--compression", type=csv_list, default=["c23"],
                       help="raw,c23,c40, comma separated (default: c23)")
    fetch.add_argument("--server", default=defaults.server,
                       help=f"server to start with, {', '.join(SERVERS)} (default: {defaults.server})")
    fetch.add_argument("--attempts", type=positive_int, default=defaults.attempts,
                       help=f"runs of the script per dataset and compression, at most (default: {defaults.attempts})")
    fetch.add_argument("--switch-after", type=positive_int, default=defaults.switch_after,
                       help=f"failed runs on one server before the next (default: {defaults.switch_after})")
    fetch.add_argument("--backoff", type=ranged(float, 0.0), default=defaults.backoff_s, metavar="SECONDS",
                       help=f"wait after the first failed run, doubling after each (default: {defaults.backoff_s:g})")
    fetch.add_argument("--stall", type=positive_float, default=defaults.stall_s, metavar="SECONDS",
                       help="stop a run that neither downloads nor prints for this long, and retry "
                            f"(default: {defaults.stall_s:g})")
    fetch.add_argument("--agree-tos", action="store_true",
                       help="confirm that you agreed to the FaceForensics terms of use, which the script asks "
                            "on every run (asked once here otherwise)")
    fetch.add_argument("--splits", type=Path, metavar="DIR", help="train/val/test.json to expect instead of the official lists")
    fetch.add_argument("--json", action="store_true", help="print the runs and the final check as JSON")
    fetch.set_defaults(dataset_handler=_run_dataset_fetch)
    return lambda args: args.dataset_handler(args)


def _dataset_names(methods: list[str] | None) -> list[str] | None:
    from unmask.dataset_check import DATASET_FOLDERS

    return list(DATASET_FOLDERS) if methods == ["all"] else methods


def _run_dataset_check(args: argparse.Namespace) -> int:
    from unmask.dataset_check import check_dataset, load_splits

    splits = load_splits(args.splits) if args.splits else None
    report = check_dataset(args.root, _dataset_names(args.method), args.compression, splits, args.workers)
    if args.json:
        print_json(report.to_json())
    else:
        _print_dataset_report(report, args.list_missing)
    return EXIT_OK if report.complete else EXIT_NOTHING_DONE


def _print_dataset_report(report, list_missing: bool) -> None:
    state = "complete" if report.complete else "INCOMPLETE"
    print(f"FaceForensics++ at {report.root}: {state} ({report.files_checked} files read in {report.seconds:.1f} s; "
          "expected: the official lists, 1000 videos per dataset, train/val/test 720/140/140)")
    header = ["dataset", "comp", "train", "val", "test", "whole", "missing", "broken", "stray"]
    rows = []
    for f in report.folders:
        if f.listed:
            counts = [f"{f.splits[s].ok}/{f.splits[s].expected}" for s in ("train", "val", "test")]
            total = f"{f.ok}/{f.expected}" + ("" if f.exists else " (no folder)")
        else:
            counts, total = ["-", "-", "-"], f"{f.ok} (no list)" if f.exists else "0 (no folder)"
        rows.append([f.dataset, f.compression, *counts, total,
                     str(len(f.missing)) if f.listed else "-", str(len(f.broken)), str(len(f.stray))])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    if report.unchecked:
        print(f"not checked (nothing downloaded): {', '.join(report.unchecked)}; --compression to ask for them")
    shown = None if list_missing else 8
    for f in report.folders:
        where = f"{f.dataset} {f.compression}"
        if f.missing and f.exists:
            whole = [f"{s} ({c.expected})" for s, c in f.splits.items()
                     if len(c.missing) == c.expected and not list_missing]
            parts = [f"all of {' and '.join(whole)}"] if whole else []
            for split, count in f.splits.items():
                if count.missing and (list_missing or len(count.missing) < count.expected):
                    names = [Path(n).stem for n in count.missing]
                    more = f" ... and {len(names) - shown} more" if shown and len(names) > shown else ""
                    parts.append(f"{split} ({len(names)}): {', '.join(names[:shown])}{more}")
            hint = " (--list-missing names them all)" if shown and any(" more" in p for p in parts) else ""
            print(f"missing in {where} ({len(f.missing)}): {'; '.join(parts)}{hint}")
        for b in f.broken:
            print(f"broken in {where}: {b.name}: {b.problem} ({b.detail})")
        if f.stray:
            print(f"stray in {f.folder}: {', '.join(f.stray[:shown])}"
                  + (f" ... and {len(f.stray) - shown} more" if shown and len(f.stray) > shown else ""))


def _run_dataset_fetch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from unmask.dataset_check import load_splits
    from unmask.dataset_fetch import FetchSettings, fetch_dataset, servers_from

    servers_from(args.server)  # a bad value is one line before anything runs
    splits = load_splits(args.splits) if args.splits else None
    agreed = args.agree_tos or _ask_terms()
    settings = FetchSettings(server=args.server, attempts=args.attempts, switch_after=args.switch_after,
                             backoff_s=args.backoff, stall_s=args.stall)
    bars: dict[tuple[str, str], tqdm] = {}

    def on_event(event) -> None:
        key = (event.dataset, event.compression)
        if event.kind == "start":
            bars[key] = tqdm(total=event.total, initial=event.done, unit="video", file=sys.stderr,
                             desc=f"{event.dataset} {event.compression}", dynamic_ncols=True)
        bar = bars.get(key)
        if bar is not None:
            bar.n = event.done
            bar.refresh()
        if event.message:
            tqdm.write(f"unmask dataset fetch: {event.dataset} {event.compression}: {event.message}", file=sys.stderr)
        if event.kind == "done" and bar is not None:
            bar.close()

    try:
        report = fetch_dataset(args.root, args.script, _dataset_names(args.method), args.compression, agreed,
                               settings, splits, on_event)
    finally:
        for bar in bars.values():
            bar.close()
    if args.json:
        print_json({"attempts": [{**vars(a), "failure": a.failure} for a in report.attempts],
                     "removed": report.removed, "check": report.check.to_json()})
    else:
        failed = sum(1 for a in report.attempts if a.failure)
        print(f"{len(report.attempts)} run(s) of the script, {failed} failed; "
              f"{len(report.removed)} partial file(s) removed")
        _print_dataset_report(report.check, list_missing=False)
    return EXIT_OK if report.complete else EXIT_NOTHING_DONE


def _ask_terms() -> bool:
    """The script asks for this on every run; asked here once, and passed on to each run."""
    if not sys.stdin.isatty():
        raise UnmaskError("the download script asks you to confirm that you agreed to the FaceForensics terms of "
                          "use; run this in a terminal to be asked, or pass --agree-tos")
    print("The download script asks you to confirm that you have agreed to the FaceForensics terms of use "
          "(https://github.com/ondyari/FaceForensics). Have you? [y/N] ", end="", file=sys.stderr, flush=True)
    if input().strip().lower() not in ("y", "yes"):
        raise UnmaskError("not confirmed; nothing downloaded")
    return True
