"""
Serving a chat model: loading it, request limits, prompt rendering, and continuous batching.

Each model replica (one per GPU; on CPU one replica serves everyone) runs a DecodeLoop in its own
thread: one batched forward pass per token for every reply in flight, where a new request joins
the batch between two tokens (its prompt is prefilled once, then its rows decode with the others)
and a finished or abandoned reply leaves it, freeing its row for the next request. Rows are
bounded, and so is the queue of requests waiting for one; beyond that the server answers 429.
The web layer (scripts/chat_web.py, nanochat/openai_api.py) only validates, formats and streams.
"""

import asyncio
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nanochat.common import autocast_context, autodetect_device_type
from nanochat.engine import Engine, ReplyDecoder, RowKVCache, RowState, sample_rows

logger = logging.getLogger(__name__)

# request limits (the reference's values)
MAX_MESSAGES_PER_REQUEST = 500
MAX_MESSAGE_LENGTH = 8000
MAX_TOTAL_CONVERSATION_LENGTH = 32000
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.0, 2.0
MIN_TOP_K, MAX_TOP_K = 1, 200
MIN_MAX_TOKENS, MAX_MAX_TOKENS = 1, 4096
MAX_CHOICES = 8  # n
MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 5


class RequestError(ValueError):
    """A request the server refuses; `param` names the offending field (OpenAI style)."""

    def __init__(self, message, param=None):
        super().__init__(message)
        self.message, self.param = message, param


# -----------------------------------------------------------------------------
# validation and prompts

SEED_RANGE = (-2**63, 2**63 - 1)  # torch.Generator.manual_seed takes a signed 64-bit integer


def check_range(param, value, low, high):
    """Raise RequestError when `value` is given and outside [low, high]."""
    if value is not None and not (low <= value <= high):
        raise RequestError(f"{param} must be between {low} and {high}, got {value}", param)


def check_sampling(temperature=None, top_k=None, max_tokens=None, max_tokens_param="max_tokens", seed=None):
    """Raise RequestError when a given sampling setting is outside the server's limits."""
    check_range("seed", seed, *SEED_RANGE)
    check_range("temperature", temperature, MIN_TEMPERATURE, MAX_TEMPERATURE)
    check_range("top_k", top_k, MIN_TOP_K, MAX_TOP_K)
    check_range(max_tokens_param, max_tokens, MIN_MAX_TOKENS, MAX_MAX_TOKENS)


def check_choices(n=None, stop=None, top_p=None, top_logprobs=None, top_logprobs_param="top_logprobs"):
    """Raise RequestError when n, stop, top_p or the number of top logprobs is outside the limits."""
    check_range("n", n, 1, MAX_CHOICES)
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if len(stops) > MAX_STOP_STRINGS:
            raise RequestError(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}", "stop")
        if not all(stops):
            raise RequestError("stop strings must not be empty", "stop")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise RequestError(f"top_p must be in (0, 1], got {top_p}", "top_p")
    check_range(top_logprobs_param, top_logprobs, 0, MAX_TOP_LOGPROBS)


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
    error = errors[0]  # pydantic reports at least one
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
        role = "user" if role == "user" else "assistant"
        tokens += [special(f"<|{role}_start|>"), *tokenizer.encode(content), special(f"<|{role}_end|>")]
    tokens.append(special("<|assistant_start|>"))
    return tokens


# -----------------------------------------------------------------------------
# continuous batching

@dataclass
class Sampling:
    """How one request is decoded. `logprobs`: None = none, k = the chosen token's and the k most
    likely tokens' log-probabilities at every step; `prompt_logprobs` also scores the prompt."""
    temperature: float
    top_k: int | None
    max_tokens: int
    seed: int
    top_p: float = 1.0
    n: int = 1
    stop: tuple = ()
    logprobs: int | None = None
    prompt_logprobs: bool = False


def request_sampling(settings, temperature=None, top_k=None, max_tokens=None, seed=None, top_p=None, n=None,
                     stop=None, **rest):
    """A request's Sampling, with the server's defaults (`settings`) for what it leaves out."""
    return Sampling(temperature=settings.temperature if temperature is None else temperature,
                    top_k=settings.top_k if top_k is None else top_k,
                    max_tokens=settings.max_tokens if max_tokens is None else max_tokens,
                    seed=random.randint(0, 2**31 - 1) if seed is None else seed,
                    top_p=1.0 if top_p is None else top_p, n=n or 1,
                    stop=() if stop is None else (stop,) if isinstance(stop, str) else tuple(stop), **rest)


