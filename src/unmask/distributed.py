"""Dask as the engine of ``prepare``: local processes, an existing scheduler, or workers
submitted to a batch queue (SLURM, LSF, PBS) through dask-jobqueue.

Each task processes one video and its worker writes that video's shard straight into the
shared output folder; only the small video record travels back, and only a bounded number
of tasks is in flight, so the client's memory does not grow with the dataset. The client
commits the shards afterwards (``prepare_dataset`` does that), exactly as a local run does.

Training scales out too: scikit-learn's joblib work runs on the same Dask clusters
(``joblib_on_cluster``), and the CNN trains with PyTorch's DistributedDataParallel in the
process group ``torchrun`` starts (``torch_process_group``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from unmask.config import PrepareConfig
from unmask.datasets import Video
from unmask.errors import UnmaskError, one_line
from unmask.prepare import _video_record, make_face_pass, process_and_write
from unmask.store import VIDEO_COLUMNS, Shard, shard_id, write_shard
from unmask.util import torch_world

if TYPE_CHECKING:  # the API loads the detector and the model; workers import it when they check
    from unmask.api import Detector, Result
    from unmask.config import CheckSettings

QUEUE_CLUSTERS = {"slurm": "SLURMCluster", "lsf": "LSFCluster", "pbs": "PBSCluster"}
Runner = Callable[[list[Video], Path], Iterable[dict]]


# --------------------------------------------------------------------------- which cluster
def read_cluster_config(path: Path | None, kind: str) -> dict:
    """The job options of a ``kind`` queue (cores, memory, walltime, queue, account, ...).

    The file is YAML or JSON: a flat mapping of dask-jobqueue's options, optionally under a
    section per queue (``slurm:``, ``lsf:``, ``pbs:``), or dask-jobqueue's own ``jobqueue:``
    layout, so an existing ``~/.config/dask/jobqueue.yaml`` works as it is.
    """
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise UnmaskError(f"cannot read cluster config {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise UnmaskError(f"cluster config {path} is not valid YAML or JSON: {str(err).splitlines()[0]}") from None
    data = {} if data is None else data
    if isinstance(data, dict) and isinstance(data.get("jobqueue"), dict):
        data = data["jobqueue"]
    if isinstance(data, dict) and set(data) & set(QUEUE_CLUSTERS):
        data = data.get(kind)
        if data is None:
            raise UnmaskError(f"cluster config {path} has no '{kind}' section")
    if not isinstance(data, dict):
        raise UnmaskError(f"cluster config {path} must be a mapping of job options, e.g. 'cores: 8' and 'memory: 32GB'")
    return data


def check_cluster_options(scheduler: str | None = None, cluster: str | None = None, jobs: int | None = None,
                          config_file: Path | None = None, workers: int | None = None) -> dict:
    """Refuse contradictory options before any work starts; returns the queue's job options."""
    if scheduler and cluster:
        raise UnmaskError("give either --scheduler (an existing Dask cluster) or --cluster (a batch queue), not both")
    if cluster and cluster not in QUEUE_CLUSTERS:
        raise UnmaskError(f"unknown --cluster {cluster!r}; choose from: {', '.join(QUEUE_CLUSTERS)}")
    if not cluster and (jobs is not None or config_file is not None):
        raise UnmaskError("--jobs and --cluster-config go with --cluster slurm|lsf|pbs")
    if workers is not None and (scheduler or cluster):
        raise UnmaskError("--workers sizes the local cluster; with --scheduler or --cluster, "
                          "the cluster's own workers run")
    if jobs is not None and jobs < 1:
        raise UnmaskError(f"--jobs must be at least 1, got {jobs}")
    if not cluster:
        return {}
    import dask
    import dask_jobqueue

    options = read_cluster_config(config_file, cluster)
    for needed in ("cores", "memory"):
        if options.get(needed) is None and dask.config.get(f"jobqueue.{cluster}.{needed}", None) is None:
            raise UnmaskError(f"--cluster {cluster} needs '{needed}' per job: set cores and memory in "
                              "--cluster-config FILE (see docs/cluster.md)")
    submit = getattr(dask_jobqueue, QUEUE_CLUSTERS[cluster]).job_cls.submit_command
    if shutil.which(submit) is None:
        raise UnmaskError(f"--cluster {cluster} submits jobs with `{submit}`, which is not on PATH here; "
                          "run on a login node of the cluster")
    return options


