"""The Dask engine on a real local cluster: a scheduler and workers as separate processes.

Proves issue 6's parts 2-4: the same face store as a local run (tables and pixels),
resumable; a worker killed mid-video loses nothing finished, the video is retried, and a
video that kills its worker every time becomes an error record; client memory stays flat.
"""
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import cloudpickle
import dask
import numpy as np
import pandas as pd
import pytest
from distributed import LocalCluster, WorkerPlugin

from conftest import face_frames, make_ffpp_tree
from unmask.cli import main
from unmask.config import FaceDetection, FrameSampling, PrepareConfig
from unmask.datasets import DatasetScan, Video, open_dataset
from unmask.distributed import (
    check_cluster_options, cluster_client, cluster_runner, dask_runner, joblib_on_cluster, read_cluster_config,
)
from unmask.errors import UnmaskError
from unmask.prepare import prepare_dataset
from unmask.store import FaceStore
from unmask.video import write_video

CONFIG = PrepareConfig(faces=FaceDetection(size=48))  # the CLI's seed preset with --size 48
TIMINGS = ["decode_s", "detect_s", "store_s", "seconds"]

# the kill plugin below is defined here, and workers cannot import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _start(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with log.open("w") as handle:
        return subprocess.Popen([sys.executable, "-m", *args], stdout=handle, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """`dask scheduler` and `dask worker --nworkers 2` as their own processes (the modules behind
    those commands, run with this Python); yields the scheduler's address.

    The scheduler re-runs a task whose worker died once (allowed-failures=1), then gives up;
    it sends a worker one task at a time (as ``cluster_client`` sets up its own clusters).
    """
    folder = tmp_path_factory.mktemp("dask")
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1",
           "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0"}
    processes = [_start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                         "--scheduler-file", str(folder / "scheduler.json")], folder / "scheduler.log", env)]
    try:
        deadline = time.monotonic() + 60
        while not (folder / "scheduler.json").exists():
            assert time.monotonic() < deadline and processes[0].poll() is None, (folder / "scheduler.log").read_text()
            time.sleep(0.1)
        address = json.loads((folder / "scheduler.json").read_text())["address"]
        processes.append(_start(["distributed.cli.dask_worker", address, "--nworkers", "2", "--nthreads", "1",
                                 "--no-dashboard", "--local-directory", str(folder)], folder / "workers.log"))
        with cluster_client(scheduler=address) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in reversed(processes):
            _stop(process)


def _same_store(a: Path, b: Path) -> None:
    one, two = FaceStore(a), FaceStore(b)
    # Boxes and confidences to float32 rounding (1e-5): the engines may run torch with other thread counts.
    pd.testing.assert_frame_equal(one.table, two.table, check_exact=False, rtol=1e-5)
    pd.testing.assert_frame_equal(one.videos.drop(columns=TIMINGS), two.videos.drop(columns=TIMINGS),
                                  check_exact=False, rtol=1e-5)
    assert np.array_equal(one.faces, two.faces)


