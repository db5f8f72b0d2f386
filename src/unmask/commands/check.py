"""`unmask check`, `serve` and `sample`: verdicts on videos and photos, through the Python API
(``unmask.api.Detector``) here, on a Dask cluster, or behind the web app."""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

from unmask.commands import (
    EXIT_NOTHING_DONE, EXIT_OK, Commands, add_cluster_arguments, cluster_options, port_number, positive_float,
    positive_int, probability, ranged,
)
from unmask.errors import UnmaskError

COMMANDS = Commands()


@COMMANDS.register("check")
def _check_command(parser: argparse.ArgumentParser):
    """Check videos for deepfaked faces: a verdict per video (FAKE, REAL or NO FACE FOUND) with its probability."""
    from unmask.config import CheckSettings

    defaults = CheckSettings()
    parser.add_argument("paths", nargs="+", type=Path, metavar="VIDEO",
                        help="videos, photos or folders (searched recursively for both)")
    parser.add_argument("--model", help="model folder (default: the model shipped with unmask, also named 'default')")
    parser.add_argument("--frames", type=positive_int, default=defaults.frames,
                        help=f"frames looked at, spread evenly over the video (default: {defaults.frames})")
    parser.add_argument("--aggregate", help="face scores -> track score: mean, median, max, trimmed-mean "
                                            "(default: the model card's)")
    parser.add_argument("--min-confidence", type=probability, default=defaults.min_confidence,
                        help=f"ignore faces the detector is less sure of (default: {defaults.min_confidence})")
    parser.add_argument("--max-side", type=ranged(int, 0), default=defaults.max_side, metavar="PIXELS",
                        help=f"scale frames larger than this down as they are decoded, so memory stays bounded "
                             f"whatever the resolution (default: {defaults.max_side}; 0: never scale)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--json", action="store_true", help="print one JSON record per video (JSON Lines)")
    reports = parser.add_mutually_exclusive_group()
    reports.add_argument("--report", type=Path, metavar="FILE.html", help="write an HTML report (one video)")
    reports.add_argument("--report-dir", type=Path, metavar="DIR", help="write one HTML report per video here")
    add_cluster_arguments(parser)
    return _run_check


def _run_check(args: argparse.Namespace) -> int:
    from unmask.api import Detector
    from unmask.check import find_inputs
    from unmask.util import check_writable

    videos = []
    for path in args.paths:
        found = find_inputs(path)
        if not found:
            raise UnmaskError(f"no videos or photos under {path}")
        videos += found
    if args.report and len(videos) > 1:
        raise UnmaskError(f"--report writes the report of one video, and {len(videos)} were given; "
                          "use --report-dir DIR for one report per video")
    for target in _report_targets(args, videos):
        check_writable(target)  # before the work, not after it
    detector = Detector(args.model, frames=args.frames, min_confidence=args.min_confidence, aggregate=args.aggregate,
                        max_side=args.max_side or None, device=args.device)
    names: set[str] = set()
    errors = 0
    verdicts: dict[str, int] = {}
    with _check_results(args, videos, detector) as results:
        for result in results:
            errors += _show_check(args, result, detector.settings, names, verdicts)
    if not args.json and len(videos) > 1:
        print(f"{len(videos)} videos: " + ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())))
    return EXIT_NOTHING_DONE if errors else EXIT_OK


@contextmanager
def _check_results(args: argparse.Namespace, videos: list[Path], detector):
    """The results: checked here in order (the next video decoding while this one is scored), or on
    a Dask cluster as they finish."""
    if not (args.scheduler or args.cluster):
        yield detector.check_many(videos)
        return
    from unmask.distributed import check_on_cluster, cluster_client

    with cluster_client(**cluster_options(args)) as client:
        yield check_on_cluster(client, videos, detector)


