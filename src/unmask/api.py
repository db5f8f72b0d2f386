"""The Python API: check videos and photos from your own code, with the model loaded once.

    from unmask import Detector

    detector = Detector()                          # the model shipped with unmask
    result = detector.check("video.mp4")
    print(result.verdict, result.fake_probability, result.certainty)
    result.save_report("report.html")
    for result in detector.check_many(["videos/", "clip.mp4"]):
        print(result.path, result.verdict)

It is ``unmask check`` without the command line, and what ``unmask check``, the web app and the
Dask workers call themselves: the same checker (``unmask.check``), the same record
(``Result.to_dict()`` is what ``unmask check --json`` prints) and the same report (``unmask.report``).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from unmask.check import Checker, CheckResult, find_inputs
from unmask.config import CheckSettings
from unmask.errors import UnmaskError
from unmask.report import render_report, write_report

DEFAULT_MODEL = "default"
"""The name of the model shipped with unmask (``Detector()`` and ``Detector("default")``)."""


class Result(CheckResult):
    """One video's verdict and what it rests on: every field of ``CheckResult``.

    ``verdict`` is FAKE, REAL, NO FACE FOUND or ERROR (then ``error`` says why);
    ``fake_probability`` is the most suspicious face track's score (None without a verdict),
    ``certainty`` says how far it is from ``threshold`` given the faces seen; ``faces``
    (``FaceScore``: frame, time, box, scores), ``tracks`` (one per person) and ``warnings``
    (damaged frames, a still image, little evidence) say what the verdict rests on.
    """

    _checker: Checker | None = None
    """The checker that made it, whose model draws the report's heatmaps (not part of the record)."""

    def save_report(self, path: str | os.PathLike) -> Path:
        """Write the self-contained HTML report (what ``unmask check --report`` writes) to ``path``."""
        return write_report(Path(path), self, self._drawing_checker())

    def report_html(self) -> str:
        """The self-contained HTML report as text (what the web app sends with ``report=true``)."""
        return render_report(self, self._drawing_checker())

    def _drawing_checker(self) -> Checker:
        if self._checker is None:
            raise UnmaskError("this result holds no model to draw its report with (it was copied out of the "
                              "process that checked the video); check the video again with a Detector")
        return self._checker

    def __getstate__(self) -> dict:
        """Pickled without its checker: the model and its locks stay in the process that loaded them."""
        return {key: value for key, value in self.__dict__.items() if key != "_checker"}


class Detector:
    """Tells faces made with deepfake tools from real ones, in videos and photos.

    ``model``: the model shipped with unmask (None or ``"default"``) or a model folder written by
    ``unmask train``. The keyword arguments are ``unmask check``'s options (``config.CheckSettings``
    documents each): ``frames`` looked at per video, faces kept over ``min_confidence``, how a
    track's face scores become its score (``aggregate``: mean, median, max, trimmed-mean; None: the
    model card's), frames scaled down to ``max_side`` pixels (None: never), ``device`` (auto, cpu,
    cuda), and the tracking thresholds. The model is loaded once, here; one detector checks any
    number of videos and may be shared between threads. Bad input raises ``UnmaskError``.
    """

    def __init__(self, model: str | os.PathLike | None = None, *,
                 frames: int = CheckSettings.frames,
                 min_confidence: float = CheckSettings.min_confidence,
                 aggregate: str | None = CheckSettings.aggregate,
                 max_side: int | None = CheckSettings.max_side,
                 device: str = CheckSettings.device,
                 track_iou: float = CheckSettings.track_iou,
                 min_face_share: float = CheckSettings.min_face_share,
                 min_track_share: float = CheckSettings.min_track_share):
        self.settings = CheckSettings(frames=frames, min_confidence=min_confidence, aggregate=aggregate,
                                      max_side=max_side, device=device, track_iou=track_iou,
                                      min_face_share=min_face_share, min_track_share=min_track_share)
        self.folder = model_folder(model)
        """The model folder given (None: the shipped model), as the Dask workers load it again."""
        self._checker = Checker(self.folder, self.settings)
        self._checker.result_type = Result

    @property
    def model(self) -> dict:
        """The model as each record names it: name, unmask version, what it was trained on, folder."""
        return self._checker.model_info()

    @property
    def card(self) -> dict:
        """The model card: what the model is, how its faces were made, how it was trained and measured."""
        return self._checker.model.card

    @property
    def threshold(self) -> float:
        """A face track scoring over this is called FAKE (the model card's decision threshold)."""
        return self._checker.model.threshold

    @property
    def aggregate(self) -> str:
        """How a track's face scores become its score: the one asked for, else the model card's."""
        return self._checker.aggregate

    def check(self, video: str | os.PathLike, name: str | None = None) -> Result:
        """Check one video or photo. A file that cannot be decoded gives verdict ERROR with the
        reason (as in a batch); a path that is missing or a folder raises ``UnmaskError``.
        ``name``: what the result calls the video (default: its path), e.g. an upload's own file
        name while it is read from a temporary file whose name must not show."""
        path = Path(video)
        if path.is_dir():
            raise UnmaskError(f"{path} is a folder; check_many checks every video in it")
        if not path.exists():
            raise UnmaskError(f"no such file: {path}")
        return self.adopt(self._checker.check(path, name=name))

    def check_many(self, paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[Result]:
        """Check each video or photo (a folder: every one under it, as ``unmask check FOLDER`` finds them),
        yielding results in order while the next videos decode. Whatever is wrong with one path
        (missing, unreadable, a folder with nothing to check) is its result with verdict ERROR and
        the reason, never an exception, so the rest are still checked."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        for path, result in self._checker.check_many(_expanded(paths)):
            if path.is_dir():
                result.error = "no videos to check in this folder"
            yield self.adopt(result)

    def adopt(self, result: Result) -> Result:
        """``result``, its report drawn with this detector's model: for a result checked in another
        process (a Dask worker's), which comes back without one."""
        result._checker = self._checker
        return result

    def __repr__(self) -> str:
        return f"Detector(model={self.model['name']!r}, settings={self.settings})"


def model_folder(model: str | os.PathLike | None) -> Path | None:
    """The folder a model argument names (None: the shipped model)."""
    if model is None or model == DEFAULT_MODEL:
        return None
    folder = Path(model)
    if not folder.exists():
        raise UnmaskError(f"no model folder {str(folder)!r}: give a folder written by `unmask train`, or "
                          f"{DEFAULT_MODEL!r} for the model shipped with unmask")
    return folder


def _expanded(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Each path, a folder replaced by what is in it to check; a folder without any stays, to become
    its error result."""
    for given in paths:
        path = Path(given)
        yield from (find_inputs(path) or [path]) if path.is_dir() else [path]
