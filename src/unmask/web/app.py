"""The web page and HTTP API behind `unmask serve`.

One ``Detector`` (``unmask.api``: the face detector and the model) is loaded per process and
shared by a bounded pool of worker threads. Uploads are streamed to temporary files under our own names while their size
is counted, so an oversized body is refused as soon as it passes the limit, never held in
memory; the content is judged by decoding it, not by its name or declared type. Uploads being
received and checks waiting for the pool are bounded separately, the last few upload slots are
kept for addresses not already sending one, and an upload must keep arriving at a minimum rate
and finish in time, so clients that stall or trickle cannot hold the server.
"""
from __future__ import annotations

import asyncio
import ctypes
import math
import os
import socket
import tempfile
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from email.message import Message
from email.utils import collapse_rfc2231_value
from importlib.resources import files
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from unmask import __version__
from unmask.api import Detector, Result
from unmask.check import ERROR
from unmask.config import ServeSettings
from unmask.errors import UnmaskError

MULTIPART_SLACK = 64 * 1024
"""Bytes a multipart body may carry beyond the file itself (boundaries, part headers)."""
MAX_FILENAME = 255
"""Longest file name accepted, in characters: more than any common file system allows."""
FIELD = "video"
"""The one form field the video is accepted in (as documented)."""
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
               "script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
"""The page runs only our own script; the report it shows (in a frame) only needs inline CSS and data: images."""
DOCS_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
"""Swagger UI, served from our own origin, sets inline styles and draws data: icons."""
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
"""Everything else is data or an asset, never a page to run anything in."""
DOCS_ASSETS = "/docs-assets"
"""Where the Swagger UI files of the ``fastapi-offline`` package are served, so /docs works offline."""
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [FIELD],
    "properties": {FIELD: {"type": "string", "format": "binary", "description": "the video file"}}}}}}}
"""The form ``/docs`` shows: the body is parsed by hand (to stream it), so FastAPI cannot infer it."""


