"""The playground page (GET / on the Serve app), end to end in a real headless browser.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/serving/test_playground.py

Playwright drives Debian's Chromium (`apt-get install chromium`, which `make test`
does as root; Playwright's own browser download cannot run offline) against the
Serve app of conftest's `server` fixture, under its /raygen route prefix, with
its API key on. Each panel's screenshot is saved in out/playground/ (the
README shows one).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, SERVE_API_KEY

pytestmark = pytest.mark.slow

SCREENSHOTS = REPO / "out" / "playground"
# As root in a sandbox without a GPU or a network: no sandbox of its own, and none of the
# background connections that this machine's closed network refuses.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("the playground tests need Debian's Chromium at /usr/bin/chromium: `make test` installs it when "
                    "run as root; otherwise run `sudo apt-get install chromium` once")
    return path


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playground tests need Playwright for Python: `make test` installs the test extras "
                    "(pip install -e '.[test]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def context(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(60_000)
    yield context
    context.close()


def open_playground(context, server: str, key: str | None = SERVE_API_KEY):
    """A new tab on the page; with `key`, answers its API key prompt and waits for the panels."""
    from playwright.sync_api import expect

    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.script_errors = errors
    page.goto(f"{server}/")
    if key is not None:
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("section[data-model]")).not_to_have_count(0)
    return page


@pytest.fixture()
def page(context, server):
    page = open_playground(context, server)
    yield page
    assert page.script_errors == [], "the page raised JavaScript errors"


def panel(page, model: str):
    return page.locator(f"section[data-model={model}]")


def screenshot(locator, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    locator.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def finished(section, timeout: float = 60_000) -> str:
    """Waits until the panel says done (or shows an error); returns its state line."""
    from playwright.sync_api import expect

    expect(section.locator(".state, .error").filter(has_text=re.compile(r"^(done|\d+ images|Error)"))).to_have_count(
        1, timeout=timeout)
    return section.locator(".state").inner_text()


def decoded_sizes(images) -> list[tuple[int, int]]:
    """(width, height) of each <img> once the browser decoded it; a broken image raises."""
    return images.evaluate_all("async (images) => { await Promise.all(images.map((i) => i.decode())); "
                               "return images.map((i) => [i.naturalWidth, i.naturalHeight]); }")


# ---------------------------------------------------------------- the page, its key and its models


def test_the_page_and_its_files_need_no_key_and_fetch_nothing_from_elsewhere(server):
    import httpx

    page = httpx.get(f"{server}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]  # no CDN could load, even if linked
    assert '<base href="/raygen/">' in page.text  # links resolve under the route prefix
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)
    for asset in ("playground.js", "playground.css"):
        answer = httpx.get(f"{server}/{asset}", timeout=30)
        assert answer.status_code == 200 and "//cdn" not in answer.text
    assert httpx.get(f"{server}/v1/models", timeout=30).status_code == 401  # the data still needs the key


def test_the_key_prompt_then_the_model_list(context, server):
    from playwright.sync_api import expect

    page = open_playground(context, server, key=None)
    expect(page.locator("#status")).to_have_text("This server needs an API key.")
    page.get_by_label("API key").fill("not-the-key")
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#key-form").get_by_role("alert")).to_contain_text("a valid API key is required")

    page.get_by_label("API key").fill(SERVE_API_KEY)
    page.get_by_label("API key").press("Enter")  # the keyboard submits it too
    expect(page.locator("#key-form")).to_be_hidden()
    listed = page.locator("section[data-model]").evaluate_all("(panels) => panels.map((p) => p.dataset.model)")
    assert listed == ["digits", "pydoc", "chorales", "styles", "diffusion", "digits-small-queue"]
    expect(page.locator("#status")).to_contain_text("6 models")
    screenshot(page, "page")

    # The key lives in this tab only: not in storage that outlives it, not in a cookie; a new tab asks again.
    assert page.evaluate("() => [localStorage.length, document.cookie]") == [0, ""]
    other = open_playground(context, server, key=None)
    expect(other.locator("#key-form")).to_be_visible()


def test_the_page_says_what_it_waits_for_when_the_model_list_does_not_come(context, server):
    """Before GET /v1/models answers, and when it cannot (here the browser cannot reach it), the page says why."""
    from playwright.sync_api import expect

    page = context.new_page()
    page.route("**/v1/models", lambda route: route.abort("connectionrefused"))
    page.goto(f"{server}/")
    placeholder = page.locator("#panels section.skeleton")
    expect(placeholder).to_have_count(1)  # a server with a key names no model to a page without it
    expect(placeholder).to_contain_text("appear here once the page can list them")
    status = page.locator("#status")
    expect(status).to_contain_text("Could not list the models: could not reach the server")
    expect(status).to_contain_text("Trying again in 5 s")
    page.unroute("**/v1/models")  # the retry finds the server: the key prompt, then the panels
    expect(status).to_have_text("This server needs an API key.", timeout=15_000)
    page.close()


def test_a_keyless_page_arrives_with_a_placeholder_per_model_escaped():
    from serving.playground import skeleton

    html = skeleton([("digits", "image"), ("<b>x</b>", "image_edit")])
    assert html.count('class="panel skeleton"') == 2 and "<h2>digits</h2>" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html and "An image edit model" in html


def test_every_input_is_labelled_and_the_page_fits_a_phone(context, server):
    page = open_playground(context, server)
    unlabelled = page.locator("input, select, textarea").evaluate_all(
        "(fields) => fields.filter((f) => f.labels.length === 0).map((f) => f.outerHTML)")
    assert unlabelled == []
    page.set_viewport_size({"width": 375, "height": 800})
    images = panel(page, "digits")
    images.get_by_role("button", name="Generate").click()
    finished(images)
    too_wide = page.evaluate("""() => [...document.querySelectorAll("body *")]
        .filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5)
        .map((e) => e.tagName + "." + e.className + " " + Math.round(e.getBoundingClientRect().right))""")
    assert too_wide == [], "wider than a phone's 375 px"  # nothing to scroll sideways
    screenshot(page, "phone")


# ---------------------------------------------------------------- a panel per family


def test_images_show_n_pictures_that_decode_and_match_the_api(page, http):
    digits = panel(page, "digits")
    digits.get_by_label("Number of images").fill("3")
    digits.get_by_label("Label", exact=True).select_option("7")
    digits.get_by_label("Seed", exact=True).fill("11")
    digits.get_by_label("Seed", exact=True).press("Enter")  # submitting by keyboard
    assert finished(digits) == "3 images, seeds 11–13"
    images = digits.locator("figure img")
    assert decoded_sizes(images) == [[32, 32]] * 3
    api = http.post("/v1/images/generations", json={"model": "digits", "n": 3, "label": 7, "seed": 11}).json()
    shown = images.evaluate_all("(images) => images.map((i) => i.src)")
    assert shown == [f"data:image/png;base64,{image['b64_json']}" for image in api["data"]]
    downloads = digits.get_by_role("link", name=re.compile("download the PNG"))
    assert downloads.evaluate_all("(links) => links.map((a) => a.download)") == [f"digits-seed-{s}.png" for s in (11, 12, 13)]
    screenshot(digits, "images")


class SlowStreamProxy(ThreadingHTTPServer):
    """A loopback proxy in front of the Serve app that passes on server-sent events one per `delay` seconds.

    The tests' tiny models stream a whole answer in milliseconds; a real model on a busy
    server takes seconds, which is what streaming and Stop are for. Counts the streams
    whose browser left before the end (`streams_left`).
    """

    daemon_threads = True

    def __init__(self, upstream: str, delay: float):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream, self.delay, self.streams_left = upstream, delay, 0


class _ProxyHandler(BaseHTTPRequestHandler):
    server: SlowStreamProxy

    def do_GET(self):
        self.forward()

    def do_POST(self):
        self.forward()

    def log_message(self, *args):
        pass

    def forward(self) -> None:
        import httpx

        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection", "accept-encoding")}
        with httpx.stream(self.command, self.server.upstream + self.path, headers=headers, content=body,
                          timeout=60) as answer:
            self.send_response(answer.status_code)
            for key, value in answer.headers.items():
                if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                    self.send_header(key, value)
            self.end_headers()  # HTTP/1.0: the body ends when the connection closes
            if not answer.headers.get("content-type", "").startswith("text/event-stream"):
                self.wfile.write(answer.read())
                return
            try:
                pending = ""
                for text in answer.iter_text():
                    *events, pending = (pending + text).split("\n\n")
                    for event in events:
                        self.wfile.write(f"{event}\n\n".encode())
                        self.wfile.flush()
                        time.sleep(self.server.delay)
                self.wfile.write(pending.encode())
            except (BrokenPipeError, ConnectionResetError):  # the browser stopped the request
                self.server.streams_left += 1


@pytest.fixture()
def slow_page(context, server):
    """The page through a SlowStreamProxy: a streamed answer arrives one event per 0.15 s."""
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(server))
    proxy = SlowStreamProxy(origin, delay=0.15)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        page = open_playground(context, server.replace(origin, f"http://127.0.0.1:{proxy.server_port}"))
        page.proxy = proxy
        yield page
        assert page.script_errors == [], "the page raised JavaScript errors"
    finally:
        proxy.shutdown()
        proxy.server_close()


RECORD_GROWTH = """(section) => {
    // Every length the completion's text has while the panel still says it is streaming.
    window.lengthsWhileStreaming = [];
    const generated = section.querySelector(".generated");
    const state = section.querySelector(".state");
    new MutationObserver(() => {
        if (state.textContent.startsWith("streaming")) window.lengthsWhileStreaming.push(generated.textContent.length);
    }).observe(generated, {childList: true, characterData: true, subtree: true});
}"""


def test_text_streams_in_token_by_token(slow_page):
    page = slow_page
    text = panel(page, "pydoc")
    text.evaluate(RECORD_GROWTH)
    text.get_by_label("Prompt").fill("A list is")
    text.get_by_label("Max tokens").fill("24")
    text.get_by_label("Seed", exact=True).fill("5")
    text.get_by_role("button", name="Generate").click()
    state = finished(text)
    assert state.startswith("done: finish reason length"), state
    lengths = page.evaluate("() => window.lengthsWhileStreaming")
    growing = sorted(set(length for length in lengths if length > 0))
    assert len(growing) >= 3, f"the text did not grow in steps while streaming: {lengths}"
    assert text.locator(".completion").inner_text().startswith("A list is")
    screenshot(text, "text")


def test_stop_cancels_the_stream(slow_page):
    from playwright.sync_api import expect

    page = slow_page
    aborted = []
    page.on("requestfailed", lambda request: aborted.append((request.url, request.failure)))
    text = panel(page, "pydoc")
    text.get_by_label("Max tokens").fill("32")
    text.get_by_role("button", name="Generate").click()
    expect(text.locator(".generated")).not_to_be_empty()
    text.get_by_role("button", name="Stop").click()
    expect(text.locator(".state")).to_contain_text("stopped after")
    kept = text.locator(".generated").inner_text()
    time.sleep(1.5)  # at this speed several more chunks would have come
    assert text.locator(".generated").inner_text() == kept
    assert [url for url, _ in aborted] == [page.url + "v1/completions"], aborted
    assert page.proxy.streams_left == 1  # the connection was closed, which makes the server free its rows
    expect(text.get_by_role("button", name="Stop")).to_be_disabled()
    expect(text.get_by_role("button", name="Generate")).to_be_enabled()


@pytest.mark.parametrize("model, field, value, body", [
    ("digits", "Number of images", "0", {"model": "digits", "n": 0}),
    ("pydoc", "Max tokens", "100000", {"model": "pydoc", "prompt": "x", "max_tokens": 100_000, "stream": True}),
])
def test_a_bad_value_shows_the_apis_own_message(page, http, model, field, value, body):
    from playwright.sync_api import expect

    section = panel(page, model)
    section.get_by_label(field).fill(value)
    section.get_by_role("button", name="Generate").click()
    answer = http.post("/v1/images/generations" if model == "digits" else "/v1/completions", json=body)
    assert answer.status_code == 400
    expect(section.get_by_role("alert")).to_have_text(f"Error 400: {answer.json()['error']['message']}")
    expect(section.get_by_role("button", name="Generate")).to_be_enabled()  # ready for a corrected value


def test_music_plays_draws_its_notes_and_offers_the_midi(page, http):
    from playwright.sync_api import expect

    music = panel(page, "chorales")
    music.get_by_label("Seed", exact=True).fill("4")
    assert music.get_by_label("Length in tokens").input_value() == "32"  # the model's 64, capped by the server's limit
    music.get_by_role("button", name="Generate").click()
    state = finished(music)
    assert state.startswith("done"), music.get_by_role("alert").inner_text()
    api = http.post("/v1/music/generations", json={"model": "chorales", "seed": 4, "max_tokens": 32}).json()["data"][0]
    audio = music.locator("audio")
    expect(audio).to_have_js_property("readyState", 4, timeout=30_000)  # the browser decoded the WAV
    assert abs(audio.evaluate("(a) => a.duration") - api["duration_s"]) < 1.5
    expect(music.get_by_role("img", name=f"piano roll of {api['num_notes']} notes")).to_be_visible()
    inked = music.locator("canvas").evaluate("""(canvas) => {
        const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let count = 0;
        for (let i = 0; i < pixels.length; i += 4) if (pixels[i + 2] > pixels[i] + 40) count++;  // the notes' blue
        return count; }""")
    assert (inked > 0) == (api["num_notes"] > 0)
    midi = music.get_by_role("link", name="Download the MIDI file")
    assert midi.get_attribute("download") == "chorales-seed-4.mid"
    assert midi.get_attribute("href") == f"data:audio/midi;base64,{api['b64_json']}"
    screenshot(music, "music")


def photo_png() -> bytes:
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:, :32] = (200, 60, 40)
    pixels[::6] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_style_shows_before_and_after_side_by_side(page, http):
    styles = panel(page, "styles")
    names = styles.get_by_label("Style").evaluate("(select) => [...select.options].map((o) => o.value)")
    styles.get_by_label("Image").set_input_files({"name": "photo.png", "mimeType": "image/png", "buffer": photo_png()})
    styles.get_by_label("Style").select_option(names[-1])
    styles.get_by_role("button", name="Stylise").click()
    assert finished(styles) == "done"
    assert decoded_sizes(styles.locator("img.before, img.after")) == [[64, 48], [64, 48]]
    answer = http.post("/v1/images/edits", files={"image": ("photo.png", photo_png(), "image/png")},
                       data={"model": "styles", "prompt": names[-1]}).json()
    assert styles.locator("img.after").get_attribute("src") == f"data:image/png;base64,{answer['data'][0]['b64_json']}"
    assert styles.locator("figcaption").all_inner_texts() == ["before", f"after: {names[-1]}"]
    before, after = (box := [styles.locator(f"img.{side}").bounding_box() for side in ("before", "after")])
    assert abs(before["y"] - after["y"]) < 1 and after["x"] > before["x"] + before["width"], box  # side by side
    screenshot(styles, "style")


def test_a_missing_image_is_the_apis_message_not_a_blank_panel(page):
    from playwright.sync_api import expect

    styles = panel(page, "styles")
    styles.get_by_role("button", name="Stylise").click()
    expect(styles.get_by_role("alert")).to_have_text(re.compile(r"^Error 400: image is required"))
    styles.get_by_role("button", name="Add to batch").click()
    expect(styles.get_by_role("alert")).to_have_text("Error: choose an image first")
    expect(page.locator("#batches .draft")).to_have_text("No requests in the draft yet.")


# ---------------------------------------------------------------- batches


BATCH_WAIT_MS = 240_000  # a batch is a Ray job: a driver and a ShardWriter start first


def submitted_batch(batches, button: str, requests: int) -> str:
    """Click the Batches panel's `button`, wait for its "submitted" line and return the new batch's id."""
    from playwright.sync_api import expect

    batches.get_by_role("button", name=button).click()
    submitted = batches.get_by_role("status")
    plural = "" if requests == 1 else "s"
    expect(submitted).to_have_text(re.compile(rf"^batch batch_[0-9a-f]+ submitted \({requests} request{plural}\)$"))
    return re.search(r"batch_[0-9a-f]+", submitted.inner_text()).group(0)


def test_a_batch_built_from_a_form_runs_and_its_answers_download(page, client, http):
    from playwright.sync_api import expect

    text = panel(page, "pydoc")
    text.get_by_label("Max tokens").fill("6")
    temperature = float(text.get_by_label("Temperature").input_value())
    for seed in (5, 6):
        text.get_by_label("Seed", exact=True).fill(str(seed))
        text.get_by_role("button", name="Add to batch").click()
    batches = page.locator("#batches")
    expect(batches.locator(".draft")).to_have_text("Draft: 2 requests to pydoc (/v1/completions).")
    batch_id = submitted_batch(batches, "Submit the draft", requests=2)
    expect(batches.locator(".draft")).to_have_text("No requests in the draft yet.")
    row = batches.locator(f"tr[data-batch={batch_id}]")
    expect(row.locator(".batch-status")).to_have_text("completed", timeout=BATCH_WAIT_MS)  # polled by the page
    expect(row).to_contain_text("2 of 2 answered")
    with page.expect_download() as download:
        row.get_by_role("button", name="Output").click()
    assert download.value.suggested_filename == f"{batch_id}_output.jsonl"
    downloaded = open(download.value.path(), encoding="utf-8").read()
    assert downloaded == client.files.content(client.batches.retrieve(batch_id).output_file_id).text
    answers = {line["custom_id"]: line["response"]["body"] for line in map(json.loads, downloaded.splitlines())}
    assert sorted(answers) == ["pydoc-1", "pydoc-2"]
    for custom_id, seed in (("pydoc-1", 5), ("pydoc-2", 6)):  # the form's request, answered as online
        online = http.post("/v1/completions", json={"model": "pydoc", "prompt": "The with statement", "max_tokens": 6,
                                                    "temperature": temperature, "seed": seed}).json()
        assert answers[custom_id]["choices"][0]["text"] == online["choices"][0]["text"]
    screenshot(batches, "batches")


def test_a_style_batch_built_from_the_form_holds_the_photo_and_answers_as_the_form_does(page, client, http):
    from playwright.sync_api import expect

    styles = panel(page, "styles")
    styles.get_by_label("Image").set_input_files({"name": "photo.png", "mimeType": "image/png", "buffer": photo_png()})
    styles.get_by_label("Style").select_option("flower")
    styles.get_by_role("button", name="Add to batch").click()
    batches = page.locator("#batches")
    expect(batches.locator(".draft")).to_have_text("Draft: 1 request to styles (/v1/images/edits).")
    batch_id = submitted_batch(batches, "Submit the draft", requests=1)
    expect(batches.locator(f"tr[data-batch={batch_id}] .batch-status")).to_have_text("completed", timeout=BATCH_WAIT_MS)
    output = client.files.content(client.batches.retrieve(batch_id).output_file_id).text
    answer = json.loads(output)["response"]["body"]
    online = http.post("/v1/images/edits", files={"image": ("photo.png", photo_png(), "image/png")},
                       data={"model": "styles", "prompt": "flower"}).json()
    assert answer["data"] == online["data"]  # the form's photo, carried whole in the batch line


def test_an_uploaded_batch_file_that_fails_validation_says_which_line(page):
    from playwright.sync_api import expect

    batches = page.locator("#batches")
    line = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"model": "nope", "prompt": "x"}}
    batches.get_by_label("Input file (JSONL)").set_input_files(
        {"name": "mine.jsonl", "mimeType": "application/jsonl", "buffer": (json.dumps(line) + "\n").encode()})
    batches.get_by_label("Endpoint").select_option("/v1/completions")
    batch_id = submitted_batch(batches, "Submit the file", requests=1)
    expect(batches.locator(f"tr[data-batch={batch_id}] .batch-status")).to_have_text(
        re.compile(r"^failed: line 1: model 'nope' is not served here"), timeout=BATCH_WAIT_MS)


def test_submitting_without_a_file_says_so(page):
    from playwright.sync_api import expect

    batches = page.locator("#batches")
    batches.get_by_role("button", name="Submit the file").click()
    expect(batches.get_by_role("alert")).to_have_text("Error: choose a JSONL file of requests first")
