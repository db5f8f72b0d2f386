"""The report a person reads: one self-contained HTML file (images embedded, CSS inline, no
links out), so it opens offline, can be mailed, and shows the same thing in the web page.

It shows what the verdict rests on: the faces that were scored, how the score moved over
the video, and for CNN models a Grad-CAM heatmap of what drove each face's score.
"""
from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

import cv2
import numpy as np

from unmask import __version__
from unmask.check import ERROR, FAKE, NO_FACE, REAL, Checker, CheckResult, face_heatmaps
from unmask.models.io import LoadedModel
from unmask.util import atomic_path

THUMB = 144
"""Side of the face thumbnails in pixels: big enough to judge, small enough for 60 of them."""
MAX_FACES_SHOWN = 64
"""Beyond this many faces the grid shows an even selection (the timeline still has them all)."""
TRACK_COLOURS = ("#d84315", "#1565c0", "#6a1b9a", "#00838f", "#9e9d24", "#4e342e")

_STYLE = """
:root { --fake: #c62828; --real: #2e7d32; --noface: #546e7a; --error: #b45309; --ink: #1f2933;
        --muted: #61707f; --line: #e3e8ee; --card: #ffffff; --page: #f4f6f8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--page); color: var(--ink);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 980px; margin: 0 auto; padding: 24px 20px 40px; }
.banner { border-radius: 14px; padding: 22px 26px; color: #fff; display: flex; flex-wrap: wrap;
          align-items: center; gap: 8px 28px; box-shadow: 0 2px 10px rgba(0,0,0,.12); }
.banner.FAKE { background: linear-gradient(135deg, #b71c1c, #e53935); }
.banner.REAL { background: linear-gradient(135deg, #1b5e20, #43a047); }
.banner.NOFACE { background: linear-gradient(135deg, #37474f, #78909c); }
.banner.ERROR { background: linear-gradient(135deg, #92400e, #d97706); }
.verdict { font-size: 38px; font-weight: 800; letter-spacing: .04em; }
.banner .what { font-size: 17px; opacity: .95; }
.banner .what b { font-size: 22px; }
.banner .warning { margin-top: 6px; font-size: 14px; background: rgba(0,0,0,.18); padding: 4px 8px; border-radius: 4px; }
.banner .file { flex-basis: 100%; font-size: 14px; opacity: .85; word-break: break-all; }
.gauge { position: relative; height: 12px; border-radius: 6px; margin: 18px 4px 30px;
         background: linear-gradient(90deg, #43a047, #fdd835 50%, #e53935); }
.gauge .mark { position: absolute; top: -5px; width: 4px; height: 22px; margin-left: -2px;
               background: var(--ink); border-radius: 2px; }
.gauge .threshold { position: absolute; top: -4px; height: 20px; border-left: 2px dashed #fff; }
.gauge .labels { position: absolute; top: 18px; left: 0; right: 0; font-size: 12px; color: var(--muted); }
.gauge .labels span { position: absolute; transform: translateX(-50%); white-space: nowrap; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 14px; margin: 6px 0 8px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 14px 18px; }
.card h3 { margin: 0 0 6px; font-size: 13px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); }
dl { display: grid; grid-template-columns: auto 1fr; gap: 2px 14px; margin: 0; font-size: 14px; }
dt { color: var(--muted); } dd { margin: 0; word-break: break-word; }
.model-name { margin: 0 0 6px; font-weight: 600; font-size: 14px; }
section { margin-top: 26px; }
h2 { font-size: 19px; margin: 0 0 10px; }
p.note { color: var(--muted); font-size: 14px; margin: 4px 0 12px; }
.message { background: var(--card); border: 1px solid var(--line); border-left: 5px solid var(--noface);
           border-radius: 10px; padding: 14px 18px; margin: 18px 0 14px; }
.message.ERROR { border-left-color: var(--error); }
table { border-collapse: collapse; width: 100%; background: var(--card); border: 1px solid var(--line);
        border-radius: 12px; overflow: hidden; font-size: 14px; }
th, td { text-align: left; padding: 8px 14px; border-bottom: 1px solid var(--line); }
th { background: #f8fafc; color: var(--muted); font-weight: 600; }
tr:last-child td { border-bottom: 0; }
.pill { display: inline-block; padding: 1px 9px; border-radius: 10px; color: #fff; font-size: 12px; font-weight: 700; }
.pill.fake { background: var(--fake); } .pill.real { background: var(--real); }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 6px; }
img.plot { width: 100%; background: #fff; border: 1px solid var(--line); border-radius: 12px; }
.track-title { font-size: 15px; margin: 18px 0 8px; color: var(--ink); }
.faces { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; }
.face { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 10px; overflow: hidden; }
.face.fake { border-top: 4px solid var(--fake); } .face.real { border-top: 4px solid var(--real); }
.faces.cam { grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); }
.face .pics { display: flex; }
.face .pics img { width: 100%; display: block; aspect-ratio: 1; }
.face.cam .pics img { width: 50%; }
.face .caption { padding: 6px 9px 8px; font-size: 12.5px; color: var(--muted); line-height: 1.35; }
.face .caption b { color: var(--ink); font-size: 14px; }
footer { margin-top: 34px; color: var(--muted); font-size: 13px; border-top: 1px solid var(--line); padding-top: 12px; }
"""


