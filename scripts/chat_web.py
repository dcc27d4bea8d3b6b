"""
Chat web server: the UI at /, a streaming chat endpoint for it, and an OpenAI-compatible API.

    python -m scripts.chat_web                      # one worker per GPU, sft checkpoint
    python -m scripts.chat_web --device-type=cpu -n 2 -i mid

Endpoints:
  GET  /                       the chat UI (nanochat/ui.html)
  GET  /logo.svg               its logo
  POST /chat/completions       streaming (SSE) chat used by the UI
  GET  /health, GET /stats     liveness, rows in use, queue length, tokens/s
  POST /v1/chat/completions    OpenAI-compatible (streaming and not); POST /v1/completions; GET /v1/models
Replies are decoded together, continuously batched (nanochat/serving.py): up to --max-batch-rows
per worker, then up to --max-queue requests wait, and beyond that the server answers 429.
"""

import argparse
import asyncio
import hmac
import logging
import math
import os
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from nanochat.serving import (RequestError, ServerBusy, WorkerPool, check_messages, check_sampling,
                              describe_validation_errors, render_prompt, request_sampling)
from nanochat.openai_api import check_prompt_length, openai_error, router as openai_router, sse

logger = logging.getLogger("nanochat.chat_web")

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "nanochat"
MAX_BODY_BYTES = 1 << 20  # a maximal conversation (32000 characters) is far below this

DEFAULTS = SimpleNamespace(source="sft", model_tag=None, step=None, temperature=0.8, top_k=50, max_tokens=512,
                           device_type=None, dtype="bfloat16")


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    messages: list[ChatMessage]
    temperature: float | None = None
    max_tokens: int | None = None
    top_k: int | None = None
    seed: int | None = None


def validate_chat_request(request):
    """Raise RequestError (-> HTTP 400) when the UI request is outside the server's limits."""
    check_messages([(m.role, m.content) for m in request.messages])
    check_sampling(request.temperature, request.top_k, request.max_tokens, seed=request.seed)


async def generate_stream(generation, request):
    """SSE events of one reply: {"token", "gpu"} per piece of text, then {"done": true}."""
    try:
        async for _, text, _ in generation.events(request.is_disconnected):
            if text:
                yield sse({"token": text, "gpu": generation.gpu_id})
    except RuntimeError as e:  # generation failed after the response started: say so in-stream
        yield sse({"error": str(e)})
    reply = generation.choices[0]
    logger.info(f"Reply ({reply.completion_tokens} tokens, {reply.finish_reason}): {reply.text!r}")
    yield sse({"done": True})


def refusal(path, status, message, param=None, code=None):
    """A refusal's JSON reply: {"detail": ...} on the UI API, OpenAI's shape under /v1."""
    if path.startswith("/v1/"):
        return openai_error(status, message, param=param, code=code)
    return JSONResponse({"detail": message}, status_code=status)


def http_refusal(path, exc):
    code = getattr(exc, "code", None)  # BodyLimits' refusals have one
    response = refusal(path, exc.status_code, str(exc.detail), code=code)
    if code:
        response.headers["connection"] = "close"  # the rest of the body is never read
    return response


class BodyTooLarge(StarletteHTTPException):
    code = "request_too_large"

    def __init__(self, size):
        super().__init__(413, f"request body is too large ({size} bytes or more, at most {MAX_BODY_BYTES})")


class BodyTooSlow(StarletteHTTPException):
    code = "request_timeout"

    def __init__(self, seconds):
        super().__init__(408, f"the request body did not arrive within {seconds:g} seconds")


