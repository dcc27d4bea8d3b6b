"""
Serving a chat model: loading it, request limits, prompt rendering, and a pool of workers that
stream replies without blocking the web server's event loop.

Each reply runs in its own thread on one worker (a model replica: one per GPU, or one or more
sharing the model on CPU). The thread owns the worker until generation has really stopped and
then hands it back, so a client that goes away mid-stream frees its worker after at most one
more forward step, and a worker is never used by two replies at once. The web layer
(scripts/chat_web.py, nanochat/openai_api.py) only validates, formats and streams.
"""

import asyncio
import logging
import threading
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass

from nanochat.common import autocast_context
from nanochat.engine import Engine, ReplyDecoder

logger = logging.getLogger(__name__)

# request limits (the reference's values)
MAX_MESSAGES_PER_REQUEST = 500
MAX_MESSAGE_LENGTH = 8000
MAX_TOTAL_CONVERSATION_LENGTH = 32000
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.0, 2.0
MIN_TOP_K, MAX_TOP_K = 1, 200
MIN_MAX_TOKENS, MAX_MAX_TOKENS = 1, 4096


class RequestError(ValueError):
    """A request the server refuses; `param` names the offending field (OpenAI style)."""

    def __init__(self, message, param=None):
        super().__init__(message)
        self.message, self.param = message, param


# -----------------------------------------------------------------------------
# loading

def load_chat_model(source, device, model_tag=None, step=None):
    """(model, tokenizer, meta) of a trained checkpoint, or FileNotFoundError saying where we
    looked and which stage produces the checkpoint."""
    from nanochat.checkpoint_manager import load_model
    return load_model(source, device, phase="eval", model_tag=model_tag, step=step)


# -----------------------------------------------------------------------------
# validation and prompts

SEED_RANGE = (-2**63, 2**63 - 1)  # torch.Generator.manual_seed takes a signed 64-bit integer


def check_sampling(temperature=None, top_k=None, max_tokens=None, max_tokens_param="max_tokens", seed=None):
    """Raise RequestError when a given sampling setting is outside the server's limits."""
    if seed is not None and not (SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        raise RequestError(f"seed must be between {SEED_RANGE[0]} and {SEED_RANGE[1]}, got {seed}", "seed")
    if temperature is not None and not (MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise RequestError(f"temperature must be between {MIN_TEMPERATURE} and {MAX_TEMPERATURE}, got {temperature}",
                           "temperature")
    if top_k is not None and not (MIN_TOP_K <= top_k <= MAX_TOP_K):
        raise RequestError(f"top_k must be between {MIN_TOP_K} and {MAX_TOP_K}, got {top_k}", "top_k")
    if max_tokens is not None and not (MIN_MAX_TOKENS <= max_tokens <= MAX_MAX_TOKENS):
        raise RequestError(f"{max_tokens_param} must be between {MIN_MAX_TOKENS} and {MAX_MAX_TOKENS}, "
                           f"got {max_tokens}", max_tokens_param)


def check_messages(messages, allowed_roles=("user", "assistant")):
    """`messages` is a list of (role, content) pairs; raise RequestError on the first problem."""
    if not messages:
        raise RequestError("at least one message is required", "messages")
    if len(messages) > MAX_MESSAGES_PER_REQUEST:
        raise RequestError(f"too many messages: {len(messages)} (at most {MAX_MESSAGES_PER_REQUEST})", "messages")
    total = 0
    for i, (role, content) in enumerate(messages):
        if role not in allowed_roles:
            raise RequestError(f"message {i} has role {role!r}; allowed roles are {', '.join(allowed_roles)}",
                               f"messages[{i}].role")
        if not content:
            raise RequestError(f"message {i} has empty content", f"messages[{i}].content")
        if len(content) > MAX_MESSAGE_LENGTH:
            raise RequestError(f"message {i} is too long: {len(content)} characters (at most {MAX_MESSAGE_LENGTH})",
                               f"messages[{i}].content")
        total += len(content)
    if total > MAX_TOTAL_CONVERSATION_LENGTH:
        raise RequestError(f"conversation is too long: {total} characters (at most {MAX_TOTAL_CONVERSATION_LENGTH})",
                           "messages")


def describe_validation_errors(errors):
    """(message, param) for the first of pydantic's error dicts, worded for an API user."""
    if not errors:
        return "invalid request", None
    error = errors[0]
    loc = [part for part in error.get("loc", ()) if part != "body"]
    param = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc)) or None
    kind = error.get("type", "")
    if kind == "json_invalid":
        return f"request body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})", None
    if kind == "missing" and param is None:
        return "request body is required: a JSON object with a 'messages' list", None
    if kind == "missing":
        return f"{param} is required", param
    if param is None:
        return f"request body must be a JSON object ({error.get('msg', 'invalid')})", None
    return f"{param}: {error.get('msg', 'invalid value')}", param


def render_prompt(tokenizer, messages):
    """Tokens that ask the model for the next assistant turn of (role, content) user/assistant pairs."""
    special = tokenizer.encode_special
    tokens = [tokenizer.get_bos_token_id()]
    for role, content in messages:
        if role == "user":
            tokens += [special("<|user_start|>"), *tokenizer.encode(content), special("<|user_end|>")]
        else:
            tokens += [special("<|assistant_start|>"), *tokenizer.encode(content), special("<|assistant_end|>")]
    tokens.append(special("<|assistant_start|>"))
    return tokens


# -----------------------------------------------------------------------------
# workers

@dataclass
class Worker:
    gpu_id: int
    device: object
    engine: Engine
    tokenizer: object
    autocast_ctx: object


