"""
OpenAI-compatible routes of the chat server, so the official `openai` client (and tools and
evaluation harnesses built on it) can talk to nanochat:

    POST /v1/chat/completions   chat models: n, stop, temperature, top_p, seed, logprobs/top_logprobs
    POST /v1/completions        base models: a plain prompt, echo, logprobs of prompt and completion
    GET  /v1/models

    client = OpenAI(base_url="http://localhost:8000/v1", api_key="unused")
    client.chat.completions.create(model="nanochat", messages=[...], stream=True)

Beyond OpenAI's parameters, `top_k` is accepted (pass it via `extra_body`). System (and
developer) messages at the start are folded into the first user message, as the tokenizer's
conversation rendering does. Errors use OpenAI's shape: {"error": {message, type, param, code}}.
"""

import json
import time
import uuid
from itertools import accumulate

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, StrictBool

from nanochat.serving import (MAX_MAX_TOKENS, RequestError, check_choices, check_messages, check_range, check_sampling,
                              render_prompt, request_sampling)

router = APIRouter(prefix="/v1")
CREATED = int(time.time())
SYSTEM_ROLES = ("system", "developer")
MAX_PROMPTS = 16  # prompts in one /v1/completions request


def error_body(status, message, param=None, code=None):
    kind = "server_error" if status >= 500 else "requests" if status == 429 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_error(status, message, param=None, code=None):
    return JSONResponse(error_body(status, message, param, code), status_code=status)


def model_id(settings):
    tag = f"-{settings.model_tag}" if getattr(settings, "model_tag", None) else ""
    return f"nanochat-{settings.source}{tag}"


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class Message(BaseModel):
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool | None = None


class SamplingRequest(BaseModel):
    """The fields both completion routes share; unknown OpenAI parameters are ignored (pydantic's default)."""
    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    n: int | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class ChatCompletionRequest(SamplingRequest):
    messages: list[Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: StrictBool | None = None
    top_logprobs: int | None = None


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
    max_tokens: int | None = 16  # OpenAI's default for completions
    logprobs: int | None = None
    echo: StrictBool | None = False
    suffix: str | None = None
    best_of: int | None = None


def message_text(index, message):
    """The text of a message whose content is a string or a list of text parts."""
    if message.content is None:
        raise RequestError(f"message {index} has no content", f"messages[{index}].content")
    if isinstance(message.content, str):
        return message.content
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise RequestError(f"message {index}: only text content parts are supported, got {part.type!r}",
                               f"messages[{index}].content")
    return "".join(part.text for part in message.content)


def fold_system_messages(messages):
    """(role, content) pairs with leading system/developer messages merged into the first user message."""
    system = []
    while messages and messages[0][0] in SYSTEM_ROLES:
        system.append(messages[0][1])
        messages = messages[1:]
    if any(role in SYSTEM_ROLES for role, _ in messages):
        raise RequestError("system messages are supported only at the start of the conversation", "messages")
    if system:
        if not messages or messages[0][0] != "user":
            raise RequestError("a system message must be followed by a user message", "messages")
        messages = [("user", "\n\n".join(system) + "\n\n" + messages[0][1])] + messages[1:]
    return messages


def check_unsupported(body):
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) not in (None, 0.0):
            raise RequestError(f"{name} is not supported", name)
    if getattr(body, "suffix", None):
        raise RequestError("suffix is not supported", "suffix")
    if getattr(body, "best_of", None) not in (None, 1, body.n or 1):
        raise RequestError("best_of other than n is not supported", "best_of")


def check_prompt_length(tokens, pool, param="messages", what="the prompt"):
    if len(tokens) >= pool.max_context:
        raise RequestError(f"{what} is {len(tokens)} tokens; this model handles fewer than {pool.max_context}", param)


