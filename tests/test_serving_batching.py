"""
Continuous batching and the OpenAI fields built on it, through a real uvicorn server on 127.0.0.1:
a request decodes to the same tokens alone or batched with others, n choices share one prefill,
stop strings are cut across token boundaries, logprobs equal the model's own log-likelihood, and
a full server answers 429 with Retry-After instead of hanging.
"""

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import httpx
import pytest
import torch
import torch.nn.functional as F

from nanochat.gpt import config_for_depth
from test_chat_web import TestGPT, _byte_tokenizer, sse_events
from test_chat_web_hardening import running_server


class CountingGPT(TestGPT):
    """Counts prefills (forward passes over more than one position) and writes ASCII only, so that
    a reply's text encodes back to exactly the tokens that produced it."""

    __test__ = False
    prefills = 0

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        if idx.size(1) > 1:
            self.prefills += 1
        return super().forward(idx, targets, kv_cache, loss_reduction)


def ascii_model(tokenizer):
    torch.manual_seed(0)
    model = CountingGPT(config_for_depth(2, 128, tokenizer.get_vocab_size()))
    model.init_weights()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)  # peaked enough that sampling settings matter
        for name, param in model.named_parameters():
            if "c_proj" in name:  # initialised to zero: without this the blocks would ignore the context
                param.normal_(0, 0.2)
    model.eval()
    model.banned = tuple(range(128, tokenizer.get_vocab_size()))  # no specials: replies never end early
    return model


def serve(model, tokenizer, max_rows=8, max_queue=32):
    from nanochat.engine import Engine
    from nanochat.serving import Worker, WorkerPool
    from scripts.chat_web import create_app
    worker = Worker(0, torch.device("cpu"), Engine(model, tokenizer), tokenizer, nullcontext())
    return running_server(create_app(worker_pool=WorkerPool(workers=[worker], max_rows=max_rows, max_queue=max_queue)))


@pytest.fixture(scope="module")
def server():
    tokenizer = _byte_tokenizer()
    model = ascii_model(tokenizer)
    with serve(model, tokenizer) as (host, port):
        yield f"http://{host}:{port}", model, tokenizer


def chat(base, content, **extra):
    body = {"model": "m", "messages": [{"role": "user", "content": content}], **extra}
    response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def prompt_tokens(tokenizer, content):
    from nanochat.serving import render_prompt
    return render_prompt(tokenizer, [("user", content)])


def sequence_logprobs(model, tokens, start):
    """log p(tokens[i] | tokens[:i]) for i >= start, from one forward pass of the whole sequence."""
    with torch.no_grad():
        logprobs = F.log_softmax(model.forward(torch.tensor([tokens])).float()[0], dim=-1)
    return [logprobs[i - 1, tokens[i]].item() for i in range(start, len(tokens))]


def test_greedy_reply_is_the_same_alone_and_batched(server):
    base, model, _ = server
    alone = chat(base, "the same question", max_tokens=60, temperature=0.0, logprobs=True)["choices"][0]
    model.delay = 0.005  # so that the requests really decode side by side
    try:
        with ThreadPoolExecutor(6) as pool:
            # replies of different lengths, so that rows retire (and ours moves to another row) while ours decodes
            futures = [pool.submit(chat, base, f"another question {i}", max_tokens=20 + 15 * i, temperature=1.0,
                                   seed=i) for i in range(5)]
            time.sleep(0.1)  # the others are decoding when ours joins the batch
            batched = chat(base, "the same question", max_tokens=60, temperature=0.0, logprobs=True)["choices"][0]
            others = [f.result() for f in futures]
    finally:
        model.delay = 0.0
    assert all(o["choices"][0]["finish_reason"] == "length" for o in others)
    assert batched["message"]["content"] == alone["message"]["content"]
    # Batched matrix products may sum in another order than batch-1 ones, so the logits can differ
    # in the last bits: compare them within 1e-4 (the tokens above must be equal).
    for a, b in zip(alone["logprobs"]["content"], batched["logprobs"]["content"], strict=True):
        assert abs(a["logprob"] - b["logprob"]) < 1e-4


def test_n_choices_come_from_one_prefill(server):
    base, model, _ = server
    before = model.prefills
    reply = chat(base, "four ways", n=4, max_tokens=12, temperature=1.0, seed=7)
    assert model.prefills - before == 1
    texts = [c["message"]["content"] for c in reply["choices"]]
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2, 3]
    assert len(set(texts)) == 4 and all(len(t) == 12 for t in texts)
    assert reply["usage"]["completion_tokens"] == 48
    again = chat(base, "four ways", n=4, max_tokens=12, temperature=1.0, seed=7)
    assert [c["message"]["content"] for c in again["choices"]] == texts  # the seed fixes every choice


