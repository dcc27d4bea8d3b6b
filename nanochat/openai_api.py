"""
OpenAI-compatible routes of the chat server: POST /v1/chat/completions (streaming and not) and
GET /v1/models, so the official `openai` client (and tools built on it) can talk to nanochat:

    client = OpenAI(base_url="http://localhost:8000/v1", api_key="unused")
    client.chat.completions.create(model="nanochat", messages=[...], stream=True)

Beyond OpenAI's parameters, `top_k` is accepted (pass it via `extra_body`). System (and
developer) messages at the start are folded into the first user message, as the tokenizer's
conversation rendering does. Errors use OpenAI's shape: {"error": {message, type, param, code}}.
"""

import json
import random
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, StrictBool

from nanochat.serving import RequestError, check_messages, check_sampling, render_prompt

router = APIRouter(prefix="/v1")
CREATED = int(time.time())
SYSTEM_ROLES = ("system", "developer")


def openai_error(status, message, param=None, code=None):
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


def model_id(settings):
    tag = f"-{settings.model_tag}" if getattr(settings, "model_tag", None) else ""
    return f"nanochat-{settings.source}{tag}"


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown OpenAI parameters are ignored
    model: str | None = None
    messages: list[Message]
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


def message_text(index, message):
    """The text of a message whose content is a string or a list of text parts."""
    if message.content is None:
        raise RequestError(f"message {index} has no content", f"messages[{index}].content")
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise RequestError(f"message {index}: only text content parts are supported, got {part.type!r}",
                               f"messages[{index}].content")
        texts.append(part.text)
    return "".join(texts)


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
    if body.n not in (None, 1):
        raise RequestError("only n=1 is supported", "n")
    if body.top_p not in (None, 1.0):
        raise RequestError("top_p is not supported (use top_k, an extension of this server)", "top_p")
    if body.stop:
        raise RequestError("stop sequences are not supported", "stop")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) not in (None, 0.0):
            raise RequestError(f"{name} is not supported", name)


def prepare(body, request):
    """Validate the request and return (prompt tokens, sampling settings)."""
    check_unsupported(body)
    messages = [(m.role, message_text(i, m)) for i, m in enumerate(body.messages)]
    check_messages(messages, allowed_roles=("system", "developer", "user", "assistant"))
    messages = fold_system_messages(messages)
    max_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    check_sampling(body.temperature, body.top_k, max_tokens, max_tokens_param=max_param, seed=body.seed)
    pool, settings = request.app.state.worker_pool, request.app.state.settings
    tokens = render_prompt(pool.tokenizer, messages)
    if len(tokens) >= pool.max_context:
        raise RequestError(f"conversation is {len(tokens)} tokens; this model handles fewer than {pool.max_context}",
                           "messages")
    sampling = dict(
        temperature=settings.temperature if body.temperature is None else body.temperature,
        top_k=settings.top_k if body.top_k is None else body.top_k,
        max_tokens=settings.max_tokens if max_tokens is None else max_tokens,
        seed=random.randint(0, 2**31 - 1) if body.seed is None else body.seed,
    )
    return tokens, sampling


def usage(prompt_tokens, completion_tokens):
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@router.get("/models")
async def list_models(request: Request):
    return {"object": "list", "data": [{"id": model_id(request.app.state.settings), "object": "model",
                                        "created": CREATED, "owned_by": "nanochat"}]}


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    tokens, sampling = prepare(body, request)
    pool = request.app.state.worker_pool
    meta = dict(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model_id(request.app.state.settings))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(stream_completion(pool, tokens, sampling, meta, include_usage, request),
                                 media_type="text/event-stream")
    async with pool.reply(tokens, **sampling) as reply:
        try:
            async for _ in reply.pieces(request.is_disconnected):
                pass
        except RuntimeError as e:
            return openai_error(500, str(e))
    return {**meta, "object": "chat.completion", "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                         "logprobs": None, "finish_reason": reply.finish_reason}],
            "usage": usage(len(tokens), reply.completion_tokens)}


async def stream_completion(pool, tokens, sampling, meta, include_usage, request):
    """chat.completion.chunk events, then `data: [DONE]`."""

    def event(choices, **extra):
        payload = {**meta, "object": "chat.completion.chunk", "system_fingerprint": None, "choices": choices, **extra}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def delta(content, finish_reason=None):
        return event([{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish_reason}])

    async with pool.reply(tokens, **sampling) as reply:
        yield delta({"role": "assistant", "content": ""})
        try:
            async for text in reply.pieces(request.is_disconnected):
                yield delta({"content": text})
        except RuntimeError as e:
            error = {"message": str(e), "type": "server_error", "param": None, "code": None}
            yield f"data: {json.dumps({'error': error})}\n\n"
            return
        yield delta({}, finish_reason=reply.finish_reason)
        if include_usage:
            yield event([], usage=usage(len(tokens), reply.completion_tokens))
    yield "data: [DONE]\n\n"
