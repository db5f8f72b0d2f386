"""Finish a FaceForensics++ download with the user's own official script, however often it fails.

The script comes to each user who accepts the dataset's terms through the authors' form; unmask
never ships or changes it, it only runs it (``python SCRIPT ROOT -d DATASET -c COMPRESSION -t videos
--server S``), once per dataset and compression, until the folder holds every file the official
lists name. The script downloads each file into a ``tmpXXXXXXXX`` file beside it, renames it when
done and skips files that exist, so re-running it resumes; what it cannot do is notice a stalled
server (it reads without a timeout), a file cut short, or a temporary file left by a failed run.
Here, around each run: a stalled run is stopped, failed runs are retried a bounded number of
times with exponential back-off, the next server is tried after repeated failures, and before
each retry what the script left partial is removed (its temporary files, and files that were not
whole before the run and fail the integrity check of ``dataset_check``). Ctrl+C stops the script,
removes the partial files and leaves every whole file for the next run.
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from unmask.dataset_check import (
    DATASET_FOLDERS,
    TEMP_NAME,
    UNLISTED,
    DatasetReport,
    Splits,
    check_choices,
    check_dataset,
    expected_files,
    inspect_video,
    load_splits,
    videos_folder,
)
from unmask.datasets import FFPP_COMPRESSIONS
from unmask.errors import UnmaskError

SERVERS = ("EU", "EU2", "CA")
"""The official script's ``--server`` choices."""


@dataclass(frozen=True)
class FetchSettings:
    server: str = "EU2"
    """Where to start (the script's own default, EU, is the one users most often find refusing
    connections); the others follow in turn after repeated failures."""
    attempts: int = 8
    """Runs of the script per dataset and compression, at most."""
    switch_after: int = 2
    """Consecutive failed runs on one server before moving to the next."""
    backoff_s: float = 10.0
    """Wait after the first failed run; it doubles with each further one, up to ``backoff_max_s``."""
    backoff_max_s: float = 300.0
    stall_s: float = 600.0
    """A run that neither writes to the folder nor prints for this long is stopped, as failed."""
    poll_s: float = 0.5
    """How often the folder is looked at while the script runs (progress, stalls)."""
    stop_grace_s: float = 10.0
    """After Ctrl+C, how long the script may take to stop before it is killed."""


@dataclass(frozen=True)
class FetchEvent:
    """What the driver reports while it works; the CLI turns these into a progress bar and lines."""

    kind: str
    """``start`` (a dataset/compression begins), ``progress``, ``retry``, ``switch``, ``removed``, ``done``."""
    dataset: str
    compression: str
    done: int
    """Files with an expected name in the folder (every video for an unlisted dataset)."""
    total: int | None
    """Files the official lists expect; None for DeepFakeDetection, which has no list."""
    message: str = ""


@dataclass(frozen=True)
class Attempt:
    dataset: str
    compression: str
    server: str
    returncode: int
    seconds: float
    missing_after: int | None
    removed: tuple[str, ...]
    last_output: str
    """The script's last line of output, to say why a run failed."""
    stalled: bool = False

    @property
    def failure(self) -> str:
        """Why the run did not leave the folder whole ("" when it did)."""
        if self.stalled:
            return f"stalled, stopped ({self.last_output or 'no output'})"
        if self.returncode:
            return f"exit code {self.returncode}: {self.last_output or 'no output'}"
        if self.removed:
            return f"it left {len(self.removed)} cut file(s)"
        return f"{self.missing_after} file(s) still missing" if self.missing_after else ""


@dataclass
class FetchReport:
    attempts: list[Attempt] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    """Partial files removed, relative to the root."""
    check: DatasetReport | None = None

    @property
    def complete(self) -> bool:
        return self.check is not None and self.check.complete


def servers_from(first: str) -> list[str]:
    """The script's servers in its order, starting at ``first`` and wrapping round."""
    check_choices([first], SERVERS, "server")
    start = SERVERS.index(first)
    return list(SERVERS[start:] + SERVERS[:start])