class Rejected(Exception):
    """An upload we answer with a clear client error instead of a verdict. The connection is
    closed after the answer: the rest of the body may be unread, and a refused client must not
    keep its connection by sending on."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": str(self)}, status_code=self.status,
                            headers={"Connection": "close", **(self.headers or {})})


def _part_names(disposition: bytes) -> tuple[str | None, str | None]:
    """A part's field name and file name. RFC 5987's ``filename*`` wins over ``filename``
    (RFC 6266); a plain name is read as the UTF-8 that browsers send."""
    header = Message()
    header["content-disposition"] = disposition.decode("latin-1")
    names: dict[str, str] = {}
    for key, value in header.get_params(header="content-disposition", failobj=[])[1:]:
        if isinstance(value, tuple):  # the extended form: charset'language'percent-encoded
            names[key + "*"] = collapse_rfc2231_value(value, errors="replace")
        else:
            names[key] = value.encode("latin-1").decode("utf-8", "replace")
    filename = names.get("filename*", names.get("filename"))
    return names.get("name*", names.get("name")), filename


class _Upload:
    """Streams the ``video`` part of a multipart body into ``dest``, counting its bytes."""

    def __init__(self, boundary: bytes, dest: Path, max_bytes: int):
        self.dest, self.max_bytes = dest, max_bytes
        self.filename: str | None = None
        self.size = 0
        self._handle = None
        self._header, self._headers = b"", {}
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data, "on_part_end": self._part_end},
            max_header_size=MULTIPART_SLACK)  # a long file name is refused as that, not as a broken body

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header = data[start:end].lower()

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._headers[self._header] = self._headers.get(self._header, b"") + data[start:end]

    def _headers_finished(self) -> None:
        field, filename = _part_names(self._headers.get(b"content-disposition", b""))
        if field != FIELD and filename is None:
            return  # another form field: ignored (the body's size is still bounded)
        if self.filename is not None:
            raise Rejected(400, f"the upload has more than one file; send one video, in the field named '{FIELD}'")
        if field != FIELD:
            raise Rejected(422, f"the file came in a field named {field!r}; send the video in the field named '{FIELD}'")
        self.filename = _display_name(filename or "upload")
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
    name = "".join(c for c in filename.replace("\\", "/").rsplit("/", 1)[-1] if c.isprintable())
    if len(name) > MAX_FILENAME:
        raise Rejected(400, f"the file name is {len(name)} characters long; at most {MAX_FILENAME} are accepted")
    return name or "upload"


def _busy(message: str, status: int = 503) -> Rejected:
    return Rejected(status, message, {"Retry-After": "60"})


class _RateFloor:
    """Bytes of one upload, by the slice of time they came in, over the last window: the upload is
    too slow when the window holds fewer than ``bytes_per_s x window_s`` bytes, judged from one
    window after it started (the grace a connection needs to get going). Bytes count from the start
    of their slice, a tenth of the window, so they leave the window up to that much early."""

    SLICES = 10

    def __init__(self, bytes_per_s: float, window_s: float, now: float):
        self.needed, self.window_s, self.judged_from = bytes_per_s * window_s, window_s, now + window_s
        self.slices: deque[list[float]] = deque()
        """[start time, bytes] of each slice still in the window, oldest first."""

    def add(self, size: int, now: float) -> None:
        if self.slices and now - self.slices[-1][0] < self.window_s / self.SLICES:
            self.slices[-1][1] += size
        else:
            self.slices.append([now, size])
        while self.slices[0][0] <= now - self.window_s:
            self.slices.popleft()

    def deadline(self) -> float:
        """When the window will hold too few bytes if nothing more comes (infinity: no floor)."""
        if self.needed <= 0:
            return math.inf
        held, fails_at = sum(size for _, size in self.slices), self.judged_from
        for start, size in self.slices:  # each slice leaves the window at start + window_s
            if held < self.needed:
                break
            held -= size
            fails_at = max(self.judged_from, start + self.window_s)
        return fails_at


class _Service:
    """The shared detector, its worker pool, and the upload rules."""

    def __init__(self, detector: Detector, settings: ServeSettings):
        self.detector, self.settings = detector, settings
        self.pool = ThreadPoolExecutor(settings.concurrent_checks, thread_name_prefix="unmask-check")
        self.uploads = 0
        """Uploads being received."""
        self.uploads_by_client: Counter[str] = Counter()
        """Of those, how many each client address sends."""
        self.queued = 0
        """Checks waiting for or running on the pool."""
        self.stopping = False
        self.in_flight: set[asyncio.Task] = set()

    def stop(self) -> None:
        """The server is shutting down: answer every request still in progress with 503 now."""
        self.stopping = True
        for work in self.in_flight:
            work.cancel()

    async def _body(self, request: Request) -> AsyncIterator[bytes]:
        """The request body, piece by piece; 408 when the client stalls, sends slower than the rate
        floor, or takes too long in all (whichever comes first)."""
        settings, loop = self.settings, asyncio.get_running_loop()
        deadline = loop.time() + settings.upload_timeout_s
        floor = _RateFloor(settings.min_upload_rate_kb * 1000, settings.rate_window_s, loop.time())
        reasons = {"stalled": f"stalled: nothing came for {settings.stall_timeout_s:g} s",
                   "too slow": f"is too slow: under this server's floor of {settings.min_upload_rate_kb:g} kB/s "
                               f"over {settings.rate_window_s:g} s",
                   "too long": f"took longer than this server's limit of {settings.upload_timeout_s:g} s"}
        while True:
            now = loop.time()
            waits = {"stalled": settings.stall_timeout_s, "too slow": floor.deadline() - now,
                     "too long": deadline - now}
            reason = min(waits, key=waits.__getitem__)
            try:
                message = await asyncio.wait_for(request.receive(), max(waits[reason], 0))
            except TimeoutError:
                raise Rejected(408, f"the upload {reasons[reason]}") from None
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            body = message.get("body", b"")
            floor.add(len(body), loop.time())
            yield body
            if not message.get("more_body", False):
                return

    async def receive(self, request: Request, dest: Path) -> str:
        """Stream the upload into ``dest``; return the client's file name (for display)."""
        kind, options = parse_options_header(request.headers.get("content-type"))
        if kind != b"multipart/form-data" or not options.get(b"boundary"):
            raise Rejected(415, f"send the video as multipart/form-data, in a file field named '{FIELD}'")
        max_bytes = self.settings.max_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_bytes + MULTIPART_SLACK):
            raise Rejected(413, f"the video is larger than this server's limit of {_mb(max_bytes)}")
        upload = _Upload(options[b"boundary"], dest, max_bytes)
        received = 0
        try:
            async for chunk in self._body(request):
                received += len(chunk)
                if received > max_bytes + MULTIPART_SLACK:
                    raise Rejected(413, f"the video is larger than this server's limit of {_mb(max_bytes)}")
                upload.parser.write(chunk)
            upload.parser.finalize()
        except MultipartParseError:
            raise Rejected(400, "the body is not valid multipart/form-data") from None
        finally:
            upload.close()
        if upload.filename is None:
            raise Rejected(422, f"no file in the upload: send the video in a file field named '{FIELD}'")
        return upload.filename

    def _check(self, path: Path, name: str, report: bool) -> tuple[Result, str | None]:
        try:
            result = self.detector.check(path, name=name)
            return result, result.report_html() if report and result.verdict != ERROR else None
        finally:
            _return_free_memory()

    async def check(self, request: Request, report: bool) -> Response:
        """Answer one upload; when the server starts shutting down meanwhile, 503 at once."""
        if self.stopping:
            return _shutting_down()
        work = asyncio.ensure_future(self._answer(request, report))
        self.in_flight.add(work)
        try:
            await asyncio.wait((work,))
        finally:
            self.in_flight.discard(work)
            work.cancel()  # nothing when it is done; else this request was given up on
        return _shutting_down() if work.cancelled() else work.result()

    async def _answer(self, request: Request, report: bool) -> Response:
        settings = self.settings
        client = request.client.host if request.client else ""
        free = settings.max_uploads - self.uploads
        if self.uploads_by_client[client] and 0 < free <= settings.upload_headroom:
            return _busy(f"your address is already sending {self.uploads_by_client[client]} video(s), and the last "
                         f"{settings.upload_headroom} upload slots are kept for others; send the next when one is done",
                         status=429).response()
        if self.uploads >= settings.max_uploads:
            return _busy("the server is receiving too many other videos; try again in a minute").response()
        if self.queued >= settings.max_queued:
            return _busy("the server is busy checking other videos; try again in a minute").response()
        fd, name = tempfile.mkstemp(prefix="unmask-upload-", suffix=".video", dir=settings.upload_dir)
        os.close(fd)
        path = Path(name)
        try:
            self.uploads += 1
            self.uploads_by_client[client] += 1
            try:
                filename = await self.receive(request, path)
            finally:
                self.uploads -= 1
                self.uploads_by_client[client] -= 1
                if not self.uploads_by_client[client]:
                    del self.uploads_by_client[client]
            if self.queued >= settings.max_queued:
                raise _busy("the server is busy checking other videos; try again in a minute")
            self.queued += 1
            try:
                result, html = await asyncio.wrap_future(self.pool.submit(self._check, path, filename, report))
            finally:
                self.queued -= 1
        except Rejected as rejected:
            return rejected.response()
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        finally:
            path.unlink(missing_ok=True)
        if result.verdict == ERROR:
            return JSONResponse({"detail": f"{filename}: {result.error}", "verdict": ERROR}, status_code=422)
        record = result.to_dict()
        record["model"].pop("path", None)  # where the server keeps its files is none of the client's business
        if html is not None:
            record["report_html"] = html
        return JSONResponse(record)


