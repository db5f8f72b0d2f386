"""The web page and HTTP API behind `unmask serve`.

One ``Checker`` (detector and model) is loaded per process and shared by a bounded pool of
worker threads. Uploads are streamed to temporary files under our own names while their size
is counted, so an oversized body is refused as soon as it passes the limit, never held in
memory; the content is judged by decoding it, not by its name or declared type.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from unmask import __version__
from unmask.check import ERROR, Checker, CheckResult
from unmask.errors import UnmaskError
from unmask.report import render_report

MULTIPART_SLACK = 64 * 1024
"""Bytes a multipart body may carry beyond the file itself (boundaries, part headers)."""
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
               "script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
"""The page runs only our own script; the report it shows (in a frame) only needs inline CSS and data: images."""
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["video"],
    "properties": {"video": {"type": "string", "format": "binary", "description": "the video file"}}}}}}}
"""The form ``/docs`` shows: the body is parsed by hand (to stream it), so FastAPI cannot infer it."""


class Rejected(Exception):
    """An upload we answer with a clear client error instead of a verdict."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Upload:
    """Streams the first file part of a multipart body into ``dest``, counting its bytes."""

    def __init__(self, boundary: bytes, dest: Path, max_bytes: int):
        self.dest, self.max_bytes = dest, max_bytes
        self.filename: str | None = None
        self.size = 0
        self._handle = None
        self._header, self._headers = b"", {}
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data, "on_part_end": self._part_end})

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header = data[start:end].lower()

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._headers[self._header] = self._headers.get(self._header, b"") + data[start:end]

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"filename" in options and self.filename is None:
            self.filename = _display_name(options[b"filename"].decode("utf-8", "replace"))
            self._handle = self.dest.open("wb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._handle is None:
            return
        self.size += end - start
        if self.size > self.max_bytes:
            raise Rejected(413, f"the video is larger than this server's limit of {_mb(self.max_bytes)}")
        self._handle.write(data[start:end])

    def _part_end(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def close(self) -> None:
        self._part_end()


def _mb(size: float) -> str:
    return f"{size / 1_000_000:g} MB"


def _display_name(filename: str) -> str:
    """The client's file name, only ever shown (escaped), never used as a path."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:200] or "upload"


class _Service:
    """The shared checker, its worker pool, and the upload rules."""

    def __init__(self, checker: Checker, max_bytes: int, workers: int, upload_dir: Path | None, max_pending: int):
        self.checker, self.max_bytes, self.upload_dir = checker, max_bytes, upload_dir
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="unmask-check")
        self.workers, self.max_pending = workers, max_pending
        self.pending = 0

    async def receive(self, request: Request, dest: Path) -> str:
        """Stream the upload into ``dest``; return the client's file name (for display)."""
        kind, options = parse_options_header(request.headers.get("content-type"))
        if kind != b"multipart/form-data" or not options.get(b"boundary"):
            raise Rejected(415, "send the video as multipart/form-data, in a file field named 'video'")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes + MULTIPART_SLACK):
            raise Rejected(413, f"the video is larger than this server's limit of {_mb(self.max_bytes)}")
        upload = _Upload(options[b"boundary"], dest, self.max_bytes)
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > self.max_bytes + MULTIPART_SLACK:
                    raise Rejected(413, f"the video is larger than this server's limit of {_mb(self.max_bytes)}")
                upload.parser.write(chunk)
            upload.parser.finalize()
        except MultipartParseError:
            raise Rejected(400, "the body is not valid multipart/form-data") from None
        finally:
            upload.close()
        if upload.filename is None:
            raise Rejected(422, "no file in the upload: send the video in a file field named 'video'")
        return upload.filename

    def _check(self, path: Path, name: str, report: bool) -> tuple[CheckResult, str | None]:
        result = self.checker.check(path, name=name)
        return result, render_report(result, self.checker) if report and result.verdict != ERROR else None

    async def check(self, request: Request, report: bool) -> Response:
        if self.pending >= self.max_pending:
            return JSONResponse({"detail": "the server is busy checking other videos; try again in a minute"},
                                status_code=503, headers={"Retry-After": "60"})
        self.pending += 1
        fd, name = tempfile.mkstemp(prefix="unmask-upload-", suffix=".video", dir=self.upload_dir)
        os.close(fd)
        path = Path(name)
        try:
            filename = await self.receive(request, path)
            result, html = await asyncio.wrap_future(self.pool.submit(self._check, path, filename, report))
        except Rejected as rejected:
            return JSONResponse({"detail": str(rejected)}, status_code=rejected.status)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        finally:
            self.pending -= 1
            path.unlink(missing_ok=True)
        if result.verdict == ERROR:
            return JSONResponse({"detail": f"{filename}: {result.error}",
                                 "verdict": ERROR}, status_code=422)
        record = result.to_json()
        record["model"].pop("path", None)  # where the server keeps its files is none of the client's business
        if html is not None:
            record["report_html"] = html
        return JSONResponse(record)


def create_app(model: Checker | Path | str | None = None, max_upload_mb: float = 200, workers: int = 2,
               upload_dir: Path | None = None, max_pending: int = 32) -> FastAPI:
    """The FastAPI app: ``model`` is a ready ``Checker`` to share, or a model folder to load
    (None: the packaged default). ``upload_dir``: where uploads wait while checked (default:
    the system's temporary folder). ``max_pending``: requests in progress (uploading, queued or
    being checked) beyond which new ones get 503 instead of waiting."""
    if max_upload_mb <= 0:
        raise UnmaskError(f"the upload limit must be positive, got {max_upload_mb} MB")
    if workers < 1 or max_pending < 1:
        raise UnmaskError("workers and max_pending must be at least 1")
    if upload_dir is not None and not Path(upload_dir).is_dir():
        raise UnmaskError(f"upload folder {upload_dir} does not exist")
    checker = model if isinstance(model, Checker) else Checker(None if model is None else Path(model))
    service = _Service(checker, int(max_upload_mb * 1_000_000), workers, upload_dir, max_pending)
    web = files("unmask.web")
    page = (web / "templates" / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{max_upload_mb}}", f"{max_upload_mb:g}").replace("{{version}}", __version__)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="unmask", version=__version__, lifespan=lifespan,
                  description="Tell whether a video of a face is real or a deepfake. Upload a video to "
                              "`/api/check`; the page at `/` does the same in a browser.")
    app.mount("/static", StaticFiles(directory=str(web / "static")), name="static")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this answer, so the server logs the traceback; the client sees none.
        return JSONResponse({"detail": "internal error: the server could not answer this request "
                                       "(the details are in its log)"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff"})

    @app.get("/api/health", summary="Is the server up, and with which model")
    async def health() -> dict:
        card = checker.model.card
        return {"status": "ok", "unmask": __version__,
                "model": {"name": checker.model.name, "kind": card.get("kind"), "estimator": card["estimator"]["name"],
                          "threshold": checker.model.threshold, "aggregate": checker.aggregate},
                "max_upload_mb": max_upload_mb, "workers": workers}

    @app.post("/api/check", summary="Check one video", openapi_extra=UPLOAD_BODY, responses={
        200: {"description": "the verdict record: verdict, fake_probability, certainty, faces, tracks, model"},
        413: {"description": "the video is over the size limit"},
        415: {"description": "the body is not multipart/form-data"},
        422: {"description": "no file, or the file is not a readable video"},
        503: {"description": "too many requests in progress; retry later"}})
    async def check(request: Request, report: bool = False) -> Response:
        """Upload a video (multipart/form-data, file field `video`); get its verdict record.
        With `report=true` the record also carries `report_html`, the self-contained HTML report."""
        return await service.check(request, report)

    return app
