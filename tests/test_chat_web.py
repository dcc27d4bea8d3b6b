"""
The chat server end to end: a tiny random-weight GPT served by uvicorn on 127.0.0.1, talked to
by the official `openai` client and by plain HTTP (the UI's SSE protocol), plus hostile requests,
concurrency beyond the worker count and clients that hang up mid-stream.
"""

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import httpx
import pytest
import torch

from nanochat.gpt import GPT, config_for_depth



class TestGPT(GPT):
    """A tiny random GPT that never ends its reply (so lengths are exact) and can be slowed down."""

    __test__ = False
    delay = 0.0
    banned = ()

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        logits = super().forward(idx, targets, kv_cache, loss_reduction)
        if self.banned:
            logits[..., list(self.banned)] = -1e4
        if self.delay:
            time.sleep(self.delay)
        return logits


def make_pool(tokenizer, num_workers=2):
    from nanochat.engine import Engine
    from nanochat.serving import Worker, WorkerPool
    torch.manual_seed(0)
    model = TestGPT(config_for_depth(2, 128, tokenizer.get_vocab_size()))
    model.init_weights()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
    model.eval()
    model.banned = (tokenizer.encode_special("<|assistant_end|>"), tokenizer.get_bos_token_id())
    engine = Engine(model, tokenizer)
    workers = [Worker(i, torch.device("cpu"), engine, tokenizer, nullcontext()) for i in range(num_workers)]
    return WorkerPool(workers=workers), model


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """(base_url, model) of a 2-worker server running in a background thread."""
    import uvicorn

    from scripts.chat_web import create_app
    tokenizer = _byte_tokenizer()
    pool, model = make_pool(tokenizer, num_workers=2)
    app = create_app(worker_pool=pool)
    port = free_port()
    uv_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv_server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not uv_server.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", model, tokenizer
    finally:
        uv_server.should_exit = True
        thread.join(timeout=15)


def _byte_tokenizer():
    import tiktoken

    from nanochat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, RustBPETokenizer
    ranks = {bytes([i]): i for i in range(256)}
    specials = {name: 256 + i for i, name in enumerate(SPECIAL_TOKENS)}
    return RustBPETokenizer(tiktoken.Encoding(name="bytes", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
                                              special_tokens=specials), "<|bos|>")


def sse_events(response):
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: "):]


def wait_all_workers_free(base_url, total=2, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        stats = httpx.get(f"{base_url}/health").json()
        if stats["idle_workers"] == total and stats["rows_in_use"] == 0:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"workers not released: {stats}")


# -----------------------------------------------------------------------------

def test_openai_client_streaming_and_not(server):
    from openai import OpenAI
    base_url, _, tokenizer = server
    client = OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0, timeout=60)
    model_id = client.models.list().data[0].id
    assert model_id == "nanochat-sft"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    kwargs = dict(model=model_id, messages=messages, max_tokens=12, temperature=0.7, seed=123,
                  extra_body={"top_k": 20})

    completion = client.chat.completions.create(**kwargs)
    assert completion.object == "chat.completion" and completion.model == model_id
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason == "length"
    prompt = [tokenizer.get_bos_token_id(), tokenizer.encode_special("<|user_start|>"),
              *tokenizer.encode("Be brief.\n\nHello there"), tokenizer.encode_special("<|user_end|>"),
              tokenizer.encode_special("<|assistant_start|>")]
    assert completion.usage.prompt_tokens == len(prompt)  # the system message is folded in
    assert completion.usage.completion_tokens == 12
    assert completion.usage.total_tokens == len(prompt) + 12

    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == choice.message.content  # same seed, same reply
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].choices == []

    import openai
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model_id, messages=messages, temperature=3.0)
    assert "temperature" in str(info.value)


def test_raw_openai_stream_ends_with_done(server):
    base_url, _, _ = server
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])


