"""The README stays short and true: its figures are the ones docs/results.md reports, its quick
start runs as written, its commands are the ones CI runs, and its links lead somewhere."""
from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from unmask import Detector
from unmask.sample import make_sample_video

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
DOCS = REPO / "docs"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
FIGURE = re.compile(r"(?<![\w.-])(?:\d+\.\d+(?: ± \d+\.\d+)?|\d+ / \d+)")
"""A measured figure as the docs write one: a decimal, with its spread if it has one, or a count
out of a total (``0.989 ± 0.001``, ``1.18``, ``1 / 29``); not a part of a name (``Apache-2.0``).
Settings are written as code."""


def section(markdown: str, title: str) -> str:
    """The text under the ``## title`` heading, up to the next one."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.MULTILINE | re.DOTALL)
    assert match, f"no section {title!r}"
    return match[1]


def prose(markdown: str) -> str:
    """The text without code: fenced blocks and inline code spans removed."""
    return re.sub(r"`[^`\n]*`", " ", FENCE.sub(" ", markdown))


def figures(markdown: str) -> list[str]:
    """The figures quoted in the prose and tables (not in code)."""
    return FIGURE.findall(prose(markdown))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_is_short():
    assert len(README.splitlines()) < 250


def test_the_figure_finder_sees_figures_and_not_code():
    text = "AUC 0.989 ± 0.001, 1 / 29 false alarms, 1.18 s; `--min-confidence 0.9`, Apache-2.0\n```\n0.42\n```\n"
    assert figures(text) == ["0.989 ± 0.001", "1 / 29", "1.18"]


def test_every_figure_the_readme_quotes_is_in_the_results():
    results = (DOCS / "results.md").read_text(encoding="utf-8")
    quoted = figures(README)
    assert len(quoted) >= 8  # the table of the default model's figures per method at least
    missing = [figure for figure in quoted
               if not re.search(rf"(?<![\d.]){re.escape(figure)}(?!\d)", results)]
    assert missing == [], f"figures in README.md that docs/results.md does not report: {missing}"


def test_the_detector_signature_shown_is_the_real_one():
    shown = [code for _, code in FENCE.findall(section(README, "The Python API")) if code.startswith("Detector(")]
    real = []
    for parameter in inspect.signature(Detector).parameters.values():
        if parameter.kind is parameter.KEYWORD_ONLY and "*" not in real:
            real.append("*")
        real.append(f"{parameter.name}={parameter.default!r}".replace("'", '"'))
    assert [" ".join(code.split()) for code in shown] == [f"Detector({', '.join(real)})"]


def test_the_install_and_test_commands_are_the_ones_ci_runs():
    blocks = [code.strip() for _, code in FENCE.findall(section(README, "Install"))]
    assert blocks == ['pip install torch==2.13.0 -e ".[test]"', "python -m pytest -q"]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert 'python -m pip install --quiet torch==2.13.0 -e ".[test]"' in ci
    assert "\npython -m pytest -q\n" in ci


def test_links_lead_to_files_and_headings_that_exist():
    documents = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    broken = []
    for document in documents:
        text = FENCE.sub(" ", document.read_text(encoding="utf-8"))
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (document.parent / file).resolve() if file else document
            if not linked.exists():
                broken.append(f"{document.name}: {target}")
            elif anchor:
                headings = re.findall(r"^#+ (.+)$", FENCE.sub(" ", linked.read_text(encoding="utf-8")), re.MULTILINE)
                if anchor not in map(slug, headings):
                    broken.append(f"{document.name}: {target}")
    assert broken == []


def test_the_screenshot_is_a_small_png():
    picture = DOCS / "report.png"
    assert "](docs/report.png)" in README
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size < 300_000


def test_the_quick_start_runs_as_written(tmp_path):
    """The README's `unmask sample` / `check` lines and its Python API example, in a fresh folder,
    through the installed `unmask` command (`serve` is left to tests/test_web.py)."""
    scripts = Path(sys.executable).parent
    assert (scripts / "unmask").exists(), f"the unmask command is not installed beside {sys.executable}"
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"}
    (tmp_path / "videos").mkdir()
    make_sample_video(tmp_path / "videos" / "clip.mp4", seconds=1)  # what `videos/` stands for
    commands = [line for line in FENCE.findall(section(README, "Check a video"))[0][1].splitlines()
                if line.startswith("unmask ")]
    assert [line.split()[1] for line in commands] == ["sample", "check", "check", "check"]
    for line in commands:
        run = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, f"{line}\n{run.stdout}{run.stderr}"
    assert (tmp_path / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records] == ["videos/clip.mp4"] and records[0]["verdict"] in ("FAKE", "REAL")

    (tmp_path / "report.html").unlink()
    (python,) = [code for language, code in FENCE.findall(section(README, "The Python API")) if language == "python"]
    run = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    verdict, probability, sure = lines[0].split(" ", 2)
    assert verdict in ("FAKE", "REAL") and 0.0 <= float(probability) <= 1.0
    assert sure in ("very sure", "fairly sure", "unsure")
    assert [line.split()[:2] for line in lines[1:]] == [["sample.mp4", verdict],
                                                        ["videos/clip.mp4", records[0]["verdict"]]]
    assert (tmp_path / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")