@contextmanager
def cluster_client(scheduler: str | None = None, cluster: str | None = None, jobs: int | None = None,
                   config_file: Path | None = None, workers: int | None = None, retries: int = 2) -> Iterator:
    """A Dask client: to a local cluster by default, to ``scheduler``, or to ``jobs`` batch jobs.

    A cluster started here is shut down on exit. ``retries`` bounds how often its scheduler
    re-runs a task whose worker died (``distributed.scheduler.allowed-failures``); an existing
    scheduler keeps its own setting.
    """
    import dask
    from distributed import Client, LocalCluster

    options = check_cluster_options(scheduler, cluster, jobs, config_file, workers)
    if scheduler:
        try:
            client = Client(scheduler)
        except (OSError, ValueError) as err:
            raise UnmaskError(f"cannot reach Dask scheduler at {scheduler}: {err}") from None
        with client:
            yield client
        return
    # worker-saturation 1.0: a worker holds only the task it runs, so when it dies only that
    # video is blamed (the scheduler counts a death against every task assigned to the worker)
    with dask.config.set({"distributed.scheduler.allowed-failures": retries,
                          "distributed.scheduler.worker-saturation": 1.0}):
        if cluster:
            started = _queue_cluster(cluster, options, config_file)
            started.scale(jobs=jobs or 1)
        else:
            # One single-threaded process per worker: MTCNN (torch) and decoding scale by processes.
            # Without Dask's MALLOC_TRIM_THRESHOLD_ for workers, glibc keeps its adaptive mmap
            # threshold; with it, every decoded frame is a fresh mmap whose pages fault in again
            # (measured: 4x the page faults, +30% CPU per video). See docs/cluster.md.
            # silence_logs, and DASK_LOGGING__DISTRIBUTED in the workers: Dask's own log lines (a
            # nanny killing a slow worker at shutdown, a worker whose heartbeat finds the scheduler
            # gone after Ctrl+C) are not the user's business; failures reach them as error records
            with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                                  "distributed.nanny.pre-spawn-environ.DASK_LOGGING__DISTRIBUTED": "critical"}):
                with _ctrl_c_for_this_process_only():
                    started = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                                           processes=True, silence_logs=logging.ERROR)
    with started, Client(started) as client:
        yield client


@contextmanager
def _ctrl_c_for_this_process_only() -> Iterator[None]:
    """SIGINT ignored meanwhile, so that the worker processes Dask spawns meanwhile start with it
    ignored (an ignored signal stays ignored across exec, and Python then leaves it so). Ctrl+C in a
    terminal signals the whole process group: this way it reaches only this process, which stops the
    workers as it shuts the cluster down, instead of each worker printing its own KeyboardInterrupt
    traceback. The cost: a Ctrl+C while the cluster starts (a few seconds) is not heard."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is None or threading.current_thread() is not threading.main_thread():  # not ours to change
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _queue_cluster(kind: str, options: dict, config_file: Path | None):
    import dask_jobqueue

    options = dict(options)
    if "cores" in options:
        # like the local cluster: one single-threaded worker process per core of the job
        options.setdefault("processes", options["cores"])
    try:
        return getattr(dask_jobqueue, QUEUE_CLUSTERS[kind])(**options)
    except (TypeError, ValueError, RuntimeError) as err:  # unknown option, bad value, interface...
        source = config_file or "the Dask config"
        raise UnmaskError(f"cannot set up a {kind} cluster from {source}: {str(err).splitlines()[0]}") from None


# --------------------------------------------------------------------------- the work
_face_pass: tuple | None = None
"""(face and motion settings, FacePass) of this worker process: loading the detector costs a second, once."""


def _process(video: Video, config: PrepareConfig, shards_dir: Path) -> dict:
    """One task: one video, on a worker, with the worker's own detector; returns its record."""
    global _face_pass
    if _face_pass is None or _face_pass[0] != (config.faces, config.motion):
        _face_pass = ((config.faces, config.motion), make_face_pass(config, threads=1, decode_threads=1))
    return process_and_write(video, config, _face_pass[1], shards_dir)