def test_ui_protocol_and_pages(server):
    base_url, _, _ = server
    body = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                         {"role": "user", "content": "How are you?"}],
            "temperature": 0.8, "top_k": 50, "max_tokens": 20}
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        events = [json.loads(e) for e in sse_events(response)]
    assert events[-1] == {"done": True}
    assert all(set(e) == {"token", "gpu"} and e["gpu"] in (0, 1) for e in events[:-1])
    text = "".join(e["token"] for e in events[:-1])
    assert text and "<|" not in text

    page = httpx.get(base_url + "/")
    assert page.status_code == 200 and "<title>NanoChat</title>" in page.text
    assert "/chat/completions" in page.text
    assert 'src="http' not in page.text and 'href="http' not in page.text and "@import" not in page.text
    logo = httpx.get(base_url + "/logo.svg")
    assert logo.headers["content-type"].startswith("image/svg+xml") and "<svg" in logo.text
    health = wait_all_workers_free(base_url)
    assert health["status"] == "ok" and health["ready"] and health["num_gpus"] == 2
    assert health["max_rows"] == 16 and health["queue_length"] == 0
    stats = httpx.get(base_url + "/stats").json()
    assert stats["total_workers"] == 2 and stats["rows_in_use"] == 0
    assert stats["workers"] == [{"gpu_id": 0, "device": "cpu"}, {"gpu_id": 1, "device": "cpu"}]


def _ui(messages=None, **extra):
    body = {"messages": messages if messages is not None else [{"role": "user", "content": "hi"}]}
    body.update(extra)
    return body


def _v1(messages=None, **extra):
    body = {"model": "nanochat", "messages": messages if messages is not None else [{"role": "user", "content": "hi"}]}
    body.update(extra)
    return body


user = lambda text: {"role": "user", "content": text}
BAD_REQUESTS = [
    # (path, raw body or JSON, a word the error must mention)
    ("/chat/completions", b"", "body"),
    ("/chat/completions", b'{"messages": [', "JSON"),
    ("/chat/completions", b"[1, 2]", "object"),
    ("/chat/completions", {}, "messages"),
    ("/chat/completions", _ui([]), "message"),
    ("/chat/completions", _ui([{"role": "system", "content": "x"}]), "role"),
    ("/chat/completions", _ui([user("")]), "empty"),
    ("/chat/completions", _ui([{"role": "user", "content": 123}]), "content"),
    ("/chat/completions", _ui([{"role": "user"}]), "content"),
    ("/chat/completions", _ui([user("x" * 8001)]), "too long"),
    ("/chat/completions", _ui([user("x")] * 501), "too many"),
    ("/chat/completions", _ui([user("x" * 7000)] * 5), "too long"),
    ("/chat/completions", _ui(temperature=2.5), "temperature"),
    ("/chat/completions", _ui(temperature=-0.1), "temperature"),
    ("/chat/completions", _ui(temperature="hot"), "temperature"),
    ("/chat/completions", _ui(top_k=0), "top_k"),
    ("/chat/completions", _ui(top_k=201), "top_k"),
    ("/chat/completions", _ui(max_tokens=0), "max_tokens"),
    ("/chat/completions", _ui(max_tokens=5000), "max_tokens"),
    ("/chat/completions", _ui(max_tokens=1.5), "max_tokens"),
    ("/chat/completions", b'{"messages": [{"role": "user", "content": "' + b"x" * (2 << 20) + b'"}]}', "large"),
    ("/v1/chat/completions", b"not json", "JSON"),
    ("/v1/chat/completions", _v1(n=9), "n must be"),
    ("/v1/chat/completions", _v1(n=0), "n must be"),
    ("/v1/chat/completions", _v1(stop=["a", "b", "c", "d", "e"]), "stop"),
    ("/v1/chat/completions", _v1(stop=[""]), "stop"),
    ("/v1/chat/completions", _v1(logprobs=True, top_logprobs=6), "top_logprobs"),
    ("/v1/chat/completions", _v1(top_logprobs=2), "logprobs=true"),
    ("/v1/chat/completions", _v1(presence_penalty=0.5), "presence_penalty"),
    ("/v1/completions", {"model": "m", "prompt": ""}, "prompt"),
    ("/v1/completions", {"model": "m"}, "prompt"),
    ("/v1/completions", {"model": "m", "prompt": "a", "max_tokens": -1}, "max_tokens"),
    ("/v1/completions", {"model": "m", "prompt": "a", "logprobs": 6}, "logprobs"),
    ("/v1/completions", {"model": "m", "prompt": "a", "suffix": "b"}, "suffix"),
    ("/v1/completions", {"model": "m", "prompt": ["a", "b"], "stream": True}, "single prompt"),
    ("/v1/chat/completions", _v1([{"role": "tool", "content": "x"}]), "role"),
    ("/v1/chat/completions", _v1([user("a"), {"role": "system", "content": "b"}]), "system"),
    ("/v1/chat/completions", _v1([{"role": "system", "content": "only"}]), "user"),
    ("/v1/chat/completions", _v1(max_completion_tokens=0), "max_completion_tokens"),
    ("/v1/chat/completions", _v1(stream="yes"), "stream"),
    ("/v1/chat/completions", _v1([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]), "text"),
    ("/v1/chat/completions", _v1(top_p=0), "top_p"),
    ("/v1/chat/completions", _v1(top_p=1.5), "top_p"),
    ("/v1/chat/completions", _v1([{"role": "assistant", "content": None}]), "content"),
    ("/v1/chat/completions", _v1(temperature=float("nan")), "temperature"),
]