class ServerBusy(RuntimeError):
    """Every row is taken and the waiting queue is full: the client should retry later (HTTP 429)."""

    retry_after = 1  # seconds; a row frees up as soon as any reply ends


class StopMatcher:
    """Cuts a text stream at the first of some stop strings, even when one arrives split across
    pieces: text that could be the start of a stop string is held back until it is decided."""

    def __init__(self, stops):
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text):
        """(text that is safe to show now, whether a stop string was met)."""
        if not self.stops:
            return text, False
        buffer = self.held + text
        hits = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return buffer[:min(hits)], True
        keep = max((k for s in self.stops for k in range(1, len(s)) if buffer.endswith(s[:k])), default=0)
        self.held = buffer[len(buffer) - keep:]
        return buffer[:len(buffer) - keep], False

    def flush(self):
        text, self.held = self.held, ""
        return text


@dataclass
class Choice:
    """One of a request's n replies, as the web layer reads it."""
    index: int
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None
    logprobs: list = field(default_factory=list)  # one {"token", "logprob", "top"} per generated token


class Generation:
    """One request in a DecodeLoop: its n choices decode as rows of the running batch. The decode
    thread reports (choice index, new text, logprob entry or None, finished) through an asyncio
    queue; `events()` reads them in the event loop."""

    def __init__(self, tokens, sampling, loop):
        self.tokens, self.sampling = tokens, sampling
        self.choices = [Choice(i) for i in range(sampling.n)]
        self.prompt_logprobs = None  # a list of entries for tokens[1:] when sampling.prompt_logprobs
        self.gpu_id = None
        self.cancelled = threading.Event()  # set when the client is gone: the rows retire at the next token
        self._loop, self._queue = loop, asyncio.Queue()

    def cancel(self):
        self.cancelled.set()

    def report(self, item):  # called by the decode thread
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shut down): nothing left to notify
            pass

    async def events(self, is_disconnected=None):
        """Yield (choice, text, logprob entry) as tokens arrive, until every choice has finished.
        `is_disconnected` (async, -> bool) is polled between events; leaving early cancels the rows."""
        remaining = len(self.choices)
        try:
            while remaining:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                index, text, entry, finished = item
                choice = self.choices[index]
                choice.text += text
                if entry is not None:
                    choice.logprobs.append(entry)
                remaining -= finished
                yield choice, text, entry
                if is_disconnected is not None and await is_disconnected():
                    logger.info("Client disconnected; stopping its generation")
                    break
        finally:
            self.cancel()


class Row:
    """The decode state of one choice: its sampler, tool state, text decoder and stop matcher."""

    def __init__(self, generation, index, tokenizer):
        self.generation, self.choice = generation, generation.choices[index]
        s = generation.sampling
        self.rng = random.Random(s.seed * 8 + index)  # n <= 8: every choice of a seed differs
        self.settings = (s.temperature, s.top_k or 0, s.top_p)
        self.tool = RowState(generation.tokens)
        self.decoder = ReplyDecoder(tokenizer)
        self.stop = StopMatcher(s.stop)
        self.next_input = None  # the token this row feeds into the next step