def prepare_chat(body, request):
    """Validate a chat request and return (prompt tokens, Sampling)."""
    check_unsupported(body)
    messages = [(m.role, message_text(i, m)) for i, m in enumerate(body.messages)]
    check_messages(messages, allowed_roles=("system", "developer", "user", "assistant"))
    messages = fold_system_messages(messages)
    max_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    check_sampling(body.temperature, body.top_k, max_tokens, max_tokens_param=max_param, seed=body.seed)
    check_choices(body.n, body.stop, body.top_p, body.top_logprobs)
    if body.top_logprobs is not None and not body.logprobs:
        raise RequestError("top_logprobs needs logprobs=true", "top_logprobs")
    pool = request.app.state.worker_pool
    tokens = render_prompt(pool.tokenizer, messages)
    check_prompt_length(tokens, pool)
    top = (body.top_logprobs or 0) if body.logprobs else None
    return tokens, request_sampling(request.app.state.settings, body.temperature, body.top_k, max_tokens, body.seed,
                                    body.top_p, body.n, body.stop, logprobs=top)


def usage(generations):
    prompt_tokens = sum(len(g.tokens) for g in generations)
    completion_tokens = sum(c.completion_tokens for g in generations for c in g.choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response_meta(prefix, request):
    return dict(id=f"{prefix}-{uuid.uuid4().hex}", created=int(time.time()), model=model_id(request.app.state.settings))


async def run_all(generations, request):
    """Decode every generation to its end; None, or the 500 reply when the generation failed."""
    try:
        for generation in generations:
            async for _ in generation.events(request.is_disconnected):
                pass
    except RuntimeError as e:
        return openai_error(500, str(e))
    finally:
        for generation in generations:
            generation.cancel()


def sse(payload):
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def stream_response(body, generation, head, choices):
    """The SSE reply of either route: a chunk (`head` + one choice) per dict that `choices` yields,
    an in-stream error if the generation fails, the usage chunk when asked for, then `data: [DONE]`."""
    async def events():
        try:
            async for choice in choices:
                yield sse({**head, "choices": [choice]})
        except RuntimeError as e:
            yield sse(error_body(500, str(e)))
            return
        if body.stream_options and body.stream_options.include_usage:
            yield sse({**head, "choices": [], "usage": usage([generation])})
        yield "data: [DONE]\n\n"
    return StreamingResponse(events(), media_type="text/event-stream")


def chat_logprobs(tokenizer, entries):
    """OpenAI's chat `logprobs` object of a list of our entries."""
    def item(token, logprob):
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
    return {"content": [{**item(e["id"], e["logprob"]), "top_logprobs": [item(t, lp) for t, lp in e["top"]]}
                        for e in entries]}


@router.get("/models")
async def list_models(request: Request):
    return {"object": "list", "data": [{"id": model_id(request.app.state.settings), "object": "model",
                                        "created": CREATED, "owned_by": "nanochat"}]}


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    tokens, sampling = prepare_chat(body, request)
    pool = request.app.state.worker_pool
    generation = pool.submit(tokens, sampling)  # ServerBusy -> 429 before any byte is sent
    meta = response_meta("chatcmpl", request)
    if body.stream:
        head = {**meta, "object": "chat.completion.chunk", "system_fingerprint": None}
        return stream_response(body, generation, head, chat_chunks(pool, generation, request))
    if failed := await run_all([generation], request):
        return failed
    choices = [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                "logprobs": chat_logprobs(pool.tokenizer, c.logprobs) if sampling.logprobs is not None else None,
                "finish_reason": c.finish_reason} for c in generation.choices]
    return {**meta, "object": "chat.completion", "system_fingerprint": None, "choices": choices,
            "usage": usage([generation])}


