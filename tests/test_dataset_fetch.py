"""`unmask dataset fetch` driving a stand-in for the official download script: the ROOT must end
complete and byte-identical to the stand-in's source, with no partial file left, through failed
runs, dead servers, truncated files and Ctrl+C."""
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_dataset_check import SMALL_SPLITS, make_tree, write_splits

from unmask.cli import main
from unmask.dataset_check import TEMP_NAME, inspect_video, videos_folder
from unmask.dataset_fetch import FetchSettings, fetch_dataset

STAND_IN = '''\
"""Stand-in for the official FaceForensics++ download script: its command line, its TOS prompt, its
temporary files and skipping of existing ones; files come from a local tree, with failures."""
import argparse, json, os, random, sys, tempfile, time
from pathlib import Path

DATASETS = {"original": "original_sequences/youtube", "Deepfakes": "manipulated_sequences/Deepfakes",
            "DeepFakeDetection_original": "original_sequences/actors"}
parser = argparse.ArgumentParser()
parser.add_argument("output_path")
parser.add_argument("-d", "--dataset", default="all", choices=list(DATASETS) + ["all"])
parser.add_argument("-c", "--compression", default="raw", choices=["raw", "c23", "c40"])
parser.add_argument("-t", "--type", default="videos", choices=["videos", "masks", "models"])
parser.add_argument("-n", "--num_videos", type=int)
parser.add_argument("--server", default="EU", choices=["EU", "EU2", "CA"])
args = parser.parse_args()
print("By pressing any key to continue you confirm that you have agreed to the FaceForensics terms of use")
input("")
config = json.loads(os.environ["STAND_IN"])
runs = Path(config["state"])
run = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(run))
with open(config["log"], "a") as log:
    log.write(json.dumps([args.dataset, args.compression, args.server]) + "\\n")
if args.server in config["dead"]:
    sys.exit("<urlopen error [Errno 111] Connection refused>")
rng = random.Random(config["seed"] * 1000 + run)
part = os.path.join(DATASETS[args.dataset], args.compression, args.type)
source, out = Path(config["source"], part), Path(args.output_path, part)
out.mkdir(parents=True, exist_ok=True)
for path in sorted(source.iterdir()):
    final = out / path.name
    if final.exists():
        print("WARNING: skipping download of existing file " + str(final))
        continue
    handle, tmp = tempfile.mkstemp(dir=out)
    data, roll = path.read_bytes(), rng.random()
    with os.fdopen(handle, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(config["delay"])
        if run in config["hang"]:
            time.sleep(600)  # a server that stops sending, and urlretrieve has no timeout
        if roll < config["fail"]:
            sys.exit("urllib.error.ContentTooShortError: retrieval incomplete")  # the temporary file stays
        if roll >= config["fail"] + config["truncate"]:  # else: the server sent half, unannounced
            f.write(data[len(data) // 2:])
    os.rename(tmp, final)
'''


def tree_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """What the servers hold: originals and Deepfakes at c23 for the small official-style lists."""
    root = tmp_path_factory.mktemp("server")
    make_tree(root)
    return root


@pytest.fixture
def stand_in(tmp_path, source, monkeypatch):
    """Write the stand-in script; returns a function that configures it and the path of its run log."""
    script = tmp_path / "download-FaceForensics.py"
    script.write_text(STAND_IN)
    log = tmp_path / "runs.jsonl"

    def configure(fail=0.0, truncate=0.0, dead=(), delay=0.0, seed=0, hang=()) -> Path:
        monkeypatch.setenv("STAND_IN", json.dumps({
            "source": str(source), "state": str(tmp_path / "run-count"), "log": str(log), "fail": fail,
            "truncate": truncate, "dead": list(dead), "delay": delay, "seed": seed, "hang": list(hang)}))
        return script

    configure.log = log
    return configure


FAST = FetchSettings(server="EU", attempts=30, switch_after=2, backoff_s=0.0, poll_s=0.05)