def test_bad_requests_get_clear_4xx_errors(server):
    base_url, _, _ = server
    statuses = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for path, body, word in BAD_REQUESTS:
            if isinstance(body, bytes):
                response = client.post(path, content=body, headers={"content-type": "application/json"})
            else:
                response = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
            statuses.append(response.status_code)
            assert 400 <= response.status_code < 500, (path, body if len(str(body)) < 200 else "...", response.text)
            payload = response.json()
            if path.startswith("/v1/"):
                error = payload["error"]
                assert error["type"] == "invalid_request_error" and set(error) == {"message", "type", "param", "code"}
                message = error["message"]
            else:
                message = payload["detail"]
            assert isinstance(message, str) and word.lower() in message.lower(), (path, word, message)
        response = client.get("/v1/no-such-route")
        assert response.status_code == 404 and "error" in response.json()
    assert len(BAD_REQUESTS) >= 15 and 500 not in statuses
    wait_all_workers_free(base_url)  # nothing left a worker busy


def test_concurrent_streams_beyond_worker_count_all_complete(server):
    base_url, model, _ = server
    model.delay = 0.003  # long enough that the 8 requests really overlap

    def one(i):
        body = {"messages": [user(f"request {i}")], "max_tokens": 25, "temperature": 1.0}
        with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=60) as response:
            events = [json.loads(e) for e in sse_events(response)]
        return response.status_code, events

    try:
        t0 = time.time()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        elapsed = time.time() - t0
    finally:
        model.delay = 0.0
    gpus = set()
    for status, events in results:
        assert status == 200 and events[-1] == {"done": True}
        gpus |= {e["gpu"] for e in events[:-1]}
    assert gpus == {0, 1}
    assert elapsed < 60
    wait_all_workers_free(base_url)


def test_disconnect_mid_stream_frees_the_worker(server):
    base_url, model, _ = server
    model.delay = 0.02  # a 4096-token reply would now take minutes
    try:
        for _ in range(2):  # occupy both workers, then hang up
            body = {"messages": [user("tell me everything")], "max_tokens": 4096}
            with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=30) as response:
                first = next(sse_events(response))
                assert "token" in json.loads(first)
        stats = wait_all_workers_free(base_url, timeout=10)
        assert stats["rows_in_use"] == 0
        t0 = time.time()
        response = httpx.post(f"{base_url}/v1/chat/completions", timeout=30,
                              json={"model": "m", "messages": [user("next")], "max_tokens": 3})
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 3
        assert time.time() - t0 < 10
    finally:
        model.delay = 0.0


