"""
Drive the chat UI in a real headless Chromium and save a screenshot of a streamed reply.

    python dev/screenshot_ui.py --out ui.png                   # tiny random model, no checkpoint needed
    python dev/screenshot_ui.py --url http://localhost:8000    # an already running chat_web

The script starts the chat server on 127.0.0.1 (unless --url is given), drives Chromium over the DevTools
protocol on a pipe (no extra packages: NUL-separated JSON on file descriptors 3 and 4), types a message,
presses Enter, waits for the streamed reply and captures the page. Needs Chromium (apt-get install chromium).
"""

import argparse
import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium():
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


# A demo server: a tiny random-weight model over a byte tokenizer
def demo_pool():
    """A WorkerPool serving an untrained depth-2 GPT that writes random lowercase words."""
    import torch

    from dev.demo import byte_tokenizer
    from nanochat.engine import Engine
    from nanochat.gpt import GPT, config_for_depth
    from nanochat.serving import Worker, WorkerPool

    tokenizer = byte_tokenizer()
    allowed = [ord(c) for c in "abcdefghijklmnopqrstuvwxyz     "] + [tokenizer.encode_special("<|assistant_end|>")]
    mask = torch.full((tokenizer.get_vocab_size(),), -1e4)
    mask[allowed] = 0.0

    class DemoGPT(GPT):
        def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
            return super().forward(idx, targets, kv_cache, loss_reduction) + mask

    torch.manual_seed(0)
    model = DemoGPT(config_for_depth(2, 256, tokenizer.get_vocab_size()))
    model.init_weights()
    torch.nn.init.normal_(model.lm_head.weight, 0, 0.3)
    model.eval()
    worker = Worker(0, torch.device("cpu"), Engine(model, tokenizer), tokenizer, contextlib.nullcontext())
    return WorkerPool(workers=[worker])


def start_demo_server(timeout=30, api_key=None):
    """Run the chat server with the demo model in a background thread; returns (url, stop_fn)."""
    from types import SimpleNamespace

    import uvicorn

    from scripts.chat_web import DEFAULTS, create_app
    settings = SimpleNamespace(**{**vars(DEFAULTS), "api_key": api_key})
    app = create_app(worker_pool=demo_pool(), settings=settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))  # a free port
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + timeout
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the chat server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]

    def stop():
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop


# Chromium over the DevTools pipe
class DevToolsPipe:
    """Minimal DevTools protocol client over --remote-debugging-pipe."""

    def __init__(self, chromium, width=1000, height=760):
        self.profile = tempfile.mkdtemp(prefix="nanochat-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds():  # the browser reads commands on fd 3 and writes replies on fd 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
                "--remote-debugging-pipe", f"--user-data-dir={self.profile}", f"--window-size={width},{height}"]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=wire_fds, pass_fds=(3, 4))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer, self._next_id, self.session = b"", 0, None  # unread bytes, last command id, attached page

    def send(self, method, params=None, timeout=30, session=True):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})

    def _read_message(self, deadline):
        while b"\0" not in self._buffer:
            remaining = deadline - time.time()
            if remaining <= 0:
                raise TimeoutError("Chromium did not answer in time")
            if select.select([self._from_browser], [], [], remaining)[0]:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open_page(self, url):
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.send("Page.enable")
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression, timeout=30):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, timeout=timeout)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.evaluate(expression):
                return
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for: {expression}")

    def close(self):
        with contextlib.suppress(Exception):  # the browser may already be gone
            self.send("Browser.close", session=False, timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


def screenshot_chat(url, out_path, message, chromium=None, timeout=90):
    """Load the UI at `url`, send `message`, wait for the streamed reply, save a PNG. Returns what
    the page showed: {"user": ..., "assistant": ..., "errors": [...], "bytes": size of the PNG}."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found; install it (Debian: apt-get install chromium) or pass --chromium")
    browser = DevToolsPipe(chromium)
    try:
        browser.open_page(url)
        browser.wait_for("document.readyState === 'complete' && typeof sendMessage === 'function'", timeout)
        browser.evaluate("document.getElementById('input').focus()")
        browser.send("Input.insertText", {"text": message})
        for kind, text in (("keyDown", "\r"), ("keyUp", "")):
            browser.send("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                    "windowsVirtualKeyCode": 13, "text": text})
        browser.wait_for("messages.length === 2 && !isGenerating || document.querySelector('.error') !== null", timeout)
        shown = browser.evaluate("""({
            user: [...document.querySelectorAll('.message.user .content')].map(e => e.textContent),
            assistant: [...document.querySelectorAll('.message.assistant .content')].map(e => e.textContent),
            errors: [...document.querySelectorAll('.error')].map(e => e.textContent),
        })""")
        png = base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"})["data"])
    finally:
        browser.close()
    with open(out_path, "wb") as f:
        f.write(png)
    return {**shown, "bytes": len(png)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="ui_screenshot.png", help="PNG to write")
    parser.add_argument("--message", default="Hello! What can you do?", help="what to type into the chat")
    parser.add_argument("--url", default=None, help="a running chat_web (default: start a demo server)")
    parser.add_argument("--chromium", default=None, help="path of the Chromium binary")
    args = parser.parse_args()
    sys.path.insert(0, REPO)
    url, stop = start_demo_server() if args.url is None else (args.url, lambda: None)
    try:
        shown = screenshot_chat(url, args.out, args.message, args.chromium)
    finally:
        stop()
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    print(f"Saved {args.out}")


if __name__ == "__main__":
    main()
