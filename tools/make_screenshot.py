"""Remake the README's picture of a report (docs/report.png).

What a new user's first commands give: `unmask sample` (NASA's public-domain portrait) and
`unmask check sample.mp4 --report report.html`, rendered by headless Chromium at 1200x1400 and
reduced to a 256-colour PNG, so the picture stays small in the repository.

Needs chromium (Debian: apt-get install chromium).

Usage: python tools/make_screenshot.py [--out docs/report.png]
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image  # Pillow comes with matplotlib, which the reports' plots need

REPO = Path(__file__).resolve().parents[1]
WINDOW = (1200, 1400)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def render_report(work: Path) -> Path:
    """The sample video's report, made by the `unmask` command as a user runs it."""
    unmask = [sys.executable, "-m", "unmask"]
    subprocess.run([*unmask, "sample", "sample.mp4"], cwd=work, check=True)
    subprocess.run([*unmask, "check", "sample.mp4", "--report", "report.html"], cwd=work, check=True)
    return work / "report.html"


def screenshot(page: Path, out: Path) -> None:
    """The top of ``page`` as headless Chromium shows it in a WINDOW-sized window."""
    browser = next(filter(None, map(shutil.which, BROWSERS)), None)
    if browser is None:
        raise SystemExit("make_screenshot: no chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                        page.as_uri()], check=True, capture_output=True, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "report.png", help="PNG to write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        raw = Path(work) / "screenshot.png"
        screenshot(render_report(Path(work)), raw)
        image = Image.open(raw).convert("RGB")
        # 256 colours: the page is flat colour and text; octree keeps the gauge's gradient smooth
        image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1000:.0f} KB)")


if __name__ == "__main__":
    main()