def _show_check(args, result, settings, names: set[str], verdicts: dict) -> bool:
    """Print one result (and write its report); True when the video could not be checked."""
    from unmask.check import ERROR

    verdicts[result.verdict] = verdicts.get(result.verdict, 0) + 1
    target = args.report or (args.report_dir / _report_name(Path(result.path), names) if args.report_dir else None)
    try:
        report = result.save_report(target) if target else None
    except (OSError, UnmaskError):
        _print_check(args, result, settings, None)  # the verdict is known: show it before the report's error
        raise
    _print_check(args, result, settings, report)
    return result.verdict == ERROR


def _print_check(args, result, settings, report: Path | None) -> None:
    """One JSON record, or the verdict line with what to read it with (warnings) and the report under it."""
    from unmask.check import ERROR

    if args.json:
        print(json.dumps(result.to_dict() | ({"report": str(report)} if report else {})), flush=True)
    else:
        print(_verdict_line(result, settings), flush=True)
        for warning in result.warnings if result.verdict != ERROR else ():
            print(f"  warning: {warning}", flush=True)
        if report:
            print(f"  report: {report}", flush=True)


def _report_targets(args, videos: list[Path]) -> list[Path]:
    """The report files the check will write, named as ``_show_check`` names them."""
    if args.report:
        return [args.report]
    taken: set[str] = set()
    return [args.report_dir / _report_name(video, taken) for video in videos] if args.report_dir else []


def _report_name(video: Path, taken: set[str]) -> str:
    """``<stem>.html``, numbered when two videos share a stem."""
    name, number = f"{video.stem}.html", 1
    while name in taken:
        number += 1
        name = f"{video.stem}-{number}.html"
    taken.add(name)
    return name


def _verdict_line(result, settings) -> str:
    """suspicious.mp4: FAKE (fake probability 0.91, very sure) - 16 frames, 1 face track, 0.8 s"""
    from unmask.check import ERROR, NO_FACE

    if result.verdict == ERROR:
        return f"{result.path}: ERROR - {result.error}"
    looked_at = "a still image" if result.still_image else f"{result.frames_sampled} frames"
    if result.verdict == NO_FACE:
        return (f"{result.path}: NO FACE FOUND - {looked_at}, none with a face the detector "
                f"is over {settings.min_confidence:g} sure of, {result.elapsed_s:.1f} s")
    tracks = len(result.tracks)
    return (f"{result.path}: {result.verdict} (fake probability {result.fake_probability:.2f}, {result.certainty})"
            f" - {looked_at}, {tracks} face track{'s' if tracks != 1 else ''}, {result.elapsed_s:.1f} s")


@COMMANDS.register("serve")
def _serve_command(parser: argparse.ArgumentParser):
    """Serve the web page and HTTP API: upload a video, get its verdict and report."""
    from unmask.config import CHECK_MEMORY_MB, ServeSettings

    defaults = ServeSettings()
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=port_number, default=8000, help="port (default: 8000; 0: any free port)")
    parser.add_argument("--model", help="model folder (default: the model shipped with unmask, also named 'default')")
    parser.add_argument("--max-upload-mb", type=positive_float, default=defaults.max_upload_mb,
                        help=f"largest video accepted, in MB (default: {defaults.max_upload_mb:g})")
    parser.add_argument("--workers", type=positive_int, default=defaults.workers,
                        help=f"videos checked at the same time; more wait their turn (default: {defaults.workers})")
    parser.add_argument("--memory-budget-mb", type=positive_float, default=defaults.memory_budget_mb, metavar="MB",
                        help=f"memory checks in progress may hold together, beyond the models; each holds at most "
                             f"{CHECK_MEMORY_MB} MB, so fewer than --workers run at once when it is small "
                             f"(default: {defaults.memory_budget_mb:g})")
    parser.add_argument("--max-uploads", type=positive_int, default=defaults.max_uploads,
                        help=f"uploads received at once; more get 503 (default: {defaults.max_uploads})")
    parser.add_argument("--upload-headroom", type=ranged(int, 0), default=defaults.upload_headroom, metavar="N",
                        help=f"upload slots kept for addresses not already sending one: an address cannot take the "
                             f"last N free slots, so it cannot hold them all (default: {defaults.upload_headroom}; "
                             "0 behind a reverse proxy)")
    parser.add_argument("--max-queued", type=positive_int, default=defaults.max_queued,
                        help=f"checks waiting or running at once; more get 503 (default: {defaults.max_queued})")
    parser.add_argument("--upload-timeout", type=positive_float, default=defaults.upload_timeout_s, metavar="S",
                        help=f"longest an upload may take, in seconds; slower ones get 408 "
                             f"(default: {defaults.upload_timeout_s:g})")
    parser.add_argument("--stall-timeout", type=positive_float, default=defaults.stall_timeout_s, metavar="S",
                        help=f"longest wait for more of an upload, in seconds; a stalled one gets 408 "
                             f"(default: {defaults.stall_timeout_s:g})")
    parser.add_argument("--min-upload-rate", type=ranged(float, 0.0), default=defaults.min_upload_rate_kb,
                        metavar="KB/S", help=f"slowest an upload may arrive, in kB/s averaged over --rate-window; a "
                                             f"slower one gets 408 (default: {defaults.min_upload_rate_kb:g}; 0: no floor)")
    parser.add_argument("--rate-window", type=positive_float, default=defaults.rate_window_s, metavar="S",
                        help=f"seconds the upload rate is averaged over, and the grace before it is first judged "
                             f"(default: {defaults.rate_window_s:g})")
    parser.add_argument("--upload-dir", type=Path,
                        help="where uploads wait while checked (default: the system's temporary folder)")
    return _run_serve