def render_report(result: CheckResult, source: Checker | LoadedModel) -> str:
    """The HTML report of one check; ``source`` is the checker (or model) that made ``result``,
    used for the Grad-CAM heatmaps of CNN models."""
    model = source.model if isinstance(source, Checker) else source
    shown = _shown(len(result.faces))
    crops = [result.crops[i] for i in shown]
    heatmaps = source.heatmaps(crops) if isinstance(source, Checker) else face_heatmaps(model, crops)
    name = Path(result.path).name or result.path
    body = [_banner(result, name)]
    if result.verdict in (FAKE, REAL):
        body.append(_gauge(result.fake_probability, result.threshold))
    else:
        body.append(_message(result))
    body.append(_facts(result, model))
    if result.faces:
        if len(result.tracks) > 1:
            body.append(_tracks(result))
        body.append(_timeline(result))
        body.append(_faces(result, shown, heatmaps, model))
    body.append(_reading_guide(result))
    title = f"unmask: {name}: {result.verdict}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escaped(title)}</title><style>{_STYLE}</style></head>\n<body><main>\n"
            + "\n".join(body) + "\n</main></body></html>\n")


def write_report(path: Path, result: CheckResult, source: Checker | LoadedModel) -> Path:
    """Write the report atomically: a reader never sees half a file."""
    text = render_report(result, source)
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


# --------------------------------------------------------------------------- parts
def escaped(value) -> str:
    """Text made safe to put in HTML, attribute values included."""
    return html.escape(str(value), quote=True)


def probability_text(value: float | None) -> str:
    """A probability as the page shows it: two decimals, or n/a."""
    return "n/a" if value is None else f"{value:.2f}"


def _banner(result: CheckResult, name: str) -> str:
    css = {FAKE: "FAKE", REAL: "REAL", NO_FACE: "NOFACE"}.get(result.verdict, "ERROR")
    what = ""
    if result.verdict in (FAKE, REAL):
        what = (f"<div class=\"what\">fake probability <b>{probability_text(result.fake_probability)}</b> "
                f"&middot; {escaped(result.certainty)}</div>")
    warnings = "".join(f"<div class=\"warning\">&#9888; {escaped(w)}</div>" for w in result.warnings)
    return (f"<header class=\"banner {css}\"><div class=\"verdict\">{escaped(result.verdict)}</div>{what}"
            f"<div class=\"file\">{escaped(name)}</div>{warnings}</header>")


def _gauge(p_fake: float, threshold: float) -> str:
    """Where the score sits between surely real (0) and surely fake (1), and the threshold."""
    return (f"<div class=\"gauge\" title=\"fake probability {probability_text(p_fake)}, threshold {probability_text(threshold)}\">"
            f"<div class=\"threshold\" style=\"left:{100 * threshold:.1f}%\"></div>"
            f"<div class=\"mark\" style=\"left:{100 * p_fake:.1f}%\"></div>"
            f"<div class=\"labels\"><span style=\"left:0%;transform:none\">0 real</span>"
            f"<span style=\"left:{100 * threshold:.1f}%\">threshold {probability_text(threshold)}</span>"
            f"<span style=\"right:0;left:auto;transform:none\">fake 1</span></div></div>")


