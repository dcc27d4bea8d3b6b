"""
The chat server under hostile or unusual use: start-up defaults beyond the per-request limits,
chunked bodies, forged log lines, internal errors, CORS and the optional API key. Each test talks
to the app as a client does (HTTP through uvicorn on 127.0.0.1, or the ASGI app in-process).
"""

import logging
import socket
import threading
import time
from contextlib import contextmanager, nullcontext

import httpx
import pytest
import torch

from nanochat.gpt import config_for_depth
from test_chat_web import TestGPT, _byte_tokenizer, free_port


def tiny_pool(tokenizer, model_class=TestGPT, max_seq_len=16):
    """A one-worker pool around a random d2 model whose reply never ends (so it runs to its limit)."""
    from nanochat.engine import Engine
    from nanochat.serving import Worker, WorkerPool
    torch.manual_seed(0)
    model = model_class(config_for_depth(2, max_seq_len, tokenizer.get_vocab_size()))
    model.init_weights()
    model.eval()
    model.banned = (tokenizer.encode_special("<|assistant_end|>"), tokenizer.get_bos_token_id())
    engine = Engine(model, tokenizer)
    return WorkerPool(workers=[Worker(0, torch.device("cpu"), engine, tokenizer, nullcontext())])


@contextmanager
def running_server(app):
    """Base URL of `app` served by a real uvicorn on 127.0.0.1 in a background thread."""
    import uvicorn
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def hi(**extra):
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


# -----------------------------------------------------------------------------
# start-up defaults

def test_server_defaults_beyond_request_limits_start_and_apply():
    from scripts.chat_web import create_app, parse_args, settings_from_args
    args = parse_args(["-m", "8000", "-t", "2.5", "-k", "500"])
    assert (args.max_tokens, args.temperature, args.top_k) == (8000, 2.5, 500)
    pool = tiny_pool(_byte_tokenizer())
    seen = []
    real_submit = pool.submit

    def spy_submit(tokens, sampling):  # what the endpoint asks the pool for
        seen.append(sampling)
        return real_submit(tokens, sampling)

    pool.submit = spy_submit
    app = create_app(worker_pool=pool, settings=settings_from_args(args, "cpu"))
    with running_server(app) as (host, port):
        response = httpx.post(f"http://{host}:{port}/v1/chat/completions", json=hi(), timeout=60)
        assert response.status_code == 200, response.text
        # the model's position limit (10 x 16) ends the reply long before 8000 tokens
        assert response.json()["choices"][0]["finish_reason"] == "length"
        refused = httpx.post(f"http://{host}:{port}/v1/chat/completions", json=hi(max_tokens=8000), timeout=60)
        assert refused.status_code == 400 and "max_tokens" in refused.text  # requests keep their limits
    assert seen[0].max_tokens == 8000 and seen[0].temperature == 2.5 and seen[0].top_k == 500


@pytest.mark.parametrize("argv", [["-t", "-1"], ["-t", "nan"], ["-k", "0"], ["-m", "0"]])
def test_server_defaults_the_engine_cannot_use_are_refused(argv, capsys):
    from scripts.chat_web import parse_args
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert any(flag in err for flag in ("--temperature", "--top-k", "--max-tokens")), err


# -----------------------------------------------------------------------------
# body size

def send_chunked(host, port, path, total_bytes, chunk_bytes=64 << 10):
    """Send a chunked POST of `total_bytes` (as far as the server lets us) and return the reply's bytes."""
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b'{"messages": [{"role": "user", "content": "' + b"x" * chunk_bytes
        sent = 0
        try:
            while sent < total_bytes:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
                chunk = b"x" * chunk_bytes
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        reply = b""
        try:
            while data := sock.recv(65536):
                reply += data
        except (ConnectionResetError, TimeoutError):
            pass
        return reply


@pytest.mark.parametrize("path", ["/chat/completions", "/v1/chat/completions"])
def test_chunked_body_over_the_limit_is_refused_while_it_arrives(path):
    from scripts.chat_web import MAX_BODY_BYTES, create_app
    app = create_app(worker_pool=tiny_pool(_byte_tokenizer()))
    with running_server(app) as (host, port):
        reply = send_chunked(host, port, path, 3 << 20)
        status_line = reply.split(b"\r\n", 1)[0]
        assert status_line == b"HTTP/1.1 413 Request Entity Too Large", reply[:300]
        assert f"at most {MAX_BODY_BYTES}".encode() in reply
        assert httpx.get(f"http://{host}:{port}/health", timeout=10).json()["status"] == "ok"