async def chat_chunks(pool, generation, request):
    """The choices of the chat.completion.chunk events: a role, the content pieces, the finish reason.
    (An event has a logprob entry exactly when the request asked for logprobs.)"""
    for choice in generation.choices:
        yield {"index": choice.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
               "finish_reason": None}
    async for choice, text, entry in generation.events(request.is_disconnected):
        logprobs = chat_logprobs(pool.tokenizer, [entry]) if entry is not None else None
        if text or logprobs:
            yield {"index": choice.index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": None}
        if choice.finish_reason is not None:
            yield {"index": choice.index, "delta": {}, "logprobs": None, "finish_reason": choice.finish_reason}


# -----------------------------------------------------------------------------
# /v1/completions: plain text in, text out (base models; evaluation harnesses score with echo + logprobs)

def prepare_completion(body, request):
    """Validate a completion request and return (prompt token lists, Sampling)."""
    check_unsupported(body)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts or not all(prompts):
        raise RequestError("prompt must be a non-empty string or a list of non-empty strings", "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise RequestError(f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}", "prompt")
    if len(prompts) > 1 and body.stream:
        raise RequestError("streaming takes a single prompt", "prompt")
    check_range("max_tokens", body.max_tokens, 0, MAX_MAX_TOKENS)
    if body.max_tokens == 0 and body.stream:
        raise RequestError("max_tokens=0 (scoring the prompt) needs stream=false", "max_tokens")
    check_sampling(body.temperature, body.top_k, seed=body.seed)
    check_choices(body.n, body.stop, body.top_p, body.logprobs, top_logprobs_param="logprobs")
    pool = request.app.state.worker_pool
    token_lists = [pool.tokenizer.encode(prompt, prepend=pool.tokenizer.get_bos_token_id()) for prompt in prompts]
    for tokens in token_lists:
        check_prompt_length(tokens, pool, "prompt")
    return prompts, token_lists, request_sampling(
        request.app.state.settings, body.temperature, body.top_k, body.max_tokens, body.seed, body.top_p, body.n,
        body.stop, logprobs=body.logprobs, prompt_logprobs=bool(body.echo) and body.logprobs is not None)


def completion_logprobs(tokenizer, entries, offset):
    """OpenAI's (legacy) completions `logprobs`: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens = [tokenizer.decode([e["id"]]) for e in entries]
    return {"tokens": tokens, "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{tokenizer.decode([t]): lp for t, lp in e["top"]} for e in entries],
            "text_offset": list(accumulate(map(len, tokens), initial=offset))[:-1]}  # where each token starts


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    prompts, token_lists, sampling = prepare_completion(body, request)
    pool = request.app.state.worker_pool
    generations = []
    try:
        for tokens in token_lists:
            generations.append(pool.submit(tokens, sampling))
    except Exception:  # ServerBusy -> 429: the prompts already queued are not wanted any more
        for generation in generations:
            generation.cancel()
        raise
    meta = response_meta("cmpl", request)
    if body.stream:
        chunks = completion_chunks(pool, generations[0], prompts[0], body.echo, request)
        return stream_response(body, generations[0], {**meta, "object": "text_completion"}, chunks)
    if failed := await run_all(generations, request):
        return failed
    choices = []
    for prompt, generation in zip(prompts, generations):
        for c in generation.choices:
            logprobs = None
            if sampling.logprobs is not None:
                entries = (generation.prompt_logprobs if body.echo else []) + c.logprobs
                logprobs = completion_logprobs(pool.tokenizer, entries, 0 if body.echo else len(prompt))
            choices.append({"index": len(choices), "text": (prompt if body.echo else "") + c.text,
                            "logprobs": logprobs, "finish_reason": c.finish_reason})
    return {**meta, "object": "text_completion", "system_fingerprint": None, "choices": choices,
            "usage": usage(generations)}


async def completion_chunks(pool, generation, prompt, echo, request):
    """The choices of the streamed text_completion events: the echoed prompt, then the text pieces."""
    if echo:
        for choice in generation.choices:
            yield {"index": choice.index, "text": prompt, "logprobs": None, "finish_reason": None}
    async for choice, text, entry in generation.events(request.is_disconnected):
        logprobs = None
        if entry is not None:
            logprobs = completion_logprobs(pool.tokenizer, [entry], len(prompt) + len(choice.text) - len(text))
        yield {"index": choice.index, "text": text, "logprobs": logprobs, "finish_reason": choice.finish_reason}