def _message(result: CheckResult) -> str:
    if result.verdict == ERROR:
        text = f"This file could not be checked: {result.error}"
    else:
        text = (f"No face was found in the {result.frames_sampled} frames looked at (spread over the whole "
                "video), so there is nothing to judge. Faces that are very small, strongly turned away or "
                "partly hidden are not detected.")
    return f"<div class=\"message {escaped(result.verdict if result.verdict == ERROR else '')}\">{escaped(text)}</div>"


def definition_list(rows: list[tuple[str, str]]) -> str:
    """(term, description) rows as an HTML <dl>, both escaped."""
    return "<dl>" + "".join(f"<dt>{escaped(k)}</dt><dd>{escaped(v)}</dd>" for k, v in rows) + "</dl>"


def _facts(result: CheckResult, model: LoadedModel) -> str:
    video = [("file", result.path)]
    analysis = [("time taken", f"{result.elapsed_s:.1f} s")]
    if result.frame_count:
        video += [("duration", f"{result.duration_s:.1f} s"), ("frames", f"{result.frame_count} at {result.fps:g} fps"),
                  ("size", f"{result.width} x {result.height}")]
        asked = f" of {result.frames_asked} asked" if result.frames_asked != result.frames_sampled else ""
        analysis = [("frames looked at", f"{result.frames_sampled}{asked}, spread evenly over the video"),
                    ("faces scored", str(len(result.faces))), ("face tracks", str(len(result.tracks))), *analysis]
    card = model.card
    kind = "CNN" if card.get("kind") == "torch" else "classical (scikit-learn)"
    about = [("kind", f"{kind}, {card['estimator']['name']}"), ("threshold", probability_text(result.threshold)),
             ("track score", f"{result.aggregate} of its faces")]
    if result.model.get("trained"):
        about.append(("trained on", str(result.model["trained"])))
    return ("<div class=\"cards\">"
            f"<div class=\"card\"><h3>Video</h3>{definition_list(video)}</div>"
            f"<div class=\"card\"><h3>Analysis</h3>{definition_list(analysis)}</div>"
            f"<div class=\"card\"><h3>Model</h3><p class=\"model-name\">{escaped(result.model.get('name', ''))}</p>"
            f"{definition_list(about)}</div></div>")


def _colour(track: int) -> str:
    return TRACK_COLOURS[track % len(TRACK_COLOURS)]


def _tracks(result: CheckResult) -> str:
    rows = []
    for t in result.tracks:
        verdict = FAKE if t["fake_probability"] > result.threshold else REAL
        rows.append(f"<tr><td><span class=\"swatch\" style=\"background:{_colour(t['track'])}\"></span>"
                    f"track {t['track']}</td><td>{t['faces']}</td><td>{probability_text(t['fake_probability'])}</td>"
                    f"<td><span class=\"pill {verdict.lower()}\">{verdict}</span></td></tr>")
    return ("<section><h2>People in the video</h2><p class=\"note\">Each face track is one person followed "
            "through the video; the verdict follows the most suspicious one.</p><table><tr><th>face track</th>"
            "<th>faces</th><th>fake probability</th><th>on its own</th></tr>" + "".join(rows) + "</table></section>")


def _timeline(result: CheckResult) -> str:
    png = _timeline_png(result)
    return ("<section><h2>Score over the video</h2><p class=\"note\">Fake probability of each face scored, "
            "at its time in the video; above the dashed threshold line a face looks fake.</p>"
            f"<img class=\"plot\" alt=\"face scores over time\" src=\"data:image/png;base64,{png}\"></section>")