def dask_runner(client, config: PrepareConfig, retries: int = 2, in_flight: int = 256) -> Runner:
    """A ``prepare_dataset`` runner that processes the videos on the cluster behind ``client``.

    At most ``in_flight`` tasks (or three times the cluster's threads, if more) are submitted at a
    time, and records are yielded as tasks finish. A task that raises is retried ``retries``
    times; a video whose worker keeps dying (the scheduler's bound) or that keeps raising
    becomes an "error" record with the reason, and the run goes on.
    """

    def run(videos: list[Video], shards_dir: Path) -> Iterator[dict]:
        shards_dir = Path(shards_dir).absolute()  # workers may run in another folder, on another host
        videos = (replace(video, path=video.path.absolute()) for video in videos)
        for video, future in _bounded_tasks(client, _process, videos, "prepare", lambda v: shard_id(v.key),
                                            (config, shards_dir), retries, in_flight):
            record = _outcome(future, video, config, shards_dir)
            future.release()
            yield record

    return run


def _bounded_tasks(client, task, items, group: str, name, args: tuple, retries: int, in_flight: int):
    """Submit ``task(item, *args)`` for each item, a bounded number at a time; yield (item, future)
    as they finish, so the client holds only what is in flight, whatever the number of items."""
    from distributed import as_completed

    todo = iter(items)
    pending: dict = {}
    finished = as_completed()
    capacity = _Capacity(client, in_flight)
    run_id = uuid.uuid4().hex[:8]

    def top_up() -> None:
        for item in islice(todo, max(capacity() - len(pending), 0)):
            # one task group for all items: the scheduler then queues them and hands each
            # worker one at a time, instead of piling them onto workers up front
            future = client.submit(task, item, *args, retries=retries, key=(group, f"{name(item)}-{run_id}"))
            pending[future] = item
            finished.add(future)

    top_up()
    for future in finished:
        item = pending.pop(future)
        top_up()
        yield item, future


_detector: tuple | None = None
"""(model folder, settings, Detector) of this worker process: the model loads once per worker."""


def _check(path: Path, model: Path | None, settings: CheckSettings) -> Result:
    """One task: check one video on a worker, with the worker's own Detector. Whatever is wrong with
    the video (unreadable, or not there on this worker's host) is its ERROR result, as in a local batch."""
    global _detector
    from unmask.api import Detector

    if _detector is None or _detector[:2] != (model, settings):
        _detector = (model, settings, Detector(model, **asdict(settings)))
        one_thread()
    (result,) = _detector[2].check_many([path])
    return result


def one_thread() -> None:
    """Workers run one task per process: one OpenCV (and, where a GPU or a model without an ONNX
    export loaded it, torch) thread each uses the cores without contention."""
    import cv2

    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def check_on_cluster(client, paths: list[Path], detector: Detector, retries: int = 2,
                     in_flight: int = 64) -> Iterator[Result]:
    """What ``detector.check_many(paths)`` gives, checked on the cluster behind ``client`` (each worker
    loading the detector's model and settings once) and yielded as they finish. The results draw
    their reports with ``detector``'s model, here.

    A video whose worker dies every time becomes an ERROR result with the reason."""
    from unmask.api import Result
    from unmask.check import ERROR

    paths = [Path(p).absolute() for p in paths]
    model = detector.folder.absolute() if detector.folder else None
    for path, future in _bounded_tasks(client, _check, paths, "check", lambda p: shard_id(str(p)),
                                       (model, detector.settings), retries, in_flight):
        try:
            result = future.result()
        except Exception as err:  # a dead worker or a bug on it: reported, the run goes on
            result = Result(path=str(path), verdict=ERROR, fake_probability=None, certainty="", threshold=0.0,
                            model={}, error=f"failed on the cluster: {type(err).__name__}: {one_line(err)}")
        future.release()
        yield detector.adopt(result)