class BodyLimits:
    """Refuse bodies larger than MAX_BODY_BYTES (at once when Content-Length says so, and otherwise,
    for a chunked body, as soon as the bytes received pass the limit, without reading the rest) and
    bodies that take longer than `body_timeout` seconds to arrive (a slow client holds a connection)."""

    def __init__(self, app, body_timeout=30.0):
        self.app, self.body_timeout = app, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            return await http_refusal(scope["path"], BodyTooLarge(int(length)))(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        received, body_done = 0, False

        async def guarded_receive():
            # FastAPI re-raises HTTPExceptions met while reading the body; the app's handler answers
            nonlocal received, body_done
            if body_done:  # later receives wait for a disconnect, which may take as long as the reply
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise BodyTooSlow(self.body_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise BodyTooLarge(received)
                body_done = not message.get("more_body", False)
            return message

        return await self.app(scope, guarded_receive, send)


class ApiKeyGuard:
    """When the server has an API key, the chat routes (/v1/*, /chat/completions) need
    `Authorization: Bearer <key>`; the page, its logo and /health stay open."""

    def __init__(self, app, api_key):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        guarded = scope["type"] == "http" and (path.startswith("/v1/") or path == "/chat/completions")
        if guarded and scope["method"] != "OPTIONS":  # CORS preflights carry no credentials
            given = dict(scope.get("headers", [])).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                message = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
                response = refusal(path, 401, message, code="invalid_api_key")
                response.headers["www-authenticate"] = "Bearer"
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(worker_pool=None, settings=None):
    """The FastAPI app. Pass a ready WorkerPool (tests do); otherwise the lifespan loads the model
    that `settings` (see DEFAULTS) names."""
    settings = settings or DEFAULTS

    @asynccontextmanager
    async def lifespan(app):
        pool = app.state.worker_pool
        if pool.workers:  # loaded already (main, tests): only the decode loops are left to start
            pool.start()
        else:
            await pool.initialize(settings.source, settings.model_tag, settings.step, settings.device_type,
                                  settings.dtype)
        logger.info(f"Serving with {len(pool.workers)} worker(s)")
        yield

    app = FastAPI(lifespan=lifespan, title="nanochat")
    app.state.worker_pool = worker_pool if worker_pool is not None else WorkerPool(getattr(settings, "num_gpus", None))
    app.state.settings = settings
    api_key = getattr(settings, "api_key", None)
    if api_key:
        app.add_middleware(ApiKeyGuard, api_key=api_key)  # inside CORS, so its 401s carry CORS headers
    # Any page may call the API, but never with the visitor's cookies or HTTP credentials; the UI is
    # served from this origin and needs no CORS at all.
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=False,
                       allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(BodyLimits, body_timeout=getattr(settings, "body_timeout", 30.0))
    app.include_router(openai_router)
    _add_error_handlers(app)

    @app.get("/")
    async def root():
        return HTMLResponse(PACKAGE_DIR.joinpath("ui.html").read_text(encoding="utf-8"))

    @app.get("/logo.svg")
    async def logo():
        return Response(PACKAGE_DIR.joinpath("logo.svg").read_text(encoding="utf-8"), media_type="image/svg+xml")

    @app.post("/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        validate_chat_request(body)
        messages = [(m.role, m.content) for m in body.messages]
        pool = request.app.state.worker_pool
        for m in body.messages:
            logger.info(f"[{m.role}] {m.content!r}")  # escaped: a newline in it cannot start a log line
        tokens = render_prompt(pool.tokenizer, messages)
        check_prompt_length(tokens, pool, what="conversation")
        sampling = request_sampling(settings, body.temperature, body.top_k, body.max_tokens, body.seed)
        generation = pool.submit(tokens, sampling)  # ServerBusy -> 429 before the stream starts
        return StreamingResponse(generate_stream(generation, request), media_type="text/event-stream")

    @app.get("/health")
    async def health(request: Request):
        pool = request.app.state.worker_pool
        return {"status": "ok", "ready": pool.ready, "num_gpus": len(pool.workers), **pool.stats()}

    @app.get("/stats")
    async def stats(request: Request):
        pool = request.app.state.worker_pool
        return {"total_workers": len(pool.workers), **pool.stats(),
                "workers": [{"gpu_id": w.gpu_id, "device": str(w.device)} for w in pool.workers]}

    return app


def _add_error_handlers(app):
    """Every refusal is a 4xx JSON body (see `refusal`); an internal error is a 500 one."""

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request, exc):
        message, param = describe_validation_errors(exc.errors())
        return refusal(request.url.path, 400, message, param)

    @app.exception_handler(RequestError)
    async def on_request_error(request, exc):
        return refusal(request.url.path, 400, exc.message, exc.param)

    @app.exception_handler(ServerBusy)
    async def on_busy(request, exc):
        response = refusal(request.url.path, 429, str(exc), code="rate_limit_exceeded")
        response.headers["retry-after"] = str(exc.retry_after)
        return response

    @app.exception_handler(Exception)
    async def on_internal_error(request, exc):  # the traceback goes to the log (uvicorn), not to the client
        return refusal(request.url.path, 500, "internal server error; the server log has the details")

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request, exc):
        return http_refusal(request.url.path, exc)


class SlowClientH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for headers: a connection that has not sent a
    complete request head `header_timeout` seconds after it opened (or after its last response)
    is answered 408 if it sent part of one, and closed either way, so slow clients cannot pile up."""

    header_timeout = 10.0

    def connection_made(self, transport):
        super().connection_made(transport)
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def on_response_complete(self):
        super().on_response_complete()
        self._header_deadline.cancel()
        if not self.transport.is_closing():
            self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def connection_lost(self, exc):
        self._header_deadline.cancel()
        super().connection_lost(exc)

    def _headers_too_slow(self):
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # closed already, or a request is being served: its body has its own deadline
        if self.conn.trailing_data[0]:  # part of a request head arrived: say why we hang up
            message = f"the request headers did not arrive within {self.header_timeout:g} seconds".encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"connection: close\r\ncontent-length: " + str(len(message)).encode() +
                                 b"\r\n\r\n" + message)
        self.transport.close()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Chat web server (UI + OpenAI-compatible API)")
    parser.add_argument("-n", "--num-gpus", type=int, default=1, help="workers: GPUs to use (or CPU workers)")
    parser.add_argument("-i", "--source", type=str, default="sft", help="checkpoint stage: base|mid|sft|rl")
    parser.add_argument("-t", "--temperature", type=float, default=0.8, help="default temperature")
    parser.add_argument("-k", "--top-k", type=int, default=50, help="default top-k")
    parser.add_argument("-m", "--max-tokens", type=int, default=512, help="default max tokens per reply")
    parser.add_argument("-g", "--model-tag", type=str, default=None, help="model tag to load")
    parser.add_argument("-s", "--step", type=int, default=None, help="checkpoint step to load")
    parser.add_argument("-p", "--port", type=int, default=8000, help="port")
    parser.add_argument("-d", "--dtype", type=str, default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--device-type", type=str, default="", choices=["", "cuda", "cpu", "mps"],
                        help="empty = autodetect")
    parser.add_argument("--max-batch-rows", type=int, default=8,
                        help="replies decoded together per worker (1 = one request at a time)")
    parser.add_argument("--max-queue", type=int, default=32,
                        help="requests that may wait for a row per worker; beyond that the server answers 429")
    parser.add_argument("--header-timeout", type=float, default=10.0,
                        help="seconds a client has to send a request's headers (then 408 and the connection closes)")
    parser.add_argument("--body-timeout", type=float, default=30.0,
                        help="seconds a client has to send a request's body (then 408)")
    parser.add_argument("--host", type=str, default="0.0.0.0", help="host to bind (127.0.0.1: this machine only)")
    parser.add_argument("--api-key", type=str, default=os.environ.get("NANOCHAT_API_KEY") or None,
                        help="require 'Authorization: Bearer <key>' on /v1/* and /chat/completions "
                             "(default: $NANOCHAT_API_KEY; unset = open)")
    args = parser.parse_args(argv)
    if args.num_gpus < 1:
        parser.error("--num-gpus must be >= 1")
    if args.max_batch_rows < 1 or args.max_queue < 0:
        parser.error("--max-batch-rows must be >= 1 and --max-queue >= 0")
    if not (args.header_timeout > 0 and args.body_timeout > 0):
        parser.error("--header-timeout and --body-timeout must be > 0 seconds")
    # The server's own defaults may be anything the engine can sample with; the per-request limits
    # (check_sampling) apply to the fields a request sends.
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        parser.error(f"--temperature must be a number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    if args.max_tokens < 1:
        parser.error(f"--max-tokens must be >= 1, got {args.max_tokens}")
    return args


def settings_from_args(args, device_type):
    """What create_app reads (see DEFAULTS): the command line, with the device type resolved."""
    return SimpleNamespace(**dict(vars(args), device_type=device_type))


def main(argv=None):
    import sys

    import uvicorn

    from nanochat.common import autodetect_device_type, compute_init
    args = parse_args(argv)
    device_type = args.device_type or autodetect_device_type()
    compute_init(device_type)
    pool = WorkerPool(args.num_gpus, max_rows=args.max_batch_rows, max_queue=args.max_queue)
    try:
        pool.load(args.source, args.model_tag, args.step, device_type, args.dtype)
    except (FileNotFoundError, ValueError) as e:
        print(f"chat_web: {e}", file=sys.stderr)
        sys.exit(1)
    app = create_app(worker_pool=pool, settings=settings_from_args(args, device_type))
    print(f"Starting the nanochat server at http://{args.host}:{args.port}")
    SlowClientH11.header_timeout = args.header_timeout
    uvicorn.run(app, host=args.host, port=args.port, http=SlowClientH11)


if __name__ == "__main__":
    main()