# -----------------------------------------------------------------------------
# logs and internal errors

def test_message_texts_cannot_forge_log_lines(caplog):
    from scripts.chat_web import create_app
    caplog.set_level(logging.INFO)
    app = create_app(worker_pool=tiny_pool(_byte_tokenizer()))
    forged = "hello\nFAKE LOG LINE: admin logged in\r\nFAKE again"
    with running_server(app) as (host, port):
        body = {"messages": [{"role": "user", "content": forged}], "max_tokens": 3}
        with httpx.stream("POST", f"http://{host}:{port}/chat/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            response.read()
        response = httpx.post(f"http://{host}:{port}/v1/chat/completions", timeout=30,
                              json={"model": "m", "messages": [{"role": "user", "content": forged}], "max_tokens": 3})
        assert response.status_code == 200
    lines = [line for record in caplog.records for line in record.getMessage().splitlines()]
    assert any("FAKE LOG LINE" in line for line in lines)  # the text is logged, escaped
    assert not [line for line in lines if line.lstrip().startswith("FAKE")]


class BrokenGPT(TestGPT):
    """A model whose forward pass fails with a message that must stay in the server's log."""

    __test__ = False

    def forward(self, *args, **kwargs):
        raise RuntimeError("SECRET-DETAIL /srv/models/internal_path.pt")


def test_internal_errors_answer_500_without_the_exception_text(caplog):
    from scripts.chat_web import create_app
    caplog.set_level(logging.INFO)
    app = create_app(worker_pool=tiny_pool(_byte_tokenizer(), model_class=BrokenGPT))
    with running_server(app) as (host, port):
        base = f"http://{host}:{port}"
        response = httpx.post(f"{base}/v1/chat/completions", json=hi(max_tokens=3), timeout=30)
        assert response.status_code == 500
        assert response.json()["error"]["type"] == "server_error" and "SECRET" not in response.text
        streams = [("/v1/chat/completions", hi(max_tokens=3, stream=True)),
                   ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})]
        for path, body in streams:
            with httpx.stream("POST", base + path, json=body, timeout=30) as response:
                text = response.read().decode()
            assert "error" in text and "SECRET" not in text, (path, text)
        assert httpx.get(f"{base}/health", timeout=10).json()["status"] == "ok"
    logged = "\n".join(record.getMessage() + "\n" + (record.exc_text or "") for record in caplog.records)
    tracebacks = [r for r in caplog.records if r.exc_info and "SECRET-DETAIL" in str(r.exc_info[1])]
    assert tracebacks, logged  # the details are in the server's log