def _local_run(scan, out: Path):
    """The in-process engine, single-threaded like a Dask worker (torch's float sums depend on threads)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return prepare_dataset(scan, out, CONFIG)
    finally:
        torch.set_num_threads(threads)


def test_distributed_run_writes_the_same_store_and_resumes(tmp_path, scheduler, capsys):
    root = make_ffpp_tree(tmp_path / "ff")
    scan = open_dataset(root)
    _local_run(scan, tmp_path / "local")
    # through the CLI on the cluster: the same store, bit for bit
    assert main(["prepare", str(root), "--out", str(tmp_path / "dask"), "--size", "48",
                 "--scheduler", scheduler, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["processed_this_run"] == 8 and summary["status_counts"] == {"ok": 6, "no-face": 2}
    _same_store(tmp_path / "local", tmp_path / "dask")
    assert FaceStore(tmp_path / "dask").faces.shape == (12, 48, 48, 3)
    # a store begun locally is finished on the cluster, and is again the same
    mixed = tmp_path / "mixed"
    _local_run(type(scan)(root=scan.root, layout=scan.layout, videos=scan.videos[:3]), mixed)
    with cluster_client(scheduler=scheduler) as client:
        rest = prepare_dataset(scan, mixed, CONFIG, runner=dask_runner(client, CONFIG))
        assert (rest.processed, rest.already_done) == (5, 3)
        _same_store(tmp_path / "local", mixed)
        # run again, nothing deleted: nothing is redone, no shard rewritten
        shards = {p: p.stat().st_mtime_ns for p in (mixed / "shards").iterdir()}
        again = prepare_dataset(scan, mixed, CONFIG, runner=dask_runner(client, CONFIG))
    assert (again.processed, again.already_done) == (0, 8)
    assert {p: p.stat().st_mtime_ns for p in (mixed / "shards").iterdir()} == shards
    _same_store(tmp_path / "local", mixed)


class KillDuringVideo(WorkerPlugin):
    """Test only: SIGKILL the worker process in the middle of a video, as its frames are opened,
    before faces are detected, every time for one file, the first time for another."""

    name = "kill-during-video"

    def __init__(self, always: str, once: str, folder: Path):
        self.always, self.once, self.folder = always, once, folder

    def setup(self, worker):
        import unmask.faces.face_pass

        self.original = original = unmask.faces.face_pass.stream_frames

        def stream_frames(path, *args, **kwargs):
            frames = original(path, *args, **kwargs)
            name = Path(path).name
            if name == self.always or (name == self.once and self._first(name)):
                (self.folder / f"{name}.{os.getpid()}.killed").touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return frames

        unmask.faces.face_pass.stream_frames = stream_frames

    def teardown(self, worker):
        import unmask.faces.face_pass

        unmask.faces.face_pass.stream_frames = self.original

    def _first(self, name: str) -> bool:
        try:
            (self.folder / f"{name}.first").open("x").close()
            return True
        except FileExistsError:
            return False


def test_killed_worker_retried_then_reported_and_nothing_finished_lost(tmp_path, scheduler):
    for name in ("face", "kills-always", "killed-once"):
        write_video(tmp_path / f"{name}.mp4", face_frames(31))
    # the two killers go first, so that many videos are still queued when the workers die
    videos = [Video(path=tmp_path / "kills-always.mp4", label=1, key="fake/kills-always.mp4"),
              Video(path=tmp_path / "killed-once.mp4", label=1, key="fake/killed-once.mp4"),
              *(Video(path=tmp_path / "face.mp4", label=0, key=f"real/{i}.mp4") for i in range(6))]
    scan = DatasetScan(root=tmp_path, layout="folders", videos=videos)
    kills = tmp_path / "kills"
    kills.mkdir()
    out = tmp_path / "faces"
    with cluster_client(scheduler=scheduler) as client:
        client.register_plugin(KillDuringVideo("kills-always.mp4", "killed-once.mp4", kills))
        try:
            summary = prepare_dataset(scan, out, CONFIG, runner=dask_runner(client, CONFIG, retries=1))
        finally:
            client.unregister_worker_plugin(KillDuringVideo.name)
        client.wait_for_workers(2, timeout=60)  # the nannies restarted the killed workers
    killed = sorted(p.name.split(".mp4.")[0] for p in kills.glob("*.killed"))
    assert killed == ["killed-once", "kills-always", "kills-always"]  # three worker processes died
    records = summary.videos.set_index("video")
    assert summary.processed == 8
    assert records.loc["fake/kills-always.mp4", "status"] == "error"
    assert records.loc["fake/kills-always.mp4", "reason"] == "worker died 2 times while processing it (KilledWorker)"
    others = records.drop("fake/kills-always.mp4")
    assert others["status"].eq("ok").all() and others["faces"].eq(2).all()  # retried; finished work kept
    store = FaceStore(out)
    assert len(store) == 14 and not list((out / "shards").glob(".*.tmp"))
    # the failure is recorded: a re-run has nothing left to do
    assert prepare_dataset(scan, out, CONFIG).processed == 0


def test_client_memory_does_not_grow_with_the_number_of_videos(tmp_path, scheduler):
    """Python allocations of the client (tracemalloc) over 10 and 40 videos of 320x320 faces.

    What remains is Dask's own bounded log of each connection's last 1000 messages, a few
    KB per task: far below the 9 MB of faces the 30 extra videos made.
    """
    video = tmp_path / "face.mp4"
    write_video(video, face_frames(2))
    config = PrepareConfig(frames=FrameSampling(max_frames=1), faces=FaceDetection(size=320))

    def peak(count: int) -> int:
        videos = [Video(path=video, label=0, key=f"{count}/{i:04d}.mp4") for i in range(count)]
        shards = tmp_path / str(count)
        shards.mkdir()
        tracemalloc.start()
        try:
            records = sum(1 for _ in dask_runner(client, config, in_flight=4)(videos, shards))
            highest = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert records == count and len(list(shards.glob("*.npy"))) == count
        return highest

    with cluster_client(scheduler=scheduler) as client:
        peak(4)  # warm up: the workers load MTCNN, the client its caches
        small, large = peak(10), peak(40)
    faces_of_30_videos = 30 * 320 * 320 * 3
    assert large - small < faces_of_30_videos / 10, (small, large)


def test_default_local_cluster_and_joblib_backend():
    from joblib import Parallel, delayed
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    with cluster_client(workers=2) as client:
        assert isinstance(client.cluster, LocalCluster)
        assert sorted(client.nthreads().values()) == [1, 1]
        settings = client.run_on_scheduler(lambda dask_scheduler: (dask_scheduler.allowed_failures,
                                                                   dask_scheduler.WORKER_SATURATION))
        assert settings == (2, 1.0)  # 2 re-runs after a worker died; one task per worker at a time
        pids = set(client.run(os.getpid).values())
        assert os.getpid() not in pids and len(pids) == 2
        rng = np.random.default_rng(0)
        x = rng.normal(size=(200, 5))
        y = (x[:, 0] + 0.3 * rng.normal(size=200) > 0).astype(int)
        with joblib_on_cluster(client):
            ran_in = set(Parallel(n_jobs=2)(delayed(os.getpid)() for _ in range(6)))
            scores = cross_val_score(LogisticRegression(), x, y, cv=4, n_jobs=2)
    assert ran_in <= pids
    assert np.allclose(scores, cross_val_score(LogisticRegression(), x, y, cv=4))


def test_slurm_cluster_from_a_config_file(tmp_path, monkeypatch, capsys):
    """dask-jobqueue end to end, with stand-ins for sbatch/scancel that run the job script here."""
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\n"
        f'cp "$1" {jobs}/$$.sh\n'
        f"setsid sh {jobs}/$$.sh > {jobs}/$$.log 2>&1 < /dev/null &\n"
        f"echo $! > {jobs}/$$.pid\n"
        'echo "Submitted batch job $!"\n'
    )
    (bin_dir / "scancel").write_text('#!/bin/sh\nfor job in "$@"; do kill -TERM -- "-$job"; done\n')
    for tool in ("sbatch", "scancel"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = tmp_path / "slurm.yaml"
    config.write_text("slurm:\n  cores: 2\n  memory: 4GB\n  walltime: '00:10:00'\n  queue: short\n"
                      "  job_extra_directives: ['--comment=unmask-test']\n  interface: lo\n")
    root = make_ffpp_tree(tmp_path / "ff", ids=("001", "002"))
    try:
        code = main(["prepare", str(root), "--out", str(tmp_path / "faces"), "--size", "48", "--cluster", "slurm",
                     "--jobs", "1", "--cluster-config", str(config), "--json"])
    finally:
        for pid_file in jobs.glob("*.pid"):  # scancel ran on close; make sure, by process group id
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert code == 0 and json.loads(capsys.readouterr().out)["status_counts"] == {"ok": 3, "no-face": 1}
    script = next(jobs.glob("*.sh")).read_text()
    for line in ("#SBATCH -p short", "#SBATCH --cpus-per-task=2", "#SBATCH -t 00:10:00",
                 "#SBATCH --comment=unmask-test", "--nthreads 1", "--nworkers 2"):
        assert line in script


def test_cluster_options_are_checked_with_one_clear_line(tmp_path, capsys):
    with pytest.raises(UnmaskError, match="either --scheduler .* or --cluster"):
        check_cluster_options(scheduler="tcp://head:8786", cluster="slurm")
    with pytest.raises(UnmaskError, match="--jobs and --cluster-config go with --cluster"):
        check_cluster_options(jobs=4)
    with pytest.raises(UnmaskError, match="--workers sizes the local cluster"):
        check_cluster_options(scheduler="tcp://head:8786", workers=4)
    with pytest.raises(UnmaskError, match="needs 'cores' per job"):
        check_cluster_options(cluster="pbs")
    (tmp_path / "bad.yaml").write_text("cores: [8\n")
    with pytest.raises(UnmaskError, match="not valid YAML or JSON"):
        read_cluster_config(tmp_path / "bad.yaml", "slurm")
    (tmp_path / "lsf.json").write_text(json.dumps({"jobqueue": {"lsf": {"cores": 8, "memory": "32GB"}}}))
    assert read_cluster_config(tmp_path / "lsf.json", "lsf") == {"cores": 8, "memory": "32GB"}
    with pytest.raises(UnmaskError, match="has no 'slurm' section"):
        read_cluster_config(tmp_path / "lsf.json", "slurm")
    with pytest.raises(UnmaskError, match="`bsub`, which is not on PATH"):
        check_cluster_options(cluster="lsf", config_file=tmp_path / "lsf.json")
    assert cluster_runner(CONFIG, workers=1) is None  # one local worker: in this process, no cluster
    # through the CLI: an unreachable scheduler is one line and exit code 2
    for label in ("real", "fake"):
        (tmp_path / "d" / label).mkdir(parents=True)
        write_video(tmp_path / "d" / label / "x.mp4", face_frames(2))
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code = main(["prepare", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("unmask prepare: error: cannot reach Dask scheduler at tcp://127.0.0.1:9: ")


def test_check_on_a_cluster_gives_the_local_verdicts(tmp_path, scheduler, short_face_video, faceless_video,
                                                     broken_files, capsys):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for name, source in (("face.mp4", short_face_video), ("empty.mp4", faceless_video),
                         ("notes.mp4", broken_files["text"])):
        (folder / name).write_bytes(source.read_bytes())
    assert main(["check", str(folder), "--frames", "4", "--json"]) == 1  # one unreadable file
    local = {Path(r["path"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    reports = tmp_path / "reports"
    assert main(["check", str(folder), "--frames", "4", "--json", "--scheduler", scheduler,
                 "--report-dir", str(reports)]) == 1
    remote = {Path(r["path"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(remote) == {"face.mp4", "empty.mp4", "notes.mp4"}
    # the results came back from the workers without their model: the reports are drawn with the client's
    assert {Path(r["report"]).name for r in remote.values()} == {"face.html", "empty.html", "notes.html"}
    face_report = (reports / "face.html").read_text(encoding="utf-8")
    assert f"face.mp4: {remote['face.mp4']['verdict']}" in face_report and 'class="face' in face_report
    for name in remote:
        assert remote[name]["verdict"] == local[name]["verdict"]
        if local[name]["fake_probability"] is not None:
            assert abs(remote[name]["fake_probability"] - local[name]["fake_probability"]) < 1e-4