def _timeline_png(result: CheckResult) -> str:
    from matplotlib.figure import Figure  # the object API: no global state, safe in server threads

    fig = Figure(figsize=(9, 2.8), dpi=110)
    ax = fig.add_subplot()
    ax.axhspan(result.threshold, 1.04, color="#e53935", alpha=0.06, lw=0)
    ax.axhline(result.threshold, color="#37474f", ls="--", lw=1.2, label=f"threshold {result.threshold:.2f}")
    for track in sorted({f.track for f in result.faces}):
        faces = [f for f in result.faces if f.track == track]
        ax.plot([f.time for f in faces], [f.fake_probability for f in faces], "-o", ms=5, lw=1.8,
                color=_colour(track), label=f"track {track}")
    ax.set_xlim(0, max(result.duration_s, max(f.time for f in result.faces)) or 1.0)
    ax.set_ylim(-0.04, 1.04)
    ax.set_xlabel("time in the video (s)")
    ax.set_ylabel("fake probability")
    ax.grid(alpha=0.25)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _jpeg(image: np.ndarray) -> str:
    shrink = cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    _, data = cv2.imencode(".jpg", cv2.cvtColor(shrink, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return base64.b64encode(data.tobytes()).decode("ascii")


def _overlay(face: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The face with the heatmap laid over it: strong colour where the map is high, the face elsewhere."""
    heat = cv2.resize(heat.astype(np.float32), face.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    colour = cv2.cvtColor(cv2.applyColorMap((255 * heat).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    alpha = (0.65 * heat)[..., None]
    return (face * (1 - alpha) + colour * alpha).astype(np.uint8)


def _shown(count: int) -> list[int]:
    if count <= MAX_FACES_SHOWN:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, MAX_FACES_SHOWN)})


def _faces(result: CheckResult, shown: list[int], heatmaps: np.ndarray | None, model: LoadedModel) -> str:
    """The faces at ``shown`` (indices into ``result.faces``) grouped by track, most suspicious first;
    ``heatmaps`` are those faces' Grad-CAM maps, in the same order."""
    if heatmaps is not None:
        note = ("Beside each face, a Grad-CAM heatmap: red marks the regions that pushed the score "
                "towards fake the most (each map is scaled to its own peak).")
        if model.needs_motion:
            note += (" The map shows what the CNN saw in the crop; the score also weighs how the face changed "
                     "over the next frames, which has no map.")
    else:
        note = (f"Heatmaps are not available for this model kind ({escaped(model.card['estimator']['name'])} on "
                f"{escaped(model.card.get('features', 'features'))}): only CNN models can show what drove a score.")
    parts = [f"<section><h2>The faces it looked at</h2><p class=\"note\">{note}"
             + (f" Showing {len(shown)} of {len(result.faces)} faces." if len(shown) < len(result.faces) else "")
             + "</p>"]
    by_track: dict[int, list[int]] = {t["track"]: [] for t in result.tracks}  # most suspicious first
    for position, i in enumerate(shown):
        by_track[result.faces[i].track].append(position)
    score = {t["track"]: t["fake_probability"] for t in result.tracks}
    for track, positions in by_track.items():
        if not positions:
            continue
        if len(result.tracks) > 1:
            parts.append(f"<h3 class=\"track-title\"><span class=\"swatch\" style=\"background:{_colour(track)}\">"
                         f"</span>track {track}: fake probability {probability_text(score[track])}</h3>")
        cells = []
        for position in positions:
            face, crop = result.faces[shown[position]], result.crops[shown[position]]
            fake = face.fake_probability > result.threshold
            pics = f"<img alt=\"face at frame {face.frame}\" src=\"data:image/jpeg;base64,{_jpeg(crop)}\">"
            if heatmaps is not None:
                pics += (f"<img alt=\"heatmap of face at frame {face.frame}\" "
                         f"src=\"data:image/jpeg;base64,{_jpeg(_overlay(crop, heatmaps[position]))}\">")
            cells.append(f"<figure class=\"face {'fake' if fake else 'real'}{' cam' if heatmaps is not None else ''}\">"
                         f"<div class=\"pics\">{pics}</div><figcaption class=\"caption\">"
                         f"<b>{probability_text(face.fake_probability)}</b> fake<br>frame {face.frame} &middot; {face.time:.2f} s"
                         "</figcaption></figure>")
        parts.append(f"<div class=\"faces{' cam' if heatmaps is not None else ''}\">" + "".join(cells) + "</div>")
    parts.append("</section>")
    return "".join(parts)


def _reading_guide(result: CheckResult) -> str:
    text = ("How to read this: the model gives every face it finds a probability of being fake. Faces are "
            "followed through the video as tracks (one per person), a track's score is the "
            f"{result.aggregate} of its faces' scores, and the video is called FAKE when its most suspicious "
            f"track scores above the model's threshold ({probability_text(result.threshold)}). The certainty says how far "
            "from the threshold that score is. A REAL verdict is not proof: a detector can miss manipulation "
            "methods it was not trained on, and heavy compression hides their traces.")
    made = time.strftime("%Y-%m-%d %H:%M")
    return f"<footer><p>{escaped(text)}</p><p>Made by unmask {escaped(__version__)} on {escaped(made)}.</p></footer>"