# -----------------------------------------------------------------------------
# pieces without a server

def test_validation_error_descriptions():
    from nanochat.serving import describe_validation_errors
    message, _ = describe_validation_errors([{"type": "json_invalid", "loc": ("body", 3),
                                              "ctx": {"error": "Expecting value"}}])
    assert message.startswith("request body is not valid JSON")
    message, param = describe_validation_errors([{"type": "string_type", "loc": ("body", "messages", 0, "content"),
                                                  "msg": "Input should be a valid string"}])
    assert param == "messages[0].content" and message.startswith("messages[0].content:")


def test_render_prompt_and_system_folding(byte_tokenizer):
    from nanochat.serving import render_prompt
    from nanochat.openai_api import fold_system_messages
    tok = byte_tokenizer
    special = tok.encode_special
    tokens = render_prompt(tok, [("user", "a"), ("assistant", "b"), ("user", "c")])
    assert tokens == [tok.get_bos_token_id(), special("<|user_start|>"), ord("a"), special("<|user_end|>"),
                      special("<|assistant_start|>"), ord("b"), special("<|assistant_end|>"),
                      special("<|user_start|>"), ord("c"), special("<|user_end|>"), special("<|assistant_start|>")]
    assert fold_system_messages([("system", "S"), ("developer", "D"), ("user", "U")]) == [("user", "S\n\nD\n\nU")]


def test_missing_checkpoint_names_directory_and_stage(tmp_path, monkeypatch, capsys):
    from scripts.chat_web import main
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        main(["--device-type=cpu", "-i", "mid"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert os.path.join(str(tmp_path), "mid_checkpoints") in err and "scripts.mid_train" in err


def test_worker_pool_loads_a_checkpoint_for_two_cpu_workers(base_dir, byte_tokenizer):
    import asyncio

    from nanochat.serving import Sampling, WorkerPool
    from test_chat_cli import save_tiny_checkpoint
    save_tiny_checkpoint(base_dir, byte_tokenizer, subdir="mid_checkpoints")
    pool = WorkerPool(num_gpus=2).load("mid", device_type="cpu", dtype="bfloat16")
    assert [w.gpu_id for w in pool.workers] == [0, 1] and pool.workers[0].engine is pool.workers[1].engine

    async def one_reply():
        pool.start()
        generation = pool.submit(render_prompt_for(pool, "hi"), Sampling(temperature=0.0, top_k=None, max_tokens=5,
                                                                         seed=1))
        text = "".join([piece async for _, piece, _ in generation.events()])
        await asyncio.sleep(0.05)  # the row is retired by the decode thread
        return generation.choices[0], text, pool.stats()

    reply, text, stats = asyncio.run(one_reply())
    assert reply.completion_tokens <= 5 and text == reply.text and stats["rows_in_use"] == 0


def render_prompt_for(pool, text):
    from nanochat.serving import render_prompt
    return render_prompt(pool.tokenizer, [("user", text)])


def test_tiny_temperature_is_greedy_and_out_of_range_seed_is_400(server):
    base_url, _, _ = server
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for temperature in (1e-40, 5e-324):
            for path in ("/chat/completions", "/v1/chat/completions"):
                body = {"messages": [{"role": "user", "content": "hi"}], "temperature": temperature,
                        "max_tokens": 4}
                if path.startswith("/v1/"):
                    body["model"] = "nanochat"
                response = client.post(path, json=body)
                assert response.status_code == 200, (path, temperature, response.text)
        for seed in (2**64, -2**63 - 1, 10**30):
            for path in ("/chat/completions", "/v1/chat/completions"):
                body = {"messages": [{"role": "user", "content": "hi"}], "seed": seed, "max_tokens": 4}
                if path.startswith("/v1/"):
                    body["model"] = "nanochat"
                response = client.post(path, json=body)
                assert response.status_code == 400, (path, seed, response.text)
                assert "-9223372036854775808" in response.text and "9223372036854775807" in response.text
    wait_all_workers_free(base_url)
