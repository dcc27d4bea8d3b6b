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
