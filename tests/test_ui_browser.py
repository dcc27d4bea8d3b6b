"""The chat UI in a real headless Chromium: load the page, send a message, see the streamed reply."""

import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_screenshot_tool():
    spec = importlib.util.spec_from_file_location("screenshot_ui", os.path.join(REPO, "dev", "screenshot_ui.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ui_streams_a_reply_in_chromium(tmp_path):
    tool = load_screenshot_tool()
    if tool.find_chromium() is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    url, stop = tool.start_demo_server()
    try:
        out = tmp_path / "ui.png"
        shown = tool.screenshot_chat(url, str(out), "Hello there, nanochat!", timeout=120)
    finally:
        stop()
    assert shown["errors"] == []
    assert shown["user"] == ["Hello there, nanochat!"]
    assert len(shown["assistant"]) == 1 and shown["assistant"][0].strip()
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_ui_asks_once_for_the_api_key_and_keeps_it():
    tool = load_screenshot_tool()
    chromium = tool.find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    url, stop = tool.start_demo_server(api_key="s3cret-key")
    browser = tool.DevToolsPipe(chromium)
    try:
        browser.open_page(url)
        browser.wait_for("document.readyState === 'complete' && typeof sendMessage === 'function'")
        # the user's answer to the key prompt (a real dialog would block the DevTools session)
        browser.evaluate("window.prompts = 0; window.prompt = () => { window.prompts++; return 's3cret-key'; }")
        for turn in (1, 2):
            browser.evaluate(f"document.getElementById('input').value = 'hello {turn}'; sendMessage()")
            browser.wait_for(f"messages.length === {2 * turn} && !isGenerating"
                             " || document.querySelector('.error') !== null", timeout=120)
        shown = browser.evaluate("""({prompts: window.prompts, key: localStorage.getItem('nanochat-api-key'),
            errors: [...document.querySelectorAll('.error')].map(e => e.textContent),
            replies: [...document.querySelectorAll('.message.assistant .content')].map(e => e.textContent)})""")
    finally:
        browser.close()
        stop()
    assert shown["errors"] == [] and len(shown["replies"]) == 2 and all(r.strip() for r in shown["replies"])
    assert shown["prompts"] == 1 and shown["key"] == "s3cret-key"