def _return_free_memory() -> None:
    """Hand memory freed by a check back to the system (glibc keeps freed frames for reuse
    otherwise: after two 4K uploads the server kept 4.9 GB). A no-op where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _shutting_down() -> JSONResponse:
    return JSONResponse({"detail": "the server is shutting down; try again in a minute"}, status_code=503,
                        headers={"Retry-After": "60", "Connection": "close"})


def security_headers(path: str) -> dict[str, str]:
    """The headers every response carries: no content sniffing, a policy that fits what the path
    serves, and no caching of results (they describe someone's video)."""
    policy = PAGE_POLICY if path == "/" else DOCS_POLICY if path == "/docs" else API_POLICY
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": policy,
               "Referrer-Policy": "no-referrer"}
    if path.startswith("/api/"):
        headers["Cache-Control"] = "no-store"
    return headers


class _SecurityHeaders:
    """ASGI middleware adding ``security_headers`` to every response (a plain ASGI wrapper, so
    the upload's body stream passes through untouched)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = [(k.lower().encode(), v.encode()) for k, v in security_headers(scope["path"]).items()]

        async def send_with_headers(message: ASGIMessage) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Server(uvicorn.Server):
    """uvicorn that tells the app when shutdown begins, so requests in progress are answered
    503 at once instead of cut off (a plain 500) when the grace period ends."""

    def __init__(self, app: FastAPI, **config):
        super().__init__(uvicorn.Config(app, **({"log_level": "info", "timeout_graceful_shutdown": 2} | config)))
        self.stop_app: Callable[[], None] = app.state.stop

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.stop_app()
        await super().shutdown(sockets)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (0: any free port) and listening, for ``Server.run``: from
    here on, connections wait in its backlog while uvicorn starts. One clear error when the address
    cannot be had (taken, not this machine's)."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as err:
        listener.close()
        raise UnmaskError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    listener.listen(128)
    return listener


def create_app(model: Detector | Path | str | None = None, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app: ``model`` is a ready ``Detector`` to share, or what ``Detector`` takes (a
    model folder; None: the packaged default); ``settings``: its limits."""
    settings = settings or ServeSettings()
    detector = model if isinstance(model, Detector) else Detector(model)
    service = _Service(detector, settings)
    web = files("unmask.web")
    page = (web / "templates" / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{max_upload_mb}}", f"{settings.max_upload_mb:g}").replace("{{version}}", __version__)
    docs = (web / "templates" / "docs.html").read_text(encoding="utf-8").replace("{{assets}}", DOCS_ASSETS)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="unmask", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Tell whether a video of a face is real or a deepfake. Upload a video to "
                              "`/api/check`; the page at `/` does the same in a browser.")
    app.state.stop = service.stop
    app.state.service = service
    app.add_middleware(_SecurityHeaders)
    app.mount("/static", StaticFiles(directory=str(web / "static")), name="static")
    app.mount(DOCS_ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this answer, so the server logs the traceback; the client sees none.
        # This answer leaves from outside the middleware, so it carries the headers itself.
        return JSONResponse({"detail": "internal error: the server could not answer this request "
                                       "(the details are in its log)"}, status_code=500,
                            headers=security_headers(request.url.path))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return HTMLResponse(docs)

    @app.get("/api/health", summary="Is the server up, and with which model")
    async def health() -> dict:
        card = detector.card
        return {"status": "ok", "unmask": __version__,
                "model": {"name": detector.model["name"], "kind": card.get("kind"),
                          "estimator": card["estimator"]["name"], "threshold": detector.threshold,
                          "aggregate": detector.aggregate},
                "max_upload_mb": settings.max_upload_mb, "workers": settings.workers}

    @app.post("/api/check", summary="Check one video", openapi_extra=UPLOAD_BODY, responses={
        200: {"description": "the verdict record: verdict, fake_probability, certainty, faces, tracks, model"},
        400: {"description": "a malformed body, more than one file, or a file name over 255 characters"},
        408: {"description": "the upload stalled, came slower than the rate floor, or took too long"},
        413: {"description": "the video is over the size limit"},
        415: {"description": "the body is not multipart/form-data"},
        422: {"description": "no file in the field `video`, or the file is not a readable video"},
        429: {"description": "this client address is already sending, and the free upload slots left are kept "
                             "for others; retry when one is done"},
        503: {"description": "too many uploads or checks in progress, or the server is shutting down; retry later"}})
    async def check(request: Request, report: bool = False) -> Response:
        """Upload a video (multipart/form-data, file field `video`); get its verdict record.
        With `report=true` the record also carries `report_html`, the self-contained HTML report."""
        return await service.check(request, report)

    return app