class BrokenTokenizer:
    """A tokenizer that fails while the request is being prepared (before any reply starts)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def encode(self, text):
        raise KeyError("SECRET-DETAIL vocabulary table")


@pytest.mark.parametrize("path", ["/chat/completions", "/v1/chat/completions"])
def test_unexpected_errors_before_the_reply_answer_a_generic_500(path):
    from scripts.chat_web import create_app
    pool = tiny_pool(_byte_tokenizer())
    pool.workers[0].tokenizer = BrokenTokenizer(pool.workers[0].tokenizer)
    with running_server(create_app(worker_pool=pool)) as (host, port):
        response = httpx.post(f"http://{host}:{port}{path}", json=hi(max_tokens=3), timeout=30)
    assert response.status_code == 500 and "SECRET" not in response.text
    message = response.json()["error"]["message"] if path.startswith("/v1/") else response.json()["detail"]
    assert "server log" in message


# -----------------------------------------------------------------------------
# CORS and the API key

def test_foreign_origins_are_not_granted_credentials():
    from scripts.chat_web import create_app
    app = create_app(worker_pool=tiny_pool(_byte_tokenizer()))
    with running_server(app) as (host, port):
        preflight = httpx.options(f"http://{host}:{port}/v1/chat/completions", timeout=10, headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization"})
        simple = httpx.get(f"http://{host}:{port}/health", headers={"Origin": "https://evil.example"}, timeout=10)
    for response in (preflight, simple):
        assert response.headers.get("access-control-allow-credentials") != "true", response.headers
        assert response.headers.get("access-control-allow-origin") != "https://evil.example"


def test_api_key_guards_the_chat_routes_only(monkeypatch):
    from scripts.chat_web import create_app, parse_args, settings_from_args
    monkeypatch.setenv("NANOCHAT_API_KEY", "s3cret-key")
    settings = settings_from_args(parse_args([]), "cpu")
    app = create_app(worker_pool=tiny_pool(_byte_tokenizer()), settings=settings)
    ui_body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with running_server(app) as (host, port):
        base = f"http://{host}:{port}"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            response = httpx.post(f"{base}/v1/chat/completions", json=hi(max_tokens=2), headers=headers, timeout=30)
            assert response.status_code == 401, headers
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert httpx.get(f"{base}/v1/models", headers=headers, timeout=30).status_code == 401
            assert httpx.post(f"{base}/chat/completions", json=ui_body, headers=headers, timeout=30).status_code == 401
        for path in ("/", "/health", "/logo.svg"):
            assert httpx.get(base + path, timeout=30).status_code == 200, path

        from openai import AuthenticationError, OpenAI
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
        client = OpenAI(base_url=f"{base}/v1", api_key="s3cret-key", max_retries=0, timeout=60)
        completion = client.chat.completions.create(model="m", messages=hi()["messages"], max_tokens=2)
        assert completion.usage.completion_tokens == 2
        good = {"Authorization": "Bearer s3cret-key"}
        assert httpx.post(f"{base}/chat/completions", json=ui_body, headers=good, timeout=30).status_code == 200


def test_api_key_flag_wins_over_the_environment(monkeypatch):
    from scripts.chat_web import parse_args
    monkeypatch.setenv("NANOCHAT_API_KEY", "from-env")
    assert parse_args([]).api_key == "from-env"
    assert parse_args(["--api-key", "from-flag"]).api_key == "from-flag"
    monkeypatch.delenv("NANOCHAT_API_KEY")
    assert parse_args([]).api_key is None


# -----------------------------------------------------------------------------
# slow clients, against the real server process

@contextmanager
def chat_web_process(base_dir, *flags):
    """`python -m scripts.chat_web` on the tiny sft checkpoint in `base_dir`; yields its base URL."""
    import os
    import subprocess
    import sys
    port = free_port()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    server = subprocess.Popen([sys.executable, "-m", "scripts.chat_web", "--device-type=cpu", "--host=127.0.0.1",
                               f"--port={port}", *flags], cwd=repo, env={**os.environ, "NANOCHAT_BASE_DIR": base_dir},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the server did not start"
            try:
                if httpx.get(f"{url}/health", timeout=2).json()["ready"]:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield port, url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:  # still waiting on held connections
            server.kill()
            server.wait()


def test_slow_headers_and_slow_bodies_are_timed_out(base_dir, byte_tokenizer):
    from test_chat_cli import save_tiny_checkpoint
    save_tiny_checkpoint(base_dir, byte_tokenizer)
    with chat_web_process(base_dir, "--header-timeout=1", "--body-timeout=2") as (port, url):
        slow_head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl"
        slow_body = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"model\": ")
        sockets = []
        for head in [slow_head] * 20 + [slow_body] * 20:
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(10)
            s.sendall(head)
            sockets.append(s)
        idle = socket.create_connection(("127.0.0.1", port))  # connects and never sends a byte
        idle.settimeout(10)
        t0 = time.time()
        answers = []
        for s in sockets:
            data = b""
            while chunk := s.recv(4096):  # until the server closes the connection
                data += chunk
            answers.append(data)
            s.close()
        assert idle.recv(4096) == b"" and time.time() - t0 < 8
        idle.close()
        assert all(a.startswith(b"HTTP/1.1 408") and b"headers" in a for a in answers[:20])
        assert all(a.startswith(b"HTTP/1.1 408") and b"body" in a for a in answers[20:])
        # the server is still there for clients that send at a normal pace
        reply = httpx.post(f"{url}/v1/chat/completions", json=hi(max_tokens=2), timeout=30)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 2