def fetch_dataset(root: Path, script: Path, datasets: Sequence[str], compressions: Sequence[str],
                  terms_agreed: bool, settings: FetchSettings = FetchSettings(), splits: Splits | None = None,
                  on_event: Callable[[FetchEvent], None] = lambda event: None) -> FetchReport:
    """Run the script for each dataset x compression until its folder is whole (or the attempts run
    out), then check the whole lot. ``terms_agreed``: the user confirmed the FaceForensics terms of
    use, which the script asks for on its standard input before every run."""
    root, script = Path(root), Path(script)
    if not script.is_file():
        raise UnmaskError(f"download script not found: {script} (the authors send it to those who accept "
                          "the terms through the form at https://github.com/ondyari/FaceForensics)")
    if root.exists() and not root.is_dir():
        raise UnmaskError(f"{root} is not a folder")
    if not root.exists() and not root.parent.is_dir():
        raise UnmaskError(f"folder {root.parent} does not exist")
    check_choices(datasets, list(DATASET_FOLDERS), "dataset")
    check_choices(compressions, FFPP_COMPRESSIONS, "compression")
    servers = servers_from(settings.server)
    if settings.attempts < 1 or settings.switch_after < 1:
        raise UnmaskError("attempts and switch-after must be at least 1")
    if not terms_agreed:
        raise UnmaskError("the download script asks you to confirm that you agreed to the FaceForensics terms of use")
    splits = load_splits() if splits is None else splits
    root.mkdir(exist_ok=True)
    report = FetchReport()
    server_index = 0
    for dataset in datasets:
        for comp in compressions:
            job = _Job(root, script, dataset, comp, splits, settings, on_event, report)
            server_index = job.run(servers, server_index)
    report.check = check_dataset(root, list(datasets), list(compressions), splits)
    return report