def runs(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_failing_truncating_runs_end_complete_and_identical(stand_in, source, tmp_path):
    root = tmp_path / "ffpp"
    script = stand_in(fail=0.25, truncate=0.25, dead=["EU"], seed=1)
    events = []
    report = fetch_dataset(root, script, ["original", "Deepfakes"], ["c23"], terms_agreed=True,
                           settings=FAST, splits=SMALL_SPLITS, on_event=events.append)
    assert report.complete and report.check.complete
    assert tree_files(root) == tree_files(source)  # byte-identical; no temporary or partial file left
    servers = [server for _, _, server in runs(stand_in.log)]
    assert servers[:3] == ["EU", "EU", "EU2"]  # a dead server is left after 2 failed runs
    assert any(e.kind == "switch" for e in events) and any(e.kind == "retry" for e in events)
    assert any(a.returncode != 0 and a.server == "EU2" for a in report.attempts)  # the script failed there too
    assert any(a.returncode == 0 and a.removed for a in report.attempts)  # ... and "succeeded" with a cut file
    assert any(TEMP_NAME.fullmatch(Path(r).name) for r in report.removed)
    last = [e for e in events if e.dataset == "Deepfakes"][-1]
    assert (last.kind, last.done, last.total) == ("done", 6, 6)


def test_broken_leftovers_are_fetched_again_and_complete_folders_skipped(stand_in, source, tmp_path):
    root = tmp_path / "ffpp"
    originals = videos_folder(root, "original", "c23")
    originals.mkdir(parents=True)
    (originals / "001.mp4").write_bytes(b"")  # an earlier run's damage
    (originals / "tmpq8z_3k1a").write_bytes(b"partial")
    fakes = videos_folder(root, "Deepfakes", "c23")
    fakes.mkdir(parents=True)
    for name in ("001_002.mp4", "002_001.mp4"):
        (fakes / name).write_bytes((videos_folder(source, "Deepfakes", "c23") / name).read_bytes())
    report = fetch_dataset(root, stand_in(), ["original", "Deepfakes"], ["c23"], terms_agreed=True,
                           settings=FAST, splits=SMALL_SPLITS)
    assert report.complete and tree_files(root) == tree_files(source)
    assert sorted(report.removed[:2]) == ["original_sequences/youtube/c23/videos/001.mp4",
                                          "original_sequences/youtube/c23/videos/tmpq8z_3k1a"]
    assert len(report.attempts) == 2
    again = fetch_dataset(root, stand_in(), ["original", "Deepfakes"], ["c23"], terms_agreed=True,
                          settings=FAST, splits=SMALL_SPLITS)
    assert again.complete and again.attempts == []  # nothing missing: the script is not run at all


def test_a_stalled_run_is_stopped_and_retried(stand_in, source, tmp_path):
    root = tmp_path / "ffpp"
    settings = FetchSettings(server="EU", attempts=3, backoff_s=0.0, poll_s=0.05, stall_s=1.0)
    started = time.monotonic()
    report = fetch_dataset(root, stand_in(hang=[1]), ["original"], ["c23"], terms_agreed=True,
                           settings=settings, splits=SMALL_SPLITS)
    assert time.monotonic() - started < 30
    assert [a.stalled for a in report.attempts] == [True, False]
    assert report.attempts[0].failure.startswith("stalled")
    assert report.complete and len(report.removed) == 1 and TEMP_NAME.fullmatch(Path(report.removed[0]).name)
    assert tree_files(root) == {k: v for k, v in tree_files(source).items() if k.startswith("original")}


def test_gives_up_after_bounded_attempts_cycling_servers(stand_in, tmp_path, capsys):
    root = tmp_path / "ffpp"
    splits = write_splits(tmp_path / "splits")
    stand_in(dead=["EU", "EU2", "CA"])
    code = main(["dataset", "fetch", str(root), "--script", str(tmp_path / "download-FaceForensics.py"),
                 "--method", "original", "--server", "EU2", "--attempts", "5", "--switch-after", "1",
                 "--backoff", "0", "--agree-tos", "--splits", str(splits), "--json"])
    assert code == 1
    document = json.loads(capsys.readouterr().out)
    assert [a["server"] for a in document["attempts"]] == ["EU2", "CA", "EU", "EU2", "CA"]
    assert "Connection refused" in document["attempts"][0]["last_output"]
    assert document["check"]["complete"] is False and len(document["check"]["folders"][0]["missing"]) == 6


def test_cli_prints_progress_and_the_final_check(stand_in, source, tmp_path, capsys):
    root = tmp_path / "ffpp"
    stand_in(fail=0.3, seed=3)
    code = main(["dataset", "fetch", str(root), "--script", str(tmp_path / "download-FaceForensics.py"),
                 "--method", "Deepfakes", "--backoff", "0", "--attempts", "30", "--agree-tos",
                 "--splits", str(write_splits(tmp_path / "splits"))])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Deepfakes c23" in captured.err and "6/6" in captured.err  # the progress bar, on stderr
    assert "complete" in captured.out and "retrying" in captured.err
    assert tree_files(root) == {k: v for k, v in tree_files(source).items() if "Deepfakes" in k}


@pytest.mark.parametrize("change, message", [
    ({"--script": "absent.py"}, "download script not found"),
    ({"--method": "Deepfake"}, "unknown dataset 'Deepfake'"),
    ({"--compression": "c30"}, "unknown compression 'c30'"),
    ({"--server": "US"}, "unknown server 'US'"),
    ({"--agree-tos": None}, "--agree-tos"),
    ({"root": "file.txt"}, "is not a folder"),
    ({"root": "no/such/place"}, "does not exist"),
])
def test_cli_bad_input_is_one_line_and_exit_2(stand_in, tmp_path, capsys, monkeypatch, change, message):
    monkeypatch.chdir(tmp_path)
    stand_in()
    (tmp_path / "file.txt").write_text("x")
    options = {"root": "ffpp", "--script": "download-FaceForensics.py", "--agree-tos": ""}
    options.update(change)
    args = ["dataset", "fetch", options.pop("root")]
    for key, value in options.items():
        args += [key] if value == "" else [] if value is None else [key, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not stand_in.log.exists()  # the script never ran


@pytest.mark.parametrize("answer, code", [("y", 0), ("n", 2)])
def test_terms_are_asked_once_in_a_terminal(stand_in, tmp_path, capsys, monkeypatch, answer, code):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Terminal(answer + "\n"))
    stand_in()
    assert main(["dataset", "fetch", str(tmp_path / "ffpp"), "--script", str(tmp_path / "download-FaceForensics.py"),
                 "--method", "original", "--splits", str(write_splits(tmp_path / "splits"))]) == code
    err = capsys.readouterr().err
    assert "agreed to the FaceForensics terms of use" in err
    ran = runs(stand_in.log) if stand_in.log.exists() else []
    assert len(ran) == (1 if answer == "y" else 0)  # and the script itself was not asked: it got the answer


def test_ctrl_c_stops_cleanly_and_a_rerun_completes(stand_in, source, tmp_path):
    root = tmp_path / "ffpp"
    script = stand_in(delay=0.3)
    splits = write_splits(tmp_path / "splits")
    command = [sys.executable, "-m", "unmask", "dataset", "fetch", str(root), "--script", str(script),
               "--method", "original", "--agree-tos", "--splits", str(splits)]
    # SIG_DFL in the child: a suite run as a background job inherits SIGINT ignored, and Python
    # then never turns Ctrl+C into KeyboardInterrupt
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    folder = videos_folder(root, "original", "c23")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len([p for p in folder.glob("*.mp4")]) < 2:
        time.sleep(0.05)
    time.sleep(0.15)  # mid-way through the next file: its temporary file is half written
    assert any(TEMP_NAME.fullmatch(p.name) for p in folder.iterdir())
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("unmask dataset: interrupted")
    left = sorted(p.name for p in folder.iterdir())
    assert 2 <= len(left) < 6 and not any(TEMP_NAME.fullmatch(n) for n in left)  # whole files only
    assert all(inspect_video(folder / n) is None for n in left)
    report = fetch_dataset(root, stand_in(), ["original"], ["c23"], terms_agreed=True,
                           settings=FAST, splits=SMALL_SPLITS)
    assert report.complete
    assert tree_files(root) == {k: v for k, v in tree_files(source).items() if k.startswith("original")}
    assert runs(stand_in.log)[-1] == ["original", "c23", "EU"]