class WorkerPool:
    """Workers waiting in an asyncio.Queue; requests beyond the worker count wait their turn."""

    def __init__(self, num_gpus=None, workers=None):
        self.num_gpus = num_gpus
        self.workers = list(workers or [])
        self.queue = None

    def load(self, source, model_tag=None, step=None, device_type=None, dtype="bfloat16"):
        """Load the model: one replica per CUDA device, or workers sharing one model on CPU/MPS."""
        import torch
        if device_type is None:
            from nanochat.common import autodetect_device_type
            device_type = autodetect_device_type()
        if device_type == "cuda":
            count = self.num_gpus or torch.cuda.device_count()
            if count > torch.cuda.device_count():
                raise ValueError(f"--num-gpus={count} but only {torch.cuda.device_count()} CUDA devices are visible")
            for gpu_id in range(count):
                device = torch.device(f"cuda:{gpu_id}")
                model, tokenizer, _ = load_chat_model(source, device, model_tag, step)
                self.workers.append(Worker(gpu_id, device, Engine(model, tokenizer), tokenizer,
                                           autocast_context(device_type, dtype)))
                logger.info(f"Loaded a {source} model on {device}")
            return self
        count = self.num_gpus or 1
        if device_type == "mps" and count > 1:
            raise ValueError("more than one worker needs CUDA; use --num-gpus=1 on MPS")
        device = torch.device(device_type)
        # a forward pass only reads the weights, so CPU workers can share one model
        model, tokenizer, _ = load_chat_model(source, device, model_tag, step)
        engine = Engine(model, tokenizer)
        self.workers = [Worker(i, device, engine, tokenizer, nullcontext()) for i in range(count)]
        logger.info(f"Loaded a {source} model on {device} for {count} worker(s)")
        return self

    def start(self):
        """Put every worker in the queue; call from the event loop that will serve requests."""
        if not self.workers:
            raise RuntimeError("the worker pool has no workers; load a model first")
        self.queue = asyncio.Queue()
        for worker in self.workers:
            self.queue.put_nowait(worker)

    async def initialize(self, source, model_tag=None, step=None, device_type=None, dtype="bfloat16"):
        await asyncio.to_thread(self.load, source, model_tag, step, device_type, dtype)
        self.start()

    @property
    def ready(self):
        return self.queue is not None

    @property
    def tokenizer(self):
        return self.workers[0].tokenizer

    @property
    def max_context(self):
        """Longest sequence (prompt + reply) the model can position."""
        model = self.workers[0].engine.model
        return getattr(model, "rotary_seq_len", model.config.sequence_len)

    def available(self):
        return self.queue.qsize() if self.queue is not None else 0

    async def acquire_worker(self):
        return await self.queue.get()

    def release_worker(self, worker):
        self.queue.put_nowait(worker)

    @asynccontextmanager
    async def reply(self, tokens, *, temperature, top_k, max_tokens, seed):
        """
        Wait for a free worker and prepare a Reply on it: `async with pool.reply(...) as reply:
        async for text in reply.pieces(): ...`. Leaving the block, however it happens, stops the
        generation; the worker returns to the pool once its thread has finished.
        """
        worker = await self.acquire_worker()
        loop = asyncio.get_running_loop()
        reply = Reply(worker, tokens, temperature, top_k, max_tokens, seed,
                      on_finish=lambda: _call_in_loop(loop, self.release_worker, worker))
        try:
            yield reply
        finally:
            reply.cancel()
            if not reply.started:
                self.release_worker(worker)


def _call_in_loop(loop, fn, *args):
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the event loop is gone (server shut down): nothing left to notify
        pass


_END = object()


class Reply:
    """One generation on one worker, computed in a thread and read as an async stream of text."""

    def __init__(self, worker, tokens, temperature, top_k, max_tokens, seed, on_finish=None):
        self.worker, self.tokens = worker, tokens
        self.temperature, self.top_k, self.max_tokens, self.seed = temperature, top_k, max_tokens, seed
        self.on_finish = on_finish
        self.completion_tokens = 0
        self.finish_reason = "length"
        self.text = ""
        self.started = False
        self._stop = threading.Event()

    def cancel(self):
        """Ask the generation thread to stop after its current step."""
        self._stop.set()

    async def pieces(self, is_disconnected=None):
        """Text pieces as they are generated; `is_disconnected` (async, -> bool) is polled between them."""
        if self.started:
            raise RuntimeError("a Reply can be read only once")
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue()
        thread = threading.Thread(target=self._run, args=(loop, queue, self._stop), daemon=True)
        thread.start()
        self.started = True
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                self.text += item
                yield item
                if is_disconnected is not None and await is_disconnected():
                    logger.info("Client disconnected; stopping its generation")
                    break
        finally:
            self.cancel()  # the thread stops after its current step and then frees the worker

    def _run(self, loop, queue, stop):
        put = lambda item: _call_in_loop(loop, queue.put_nowait, item)
        worker = self.worker
        try:
            decoder = ReplyDecoder(worker.tokenizer)
            with worker.autocast_ctx:
                steps = worker.engine.generate(self.tokens, num_samples=1, max_tokens=self.max_tokens,
                                               temperature=self.temperature, top_k=self.top_k, seed=self.seed)
                try:
                    for column, _ in steps:
                        if stop.is_set():
                            break
                        self.completion_tokens += 1
                        text = decoder.add(column[0])
                        if text:
                            put(text)
                        if decoder.stop:
                            self.finish_reason = "stop"
                            break
                finally:
                    steps.close()
            tail = decoder.flush()
            if tail:
                put(tail)
        except Exception:  # reported to the request, the server keeps running
            logger.exception("generation failed")
            put(RuntimeError("generation failed; the server log has the details"))  # not the internal text
        finally:
            put(_END)
            if self.on_finish is not None:
                self.on_finish()