class _Job:
    """One dataset at one compression: the runs of the script and the clean-up around them."""

    def __init__(self, root: Path, script: Path, dataset: str, compression: str, splits: Splits,
                 settings: FetchSettings, on_event: Callable[[FetchEvent], None], report: FetchReport):
        self.root, self.script, self.dataset, self.compression = root, script, dataset, compression
        self.settings, self.on_event, self.report = settings, on_event, report
        self.folder = videos_folder(root, dataset, compression)
        self.expected = None if dataset in UNLISTED else set(expected_files(dataset, splits))
        self.whole: dict[str, tuple[int, int]] = {}
        """Files known whole, with the (size, mtime) they had when found whole."""

    def run(self, servers: list[str], server_index: int) -> int:
        """Attempts until the folder is whole; returns the server index to go on with. On Ctrl+C the
        script is stopped and what it left partial removed before the interrupt goes on up."""
        try:
            return self._run(servers, server_index)
        except KeyboardInterrupt:
            self._clean()
            raise

    def _run(self, servers: list[str], server_index: int) -> int:
        self._clean(initial=True)
        self._emit("start")
        if self.expected is not None and not self._missing():
            self._emit("done", "already complete")
            return server_index
        failures = 0
        for attempt in range(1, self.settings.attempts + 1):
            server = servers[server_index]
            if self._attempt(server):
                self._emit("done")
                return server_index
            failures += 1
            if attempt == self.settings.attempts:
                break
            delay = min(self.settings.backoff_max_s, self.settings.backoff_s * 2 ** (attempt - 1))
            self._emit("retry", f"run {attempt} of {self.settings.attempts} failed "
                                f"({self.report.attempts[-1].failure}); retrying in {delay:g} s")
            if failures >= self.settings.switch_after and len(servers) > 1:
                server_index, failures = (server_index + 1) % len(servers), 0
                self._emit("switch", f"{self.settings.switch_after} failed runs in a row on server {server}; "
                                     f"the next run uses {servers[server_index]}")
            time.sleep(delay)
        self._emit("done", f"gave up after {self.settings.attempts} runs")
        return server_index

    def _attempt(self, server: str) -> bool:
        """One run of the script; True when it leaves the folder whole."""
        command = [sys.executable, str(self.script), str(self.root), "-d", self.dataset, "-c", self.compression,
                   "-t", "videos", "--server", server]
        started = time.perf_counter()
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        output = _Output()
        reader = threading.Thread(target=output.read, args=(process.stdout,), daemon=True)
        reader.start()
        stalled = False
        try:
            try:
                process.stdin.write(b"\n")  # the confirmation of the terms of use that the script asks for
                process.stdin.close()
            except BrokenPipeError:
                pass  # it ended before asking
            activity, active_at = None, time.monotonic()
            while True:
                try:
                    process.wait(timeout=self.settings.poll_s)
                    break
                except subprocess.TimeoutExpired:
                    self._emit("progress")
                now, seen = time.monotonic(), (output.received, self._bytes())
                if seen != activity:
                    activity, active_at = seen, now
                elif now - active_at > self.settings.stall_s:
                    stalled = True
                    self._stop(process)
                    break
        except KeyboardInterrupt:
            self._stop(process)
            raise
        finally:
            reader.join(timeout=5)
        removed = self._clean()
        missing = self._missing()
        whole = process.returncode == 0 and not stalled and not removed and not missing
        self.report.attempts.append(Attempt(
            dataset=self.dataset, compression=self.compression, server=server, returncode=process.returncode,
            seconds=time.perf_counter() - started, missing_after=None if missing is None else len(missing),
            removed=tuple(removed), last_output=output.tail[-1] if output.tail else "", stalled=stalled))
        self._emit("progress")
        return whole

    def _stop(self, process: subprocess.Popen) -> None:
        """Ctrl+C reaches the script too when it came from the terminal; send it anyway, then insist."""
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=self.settings.stop_grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _missing(self) -> set[str] | None:
        """Expected names not in the folder; None for a dataset without a list."""
        if self.expected is None:
            return None
        return self.expected - set(self._names())

    def _bytes(self) -> int:
        """Bytes in the folder: grows while the script downloads, even into its temporary file."""
        try:
            return sum(e.stat().st_size for e in os.scandir(self.folder) if e.is_file())
        except FileNotFoundError:
            return 0

    def _names(self) -> list[str]:
        try:
            return [e.name for e in os.scandir(self.folder) if e.is_file()]
        except FileNotFoundError:
            return []

    def _counted(self, name: str) -> bool:
        return name in self.expected if self.expected is not None else name.lower().endswith(".mp4")

    def _clean(self, initial: bool = False) -> list[str]:
        """Remove the script's temporary files and every file that was not known whole and fails the
        integrity check (at the start: every broken file, so that the script fetches it again)."""
        removed = []
        for name in self._names():
            path = self.folder / name
            if TEMP_NAME.fullmatch(name):
                bad = True
            elif not self._counted(name):
                continue
            else:
                stat = path.stat()
                if self.whole.get(name) == (stat.st_size, stat.st_mtime_ns):
                    continue
                bad = inspect_video(path) is not None
                if not bad:
                    self.whole[name] = (stat.st_size, stat.st_mtime_ns)
            if bad:
                path.unlink(missing_ok=True)
                self.whole.pop(name, None)
                removed.append(path.relative_to(self.root).as_posix())
        if removed:
            self.report.removed.extend(removed)
            what = "broken or partial file(s) found" if initial else "partial file(s) left by the script"
            self._emit("removed", f"removed {len(removed)} {what}: {', '.join(Path(r).name for r in removed[:5])}"
                                  + (" ..." if len(removed) > 5 else ""))
        return removed

    def _emit(self, kind: str, message: str = "") -> None:
        done = sum(1 for name in self._names() if self._counted(name))
        total = None if self.expected is None else len(self.expected)
        self.on_event(FetchEvent(kind, self.dataset, self.compression, done, total, message))


class _Output:
    """What the script prints: its last lines (to say why a run failed) and how much (to see it is alive)."""

    def __init__(self):
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self.received = 0

    def read(self, stream) -> None:
        buffer = b""
        for chunk in iter(lambda: stream.read1(4096), b""):
            self.received += len(chunk)
            *lines, buffer = (buffer + chunk).replace(b"\r", b"\n").split(b"\n")  # progress bars end in \r
            self.tail.extend(text for line in lines if (text := line.decode(errors="replace").strip()))
        if buffer.strip():
            self.tail.append(buffer.decode(errors="replace").strip())
        stream.close()