class DecodeLoop:
    """The continuous-batching decode of one model replica, in its own thread. Each step it admits
    waiting requests while rows are free (prefilling each prompt once at batch 1 and copying its
    cache into one row per choice), runs one batched forward for every live row, samples each row
    with its own settings, and retires rows that are done (end of reply, stop string, max_tokens,
    end of context, client gone) so that waiting requests can take their place."""

    def __init__(self, worker, max_rows=8, max_queue=32):
        self.worker, self.max_rows, self.max_queue = worker, max_rows, max_queue
        self.engine, self.model, self.tokenizer = worker.engine, worker.engine.model, worker.tokenizer
        self.special = self.engine._special_ids()
        self.max_len = max_context(self.model)
        self.waiting = deque()
        self.rows = []  # live rows, packed: rows[i] decodes in row i of the cache
        self.cache = None  # a RowKVCache, allocated at the first prefill (it takes the keys' dtype)
        self.recent = deque(maxlen=1000)  # (time, tokens) of the last steps, for tokens/s
        self.wakeup = threading.Condition()
        threading.Thread(target=self._run, daemon=True, name=f"decode-{worker.gpu_id}").start()

    # --- called from the event loop

    def submit(self, generation):
        with self.wakeup:
            if self.load() + generation.sampling.n > self.max_rows + self.max_queue:
                raise ServerBusy(f"the server is busy ({len(self.rows)} rows decoding, {len(self.waiting)} requests "
                                 "waiting); retry in a moment")
            generation.gpu_id = self.worker.gpu_id
            self.waiting.append(generation)
            self.wakeup.notify()

    def load(self):
        """Rows in use plus waiting requests: where the pool sends a new request."""
        return len(self.rows) + sum(g.sampling.n for g in self.waiting)

    def tokens_per_second(self, window=10.0):
        now = time.monotonic()
        return sum(n for t, n in list(self.recent) if now - t <= window) / window

    # --- the decode thread

    def _run(self):
        while True:
            with self.wakeup:
                while not self.rows and not self.waiting:
                    self.wakeup.wait()
                admitted = []
                while self.waiting and len(self.rows) + sum(g.sampling.n for g in admitted) + \
                        self.waiting[0].sampling.n <= self.max_rows:
                    admitted.append(self.waiting.popleft())
            try:
                with torch.inference_mode(), self.worker.autocast_ctx:
                    for generation in admitted:
                        if not generation.cancelled.is_set():
                            self._prefill(generation)
                    self._retire_finished()
                    if self.rows:
                        self._step()
                        self._retire_finished()
            except Exception:  # reported to the requests in flight; the loop keeps serving
                logger.exception("generation failed")
                for generation in {row.generation for row in self.rows} | set(admitted):
                    generation.report(RuntimeError("generation failed; the server log has the details"))
                    generation.cancel()
                self.rows = []
                self.cache = None

    def _prefill(self, generation):
        tokens, s = generation.tokens, generation.sampling
        device = self.worker.device
        prefill = self.engine._new_cache(1, len(tokens))
        logits = self.model.forward(torch.tensor([tokens], device=device), kv_cache=prefill)[0]
        if s.prompt_logprobs:
            logprobs = F.log_softmax(logits[:-1].float(), dim=-1)
            generation.prompt_logprobs = [self._entry(logprobs[i], tokens[i + 1], s.logprobs or 0)
                                          for i in range(len(tokens) - 1)]
        rows = [Row(generation, i, self.tokenizer) for i in range(s.n)]
        if s.max_tokens == 0:  # scoring only (completions with echo): nothing to decode
            for row in rows:
                self._finish(row, "length", "")
            return
        if self.cache is None:
            config = self.model.config
            self.cache = RowKVCache(self.max_rows, config.n_kv_head, self.max_len, config.n_embd // config.n_head,
                                    config.n_layer, prefill.kv_cache.dtype, device)
        for row in rows:
            self.cache.load_row(len(self.rows), prefill)
            self.rows.append(row)
        self._advance(rows, logits[-1:].expand(s.n, -1))

    def _step(self):
        self.cache.num_active = len(self.rows)
        ids = torch.tensor([[row.next_input] for row in self.rows], device=self.worker.device)
        logits = self.model.forward(ids, kv_cache=self.cache)[:, -1, :]
        self._advance(self.rows, logits)

    def _advance(self, rows, logits):
        """Sample one token for each of `rows` from its logits and hand it to the row's request."""
        temperature, top_k, top_p = (torch.tensor(column, device=logits.device) for column in
                                     zip(*(row.settings for row in rows)))
        top_k = torch.where(top_k > 0, top_k.clamp_max(logits.size(-1)), logits.size(-1))
        uniform = torch.tensor([row.rng.random() for row in rows], device=logits.device)
        sampled = sample_rows(logits, temperature, top_k, top_p, uniform).tolist()
        logprobs = None
        if any(row.generation.sampling.logprobs is not None for row in rows):
            logprobs = F.log_softmax(logits.float(), dim=-1)
        self.recent.append((time.monotonic(), len(rows)))
        for i, (row, token) in enumerate(zip(rows, sampled)):
            if row.tool.forced_tokens:  # the calculator's output is forced, not sampled
                token = row.tool.forced_tokens.popleft()
            row.next_input = token
            row.choice.completion_tokens += 1
            self.engine._advance_tool(row.tool, token, self.special)
            k = row.generation.sampling.logprobs
            entry = None if k is None else self._entry(logprobs[i], token, k)
            text, stopped = row.stop.feed(row.decoder.add(token))
            if stopped or row.decoder.stop:
                self._finish(row, "stop", text, entry)
            elif (row.choice.completion_tokens >= row.generation.sampling.max_tokens
                  or len(row.generation.tokens) + row.choice.completion_tokens >= self.max_len):  # context full
                self._finish(row, "length", text, entry)
            elif text or entry is not None:
                row.generation.report((row.choice.index, text, entry, False))

    def _finish(self, row, reason, text, entry=None):
        if reason == "length":
            text += row.stop.feed(row.decoder.flush())[0] + row.stop.flush()
        row.choice.finish_reason = reason
        row.generation.report((row.choice.index, text, entry, True))

    def _entry(self, logprobs, token, k):
        """The logprob entry of `token` at one position: its log-probability and the k most likely."""
        entry = {"id": token, "logprob": logprobs[token].item(), "top": []}
        if k:
            values, ids = logprobs.topk(k)
            entry["top"] = list(zip(ids.tolist(), values.tolist()))
        return entry

    def _retire_finished(self):
        """Drop rows whose reply has ended or whose client is gone, keeping live rows packed at the front."""
        for i in reversed(range(len(self.rows))):
            row = self.rows[i]
            if row.choice.finish_reason is None and not row.generation.cancelled.is_set():
                continue
            last = len(self.rows) - 1
            if i != last:
                self.cache.move_row(last, i)
                self.rows[i] = self.rows[last]
            self.rows.pop()


