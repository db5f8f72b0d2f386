"""The web page in a real headless browser (Debian's chromium, driven by Playwright) against
`unmask serve`: choose or drop a video, watch it upload, see the verdict and the report."""
import base64
import shutil

import pytest

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="no chromium binary on PATH (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where chromium's sandbox cannot start
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, web_server):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    refused = "Failed to load resource: the server responded with a status of 422"  # the browser's own note
    page.goto(web_server[0] + "/")
    yield page
    context.close()
    assert [p for p in problems if not p.startswith(refused)] == []  # no script errors, nothing blocked by CSP


def _assert_verdict_shown(page) -> str:
    page.wait_for_selector("#result:not([hidden])", timeout=120_000)
    verdict = page.inner_text("#verdict")
    assert verdict in ("FAKE", "REAL")
    assert "fake probability" in page.inner_text("#verdict-detail")
    assert "16 frames, 1 face track" in page.inner_text("#verdict-facts")
    # the report is shown in the page, inside its frame (its banner left out: the card above says it)
    report = page.frame_locator("#report")
    report.locator("img.plot").wait_for(timeout=30_000)  # the frame may still be loading its document
    assert report.locator("img.plot").count() == 1 and report.locator("figure.face").count() == 16
    assert report.locator(".banner").count() == 0 and report.locator(".gauge").count() == 1
    assert page.frames[1].title().endswith(f": {verdict}")
    assert page.get_attribute("#download", "href").startswith("blob:")
    return verdict


def test_choose_a_file_and_see_the_verdict(page, short_face_video, web_server):
    assert page.is_visible("#drop") and page.is_hidden("#result")
    page.wait_for_function("document.getElementById('model-name').textContent.includes('model:')")  # /api/health
    assert "MesoInception-4" in page.inner_text("#model-name")
    page.evaluate("""() => {
        window.statuses = [];
        new MutationObserver(() => window.statuses.push(document.getElementById("status-text").textContent))
            .observe(document.getElementById("status-text"), { childList: true, characterData: true, subtree: true });
    }""")
    page.set_input_files("#file", str(short_face_video))
    _assert_verdict_shown(page)
    statuses = page.evaluate("window.statuses")
    assert "Uploading…" in statuses and statuses[-1] == "Analysing the faces…"  # the progress panel's states
    assert list(web_server[1].iterdir()) == []
    page.click("#result .again")
    assert page.is_visible("#drop") and page.is_hidden("#result")


def test_drop_a_file_and_see_the_verdict(page, short_face_video):
    data = base64.b64encode(short_face_video.read_bytes()).decode()
    transfer = page.evaluate_handle("""(data) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.mp4", { type: "video/mp4" }));
        return transfer;
    }""", data)
    page.dispatch_event("#drop", "dragenter", {"dataTransfer": transfer})
    assert "over" in page.get_attribute("#drop", "class")
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    _assert_verdict_shown(page)
    assert "dropped.mp4" in page.inner_text("#verdict-facts")


def test_a_file_that_is_not_a_video_gets_a_clear_message(page, broken_files):
    page.set_input_files("#file", str(broken_files["text"]))
    page.wait_for_selector("#problem:not([hidden])", timeout=60_000)
    assert page.inner_text("#problem-text").startswith("notes.mp4: not a readable video")
    page.click("#problem .again")
    assert page.is_visible("#drop")


def test_api_docs_draw_the_api_with_nothing_from_outside(page, web_server):
    """/docs under its CSP, every request to another origin refused: Swagger UI still shows the API."""
    outside = []

    def refuse(route):
        outside.append(route.request.url)
        route.abort()

    page.route(lambda url: not url.startswith(web_server[0]), refuse)
    page.goto(web_server[0] + "/docs")
    page.wait_for_selector("text=Check one video", timeout=30_000)
    assert page.locator(".opblock-post").count() == 1 and outside == []