def test_stop_string_across_token_boundaries(server):
    base, _, _ = server
    full = chat(base, "stop somewhere", max_tokens=30, temperature=0.0)["choices"][0]["message"]["content"]
    stop = full[12:15]  # three one-byte tokens: the stop string spans two token boundaries
    expected = full[:full.find(stop)]
    reply = chat(base, "stop somewhere", max_tokens=30, temperature=0.0, stop=["never-there", stop])["choices"][0]
    assert reply["message"]["content"] == expected and reply["finish_reason"] == "stop"

    body = {"model": "m", "messages": [{"role": "user", "content": "stop somewhere"}], "max_tokens": 30,
            "temperature": 0.0, "stop": stop, "stream": True}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as response:
        chunks = [json.loads(e) for e in sse_events(response) if e != "[DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_logprobs_sum_to_the_sequence_log_likelihood(server):
    base, model, tokenizer = server
    reply = chat(base, "score me", max_tokens=20, temperature=1.0, seed=3, logprobs=True, top_logprobs=3)
    choice = reply["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(item["token"] for item in content) == choice["message"]["content"]
    assert all(len(item["top_logprobs"]) == 3 for item in content)
    assert all(item["top_logprobs"][0]["logprob"] >= item["logprob"] - 1e-6 for item in content)
    prompt = prompt_tokens(tokenizer, "score me")
    expected = sequence_logprobs(model, prompt + tokenizer.encode(choice["message"]["content"]), len(prompt))
    assert math.isclose(sum(item["logprob"] for item in content), sum(expected), rel_tol=1e-4, abs_tol=1e-4)


def test_completions_echo_scores_the_prompt_like_a_forward_pass(server):
    base, model, tokenizer = server
    text = "The capital of France is Paris."
    response = httpx.post(f"{base}/v1/completions", timeout=60,
                          json={"model": "m", "prompt": text, "echo": True, "logprobs": 1, "max_tokens": 0})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["text"] == text and response.json()["usage"]["completion_tokens"] == 0
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == text and logprobs["text_offset"][:3] == [0, 1, 2]
    tokens = tokenizer.encode(text, prepend=tokenizer.get_bos_token_id())
    expected = sequence_logprobs(model, tokens, 1)
    assert len(logprobs["token_logprobs"]) == len(expected)
    assert max(abs(a - b) for a, b in zip(logprobs["token_logprobs"], expected)) < 1e-5


def test_openai_client_uses_every_new_field(server):
    import openai
    base, _, _ = server
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], n=3,
                                           max_tokens=10, temperature=0.9, top_p=0.9, seed=5, stop=["\n\n"],
                                           logprobs=True, top_logprobs=2)
    assert len(reply.choices) == 3
    for choice in reply.choices:
        assert choice.finish_reason in ("length", "stop")
        assert len(choice.logprobs.content[0].top_logprobs) == 2
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], n=2,
                                            max_tokens=8, temperature=0.9, seed=5, stream=True)
    texts = {0: "", 1: ""}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert all(len(t) == 8 for t in texts.values())

    completion = client.completions.create(model="m", prompt="Once upon a time", max_tokens=6, echo=True,
                                           logprobs=2, temperature=0.0)
    choice = completion.choices[0]
    assert choice.text.startswith("Once upon a time") and len(choice.text) == len("Once upon a time") + 6
    assert len(choice.logprobs.token_logprobs) == len("Once upon a time") + 6
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    scored = client.completions.create(model="m", prompt=["a b", "c d"], max_tokens=3, temperature=0.0)
    assert [c.index for c in scored.choices] == [0, 1] and all(len(c.text) == 3 for c in scored.choices)


def test_a_full_server_answers_429_with_retry_after():
    import openai
    tokenizer = _byte_tokenizer()
    model = ascii_model(tokenizer)
    model.delay = 0.02
    with serve(model, tokenizer, max_rows=1, max_queue=0) as (host, port):
        base = f"http://{host}:{port}"
        body = {"messages": [{"role": "user", "content": "long"}], "max_tokens": 2000}
        with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=60) as busy:
            events = sse_events(busy)  # kept: dropping the iterator would close the stream
            next(events)  # the only row is taken
            refused = httpx.post(f"{base}/v1/chat/completions", timeout=30,
                                 json={"model": "m", "messages": [{"role": "user", "content": "me too"}]})
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert httpx.post(f"{base}/chat/completions", json=body, timeout=30).status_code == 429
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30)
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
            assert httpx.get(f"{base}/health").json()["rows_in_use"] == 1
        model.delay = 0.0
        deadline = time.time() + 10  # the dropped stream frees its row at its next token
        while httpx.get(f"{base}/health").json()["rows_in_use"] and time.time() < deadline:
            time.sleep(0.05)
        ok = httpx.post(f"{base}/v1/chat/completions", timeout=30,
                        json={"model": "m", "messages": [{"role": "user", "content": "now"}], "max_tokens": 3})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


def test_many_clients_on_few_rows_are_all_served_or_refused():
    tokenizer = _byte_tokenizer()
    model = ascii_model(tokenizer)
    with serve(model, tokenizer, max_rows=4, max_queue=4) as (host, port):
        base = f"http://{host}:{port}"

        def one(i):
            body = {"messages": [{"role": "user", "content": f"client {i}"}], "max_tokens": 16}
            with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=60) as response:
                events = [json.loads(e) for e in sse_events(response)] if response.status_code == 200 else []
            return response.status_code, events

        barrier = threading.Barrier(16)
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: (barrier.wait(), one(i))[1], range(16)))
        statuses = [status for status, _ in results]
        assert set(statuses) <= {200, 429} and statuses.count(200) >= 8
        for status, events in results:
            if status == 200:
                assert events[-1] == {"done": True} and len("".join(e["token"] for e in events[:-1])) == 16
        assert httpx.get(f"{base}/health").json()["rows_in_use"] == 0