class _Capacity:
    """How many tasks to keep in flight: over twice the worker threads (so the scheduler treats
    them as a queue, see above), re-asked now and then as batch-queue workers come and go."""

    def __init__(self, client, minimum: int, every_s: float = 30.0):
        self.client, self.minimum, self.every_s = client, minimum, every_s
        self.value, self.asked = minimum, -every_s

    def __call__(self) -> int:
        if time.monotonic() - self.asked >= self.every_s:
            self.asked = time.monotonic()
            self.value = max(self.minimum, 3 * sum(self.client.nthreads().values()))
        return self.value


def _outcome(future, video: Video, config: PrepareConfig, shards_dir: Path) -> dict:
    from distributed import KilledWorker

    if future.status == "finished":
        return future.result()
    if future.cancelled():
        raise UnmaskError("the Dask cluster dropped the work (scheduler shut down or lost); "
                          "finished videos are kept, run again to resume")
    error = future.exception()
    if isinstance(error, KilledWorker):
        reason = f"worker died {error.allowed_failures + 1} times while processing it (KilledWorker)"
    else:
        reason = f"{type(error).__name__}: {one_line(error) or 'no message'}"
    return _failed(video, config, shards_dir, reason)


def _failed(video: Video, config: PrepareConfig, shards_dir: Path, reason: str) -> dict:
    """Record a video the cluster could not process, so the committed store reports it.

    A worker may have finished the shard just before dying: then that shard stands.
    """
    meta = shards_dir / f"{shard_id(video.key)}.json"
    if meta.exists():
        return json.loads(meta.read_text())["video"]
    record = {column: 0 for column in VIDEO_COLUMNS} | _video_record(video) | {"status": "error", "reason": reason}
    size = config.faces.size
    write_shard(shards_dir, Shard(record, [], np.zeros((0, size, size, 3), np.uint8)))
    return record


def cluster_runner(config: PrepareConfig, scheduler: str | None = None, cluster: str | None = None,
                   jobs: int | None = None, config_file: Path | None = None, workers: int | None = None,
                   retries: int = 2) -> Runner | None:
    """The engine ``unmask prepare`` uses: None (in this process, no cluster) for one local
    worker; otherwise a runner that starts or joins the cluster only when there is work, so a
    resumed run with nothing left to do returns at once. Bad options fail here, before any work.
    """
    check_cluster_options(scheduler, cluster, jobs, config_file, workers)
    if not scheduler and not cluster and (workers or os.cpu_count() or 1) <= 1:
        return None

    def run(videos: list[Video], shards_dir: Path) -> Iterator[dict]:
        if not videos:
            return
        with cluster_client(scheduler, cluster, jobs, config_file, workers, retries) as client:
            yield from dask_runner(client, config, retries)(videos, shards_dir)

    return run


# --------------------------------------------------------------------------- training
@contextmanager
def joblib_on_cluster(client) -> Iterator[None]:
    """Run scikit-learn's joblib parallelism (``n_jobs``) as tasks on the cluster of ``client``."""
    import joblib

    with joblib.parallel_backend("dask", client=client):
        yield


@contextmanager
def torch_process_group() -> Iterator[tuple[int, int]]:
    """Join the process group that ``torchrun`` describes in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, ...) for the duration; yield (rank, number of processes).

    GPUs: one per process (``cuda:$LOCAL_RANK``), NCCL between them; CPU tensors go through gloo.
    Outside torchrun (or with one process) nothing is started and this yields (0, 1).
    """
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield 0, 1
        return
    if not dist.is_available():
        raise UnmaskError("this build of PyTorch has no torch.distributed; run without torchrun")
    if dist.is_initialized():  # the caller's own group
        yield torch_world()
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    except (ValueError, RuntimeError) as err:
        raise UnmaskError(f"cannot join the torchrun process group: {str(err).splitlines()[0]}") from None
    try:
        yield torch_world()
    except BaseException:
        dist.destroy_process_group()
        raise
    # All together first: no process closes its connections while another still finishes its
    # last collective (a rank torn down early can abort its peer in gloo's teardown).
    dist.barrier()
    dist.destroy_process_group()