def _run_serve(args: argparse.Namespace) -> int:
    from socket import AF_INET6

    from unmask.api import Detector
    from unmask.config import ServeSettings
    from unmask.web.app import Server, create_app, listen

    settings = ServeSettings(max_upload_mb=args.max_upload_mb, workers=args.workers, max_uploads=args.max_uploads,
                             max_queued=args.max_queued, upload_timeout_s=args.upload_timeout,
                             stall_timeout_s=args.stall_timeout, upload_dir=args.upload_dir,
                             upload_headroom=args.upload_headroom,
                             min_upload_rate_kb=args.min_upload_rate, rate_window_s=args.rate_window,
                             memory_budget_mb=args.memory_budget_mb)
    app = create_app(Detector(args.model), settings)
    listener = listen(args.host, args.port)
    host, port = listener.getsockname()[:2]
    if host not in ("127.0.0.1", "::1"):
        print(f"warning: listening on {host}: anyone who can reach this machine can upload videos", file=sys.stderr)
    shown = f"[{host}]" if listener.family == AF_INET6 else host
    print(f"unmask: serving on http://{shown}:{port} (API docs at /docs); Ctrl+C stops", flush=True)
    try:
        Server(app).run(sockets=[listener])
    except KeyboardInterrupt:  # uvicorn shuts down (requests in progress get 503), then passes Ctrl+C on
        print("unmask serve: stopped", file=sys.stderr)
    return EXIT_OK


@COMMANDS.register("sample")
def _sample_command(parser: argparse.ArgumentParser):
    """Write a demo video made from a public-domain portrait, to try `unmask check` on."""
    parser.add_argument("path", nargs="?", type=Path, default=Path("sample.mp4"),
                        help="video file to write (default: sample.mp4)")
    parser.add_argument("--seconds", type=positive_float, default=8.0, help="length (default: 8)")
    return _run_sample


def _run_sample(args: argparse.Namespace) -> int:
    from unmask.datasets import VIDEO_SUFFIXES
    from unmask.sample import make_sample_video

    if args.path.suffix.lower() not in VIDEO_SUFFIXES:
        raise UnmaskError(f"{args.path}: give the video a video file name ({', '.join(VIDEO_SUFFIXES)})")
    if args.path.is_dir():
        raise UnmaskError(f"{args.path} is a folder; give a file name")
    if not args.path.parent.is_dir():
        raise UnmaskError(f"folder {args.path.parent} does not exist")
    make_sample_video(args.path, seconds=args.seconds)
    print(f"wrote {args.path} ({args.seconds:g} s, 1280x720, NASA's public-domain portrait of Eileen Collins); "
          f"try: unmask check {args.path}")
    return EXIT_OK
