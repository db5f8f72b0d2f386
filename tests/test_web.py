"""The HTTP API: in this process through httpx's ASGI transport, and against `unmask serve` on a real socket."""
import asyncio
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest

from unmask.check import Checker
from unmask.cli import main
from unmask.errors import UnmaskError
from unmask.web.app import create_app


@pytest.fixture(scope="module")
def checker(released_model):
    return Checker(released_model)


@pytest.fixture
def uploads(tmp_path):
    """The upload folder; every test must leave it empty."""
    folder = tmp_path / "uploads"
    folder.mkdir()
    yield folder
    assert list(folder.iterdir()) == []


class Client:
    """Requests to an app in this process, through httpx's ASGI transport (no socket)."""

    def __init__(self, app, raise_app_exceptions: bool = True):
        self.app, self.raise_app_exceptions = app, raise_app_exceptions

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        async def send():
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=self.raise_app_exceptions)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                return await http.request(method, url, **kwargs)

        return asyncio.run(send())

    def get(self, url: str, **kwargs) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs) -> httpx.Response:
        return self.request("POST", url, **kwargs)


@pytest.fixture
def client(checker, uploads):
    return Client(create_app(checker, max_upload_mb=1, upload_dir=uploads))


def test_health_names_the_model(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["max_upload_mb"] == 1 and health["workers"] == 2
    assert health["model"] == {"name": "MesoInception-4 (released weights)", "kind": "torch",
                               "estimator": "mesoinception4", "threshold": 0.5, "aggregate": "mean"}


def test_page_static_files_and_api_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'id="drop"' in page.text and 'type="file"' in page.text and "up to 1 MB" in page.text
    assert "{{" not in page.text
    assert "XMLHttpRequest" in client.get("/static/app.js").text
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()["paths"]["/api/check"]["post"]
    assert "video" in spec["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]


def test_check_a_video_returns_its_record(client, short_face_video):
    response = client.post("/api/check", files={"video": ("holiday.mp4", short_face_video.read_bytes(), "video/mp4")})
    assert response.status_code == 200
    record = response.json()
    assert record["path"] == "holiday.mp4" and record["verdict"] in ("FAKE", "REAL")
    assert 0 <= record["fake_probability"] <= 1 and len(record["faces"]) == 16 and len(record["tracks"]) == 1
    assert {"frame", "time", "box", "fake_probability", "track"} <= set(record["faces"][0])
    assert "path" not in record["model"] and "report_html" not in record
    assert "unmask-upload" not in response.text  # our temporary file's name never shows

    with_report = client.post("/api/check?report=true", files={"video": ("a.mp4", short_face_video.read_bytes())})
    page = with_report.json()["report_html"]
    assert page.startswith("<!DOCTYPE html>") and f"<div class=\"verdict\">{record['verdict']}</div>" in page


def test_client_file_name_is_only_a_label(client, short_face_video, uploads):
    response = client.post("/api/check", files={"video": ("../../../<b>evil.mp4", short_face_video.read_bytes())})
    assert response.status_code == 200 and response.json()["path"] == "<b>evil.mp4"
    assert not (uploads.parent / "<b>evil.mp4").exists() and not (uploads / "<b>evil.mp4").exists()
    page = client.post("/api/check?report=true", files={"video": ("<b>evil.mp4", short_face_video.read_bytes())})
    assert "<b>evil" not in page.json()["report_html"] and "&lt;b&gt;evil.mp4" in page.json()["report_html"]


@pytest.mark.parametrize("kind,reason", [("text", "not a readable video"), ("garbage", "not a readable video"),
                                         ("empty", "empty file")])
def test_not_a_video_is_422_with_a_clear_message(client, broken_files, kind, reason):
    response = client.post("/api/check", files={"video": ("clip.mp4", broken_files[kind].read_bytes(), "video/mp4")})
    assert response.status_code == 422
    body = response.json()
    assert body["verdict"] == "ERROR" and body["detail"].startswith("clip.mp4: ") and reason in body["detail"]
    assert "Traceback" not in response.text and "unmask-upload" not in response.text


def test_wrong_body_kinds_are_refused_clearly(client, short_face_video):
    raw = client.post("/api/check", content=short_face_video.read_bytes(), headers={"content-type": "video/mp4"})
    assert raw.status_code == 415 and "multipart/form-data" in raw.json()["detail"]
    no_file = client.post("/api/check", files={"note": (None, "hello")})
    assert no_file.status_code == 422 and "no file in the upload" in no_file.json()["detail"]
    broken = client.post("/api/check", content=b"\x00\x01 not multipart at all",
                         headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert broken.status_code in (400, 422)


def test_oversize_upload_is_413_by_declared_length(client):
    response = client.post("/api/check", files={"video": ("big.mp4", b"\0" * 1_200_000, "video/mp4")})
    assert response.status_code == 413
    assert response.json() == {"detail": "the video is larger than this server's limit of 1 MB"}


def test_oversize_upload_without_length_is_cut_off_while_streaming(checker, uploads):
    """No Content-Length (chunked): the server counts while streaming and stops reading at the limit."""
    app = create_app(checker, max_upload_mb=1, upload_dir=uploads)
    sent = []

    async def body():
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"video\"; filename=\"big.mp4\"\r\n\r\n"
        for _ in range(100):  # 10 MB in all, ten times the limit
            sent.append(1)
            yield b"\0" * 100_000

    async def post():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.post("/api/check", content=body(),
                                   headers={"content-type": "multipart/form-data; boundary=xyz"})

    response = asyncio.run(post())
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and "limit of 1 MB" in response.json()["detail"]
    assert len(sent) <= 12  # stopped soon after 1 MB, not after reading all 10


def test_too_many_requests_at_once_get_503(checker, uploads, broken_files):
    """With room for one request in progress, a second one is turned away at once, not queued forever."""
    app = create_app(checker, upload_dir=uploads, max_pending=1)

    async def main():
        started, go_on = asyncio.Event(), asyncio.Event()

        async def slow_body():
            yield b"--xyz\r\nContent-Disposition: form-data; name=\"video\"; filename=\"a.mp4\"\r\n\r\n"
            started.set()
            await go_on.wait()
            yield broken_files["text"].read_bytes() + b"\r\n--xyz--\r\n"

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            headers = {"content-type": "multipart/form-data; boundary=xyz"}
            first = asyncio.create_task(http.post("/api/check", content=slow_body(), headers=headers))
            await started.wait()
            second = await http.post("/api/check", files={"video": ("b.mp4", b"x")})
            go_on.set()
            return await first, second

    first, second = asyncio.run(main())
    assert second.status_code == 503 and second.headers["retry-after"] == "60" and "busy" in second.json()["detail"]
    assert first.status_code == 422  # the first one was answered normally (a text file: not a video)


def test_internal_errors_reach_the_client_without_details(checker, uploads):
    app = create_app(checker, upload_dir=uploads)

    @app.get("/api/probe-failure")
    async def fail():
        raise RuntimeError("secret detail at /srv/private/path")

    response = Client(app, raise_app_exceptions=False).get("/api/probe-failure")
    assert response.status_code == 500 and "internal error" in response.json()["detail"]
    assert "secret" not in response.text and "Traceback" not in response.text


def test_bad_settings_are_refused(checker, tmp_path):
    for kwargs in ({"max_upload_mb": 0}, {"workers": 0}, {"upload_dir": tmp_path / "missing"}):
        with pytest.raises(UnmaskError):
            create_app(checker, **kwargs)


# ------------------------------------------------------------------ a real server: `unmask serve`
def test_serve_binds_loopback_and_answers_ten_uploads_at_once(web_server, short_face_video, broken_files):
    url, uploads = web_server
    assert urlsplit(url).hostname == "127.0.0.1"
    video = short_face_video.read_bytes()

    def upload(i: int) -> httpx.Response:
        name, data = (f"clip{i}.mp4", video) if i % 5 else (f"notes{i}.mp4", broken_files["text"].read_bytes())
        return httpx.post(f"{url}/api/check", files={"video": (name, data, "video/mp4")}, timeout=300)

    started = time.perf_counter()
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(upload, range(10)))
    elapsed = time.perf_counter() - started
    assert [r.status_code for r in responses] == [422, 200, 200, 200, 200, 422, 200, 200, 200, 200], elapsed
    verdicts = {r.json()["verdict"] for r in responses if r.status_code == 200}
    assert len(verdicts) == 1 and verdicts <= {"FAKE", "REAL"}  # the same video gets the same verdict
    assert [r.json()["path"] for r in responses if r.status_code == 200][0] == "clip1.mp4"
    assert httpx.get(f"{url}/api/health").json()["status"] == "ok"  # still up
    assert list(uploads.iterdir()) == []


def test_serve_refuses_a_declared_oversize_body_before_it_is_sent(web_server):
    url, uploads = web_server
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as conn:
        conn.sendall(b"POST /api/check HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 10000000000\r\n\r\n")  # 10 GB announced, not a byte of it sent
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body) == {"detail": "the video is larger than this server's limit of 5 MB"}
    assert list(uploads.iterdir()) == []


def test_serve_bad_settings_are_one_line_and_exit_two(released_model, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port), "--model", str(released_model)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"unmask serve: error: cannot listen on 127.0.0.1:{port}: ") and err.count("\n") == 1
    assert main(["serve", "--model", str(released_model), "--upload-dir", str(tmp_path / "nope")]) == 2
    assert "upload folder" in capsys.readouterr().err