def max_context(model):
    """Longest sequence (prompt + reply) a row can hold: what the rotary tables can position, capped
    at the training context plus the longest reply a request may ask for (each row reserves it)."""
    limit = model.config.sequence_len + MAX_MAX_TOKENS
    return min(getattr(model, "rotary_seq_len", limit), limit)


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
    """One DecodeLoop per worker (a GPU, or on CPU one loop that batches everyone); a request goes
    to the least loaded loop."""

    def __init__(self, num_gpus=None, workers=None, max_rows=8, max_queue=32):
        self.num_gpus = num_gpus
        self.workers = list(workers or [])
        self.max_rows, self.max_queue = max_rows, max_queue
        self.loops = []

    def load(self, source, model_tag=None, step=None, device_type=None, dtype="bfloat16"):
        """Load the model: one replica per CUDA device, or workers sharing one model on CPU/MPS;
        FileNotFoundError says where we looked and which stage produces the checkpoint."""
        from nanochat.checkpoint_manager import load_model
        device_type = device_type or autodetect_device_type()
        visible = torch.cuda.device_count() if device_type == "cuda" else 1
        count = self.num_gpus or visible
        if device_type == "cuda" and count > visible:
            raise ValueError(f"--num-gpus={count} but only {visible} CUDA devices are visible")
        if device_type == "mps" and count > 1:
            raise ValueError("more than one worker needs CUDA; use --num-gpus=1 on MPS")
        engine = None
        for i in range(count):
            # one replica per GPU; elsewhere a forward pass only reads the weights, so workers share one model
            if device_type == "cuda" or engine is None:
                device = torch.device(f"cuda:{i}" if device_type == "cuda" else device_type)
                model, tokenizer, _ = load_model(source, device, "eval", model_tag, step)
                engine = Engine(model, tokenizer)
            self.workers.append(Worker(i, device, engine, tokenizer, autocast_context(device_type, dtype)))
        logger.info(f"Loaded a {source} model for {count} worker(s) on {device_type}")
        return self

    def start(self):
        """Start one decode loop per worker."""
        if not self.workers:
            raise RuntimeError("the worker pool has no workers; load a model first")
        if not self.loops:
            self.loops = [DecodeLoop(w, self.max_rows, self.max_queue) for w in self.workers]

    async def initialize(self, source, model_tag=None, step=None, device_type=None, dtype="bfloat16"):
        """load() off the event loop, then start(): what the server's startup runs."""
        await asyncio.to_thread(self.load, source, model_tag, step, device_type, dtype)
        self.start()

    @property
    def ready(self):
        return bool(self.loops)

    @property
    def tokenizer(self):
        return self.workers[0].tokenizer

    @property
    def max_context(self):
        return max_context(self.workers[0].engine.model)

    def submit(self, tokens, sampling):
        """Queue a request on the least loaded loop; ServerBusy when its queue is full."""
        if sampling.n > self.max_rows:
            raise RequestError(f"n must be at most {self.max_rows} on this server (its rows per batch)", "n")
        generation = Generation(tokens, sampling, asyncio.get_running_loop())
        min(self.loops, key=DecodeLoop.load).submit(generation)
        return generation

    def stats(self):
        loops = self.loops
        return {
            "rows_in_use": sum(len(loop.rows) for loop in loops),
            "max_rows": self.max_rows * len(loops),
            "queue_length": sum(len(loop.waiting) for loop in loops),
            "max_queue": self.max_queue * len(loops),
            "tokens_per_second": round(sum(loop.tokens_per_second() for loop in loops), 1),
            "idle_workers": sum(loop.load() == 0 for loop in loops),
        }
