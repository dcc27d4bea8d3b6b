"""
KV-cached, batched inference with a calculator tool.

Everything downstream samples through here (training-time samples, eval, RL rollouts, CLI, web).
The prompt is prefilled once at batch 1, its cache is replicated for N samples, and each row
streams tokens; between <|python_start|> and <|python_end|> a row collects a calculator
expression whose result is injected back as forced <|output_start|>...<|output_end|> tokens.
The engine works on token ids; the tokenizer is only used for special ids and the tool.
"""

from collections import deque
from functools import partial

import torch
import torch.nn.functional as F

from nanochat.calculator import eval_with_timeout, use_calculator  # noqa: F401  (re-exported)


def _round_up(n, multiple):
    return (n + multiple - 1) // multiple * multiple


class KVCache:
    """
    Keys and values of every layer in one tensor laid out (layers, 2, batch, heads, time, head_dim),
    allocated on first insert (taking the dtype/device of the keys) and grown along time on demand.
    """

    attn_mask = None  # every row has the same length: attention needs no mask

    def __init__(self, batch_size, num_heads, seq_len, head_dim, num_layers):
        self.kv_shape = (num_layers, 2, batch_size, num_heads, seq_len, head_dim)
        self.kv_cache = None
        self.pos = 0

    def reset(self):
        self.pos = 0

    def get_pos(self):
        return self.pos

    def prefill(self, other):
        """Copy another (filled) cache into this empty one; other's batch may be 1 and broadcast."""
        assert self.kv_cache is None, "prefill needs an empty cache"
        assert other.kv_cache is not None, "cannot prefill from an empty cache"
        mine, theirs = self.kv_shape, other.kv_shape
        same = (0, 1, 3, 5)  # layers, k/v, heads, head_dim
        assert [mine[i] for i in same] == [theirs[i] for i in same], f"cache shapes differ: {mine} vs {theirs}"
        assert theirs[2] in (1, mine[2]), f"batch {theirs[2]} cannot fill batch {mine[2]}"
        assert mine[4] >= theirs[4], f"capacity {mine[4]} is smaller than the source's {theirs[4]}"
        self.kv_cache = torch.empty(self.kv_shape, dtype=other.kv_cache.dtype, device=other.kv_cache.device)
        self.kv_cache[:, :, :, :, :other.pos, :] = other.kv_cache[:, :, :, :, :other.pos, :]
        self.pos = other.pos

    def insert_kv(self, layer_idx, k, v):
        """Append k, v of shape (B, H, T_add, D) for one layer; return that layer's keys/values so far."""
        if self.kv_cache is None:
            self.kv_cache = torch.empty(self.kv_shape, dtype=k.dtype, device=k.device)
        t0, t1 = self.pos, self.pos + k.size(2)
        if t1 > self.kv_cache.size(4):
            # grow with headroom, rounded to a multiple of 1024, keeping what is already cached
            extra = list(self.kv_cache.shape)
            extra[4] = _round_up(t1 + 1024, 1024) - extra[4]
            self.kv_cache = torch.cat([self.kv_cache, self.kv_cache.new_empty(extra)], dim=4)
            self.kv_shape = tuple(self.kv_cache.shape)
        self.kv_cache[layer_idx, 0, :, :, t0:t1] = k
        self.kv_cache[layer_idx, 1, :, :, t0:t1] = v
        if layer_idx == self.kv_cache.size(0) - 1:
            self.pos = t1  # every layer has written this chunk
        return self.kv_cache[layer_idx, 0, :, :, :t1], self.kv_cache[layer_idx, 1, :, :, :t1]


class RowKVCache:
    """
    The cache of a continuously batched decode: (layers, 2, rows, heads, max_len, head_dim),
    allocated once, where every row holds its own sequence at its own length. A forward pass runs
    one new token for each of the first `num_active` rows (the serving loop keeps its live rows
    packed at the front, so a step needs no gather): the token goes in at its row's length, its
    rotary position is that length, and `attn_mask` lets it see its own row's filled slots only.
    """

    def __init__(self, rows, num_heads, max_len, head_dim, num_layers, dtype, device):
        self.kv = torch.zeros((num_layers, 2, rows, num_heads, max_len, head_dim), dtype=dtype, device=device)
        self.lengths = [0] * rows  # on the host: the serving loop reads them every step
        self.num_active = 0
        self.attn_mask = None

    def get_pos(self):
        """Where each active row's new token goes; also prepares the mask for this forward pass."""
        n = self.num_active
        device = self.kv.device
        self.positions = torch.tensor(self.lengths[:n], dtype=torch.long, device=device)
        # keys only up to the longest active row: short batches do not pay for max_len
        self.span = max(self.lengths[:n]) + 1
        visible = torch.arange(self.span, device=device)[None, :] <= self.positions[:, None]
        self.attn_mask = visible[:, None, None, :]  # (rows, heads, queries, keys), broadcast
        return self.positions

    def insert_kv(self, layer_idx, k, v):
        """k, v: (num_active, H, 1, D). Write each row's token at its length; return the keys/values to attend."""
        n = self.num_active
        rows = torch.arange(n, device=k.device)
        self.kv[layer_idx, 0][rows, :, self.positions] = k[:, :, 0]
        self.kv[layer_idx, 1][rows, :, self.positions] = v[:, :, 0]
        if layer_idx == self.kv.size(0) - 1:
            for row in range(n):
                self.lengths[row] += 1
            # the mask stays: attention reads it after this call, and get_pos rebuilds it each step
        return self.kv[layer_idx, 0, :n, :, :self.span], self.kv[layer_idx, 1, :n, :, :self.span]

    def load_row(self, row, prefilled):
        """Copy a batch-1 KVCache (a prompt's prefill) into `row`."""
        length = prefilled.get_pos()
        self.kv[:, :, row, :, :length] = prefilled.kv_cache[:, :, 0, :, :length]
        self.lengths[row] = length

    def move_row(self, source, target):
        """Copy row `source` over row `target` (packing live rows after one has left)."""
        length = self.lengths[source]
        self.kv[:, :, target, :, :length] = self.kv[:, :, source, :, :length]
        self.lengths[target] = length


class DecodeCache:
    """
    The cache of Engine.generate's decode steps, with static shapes so that torch.compile can
    capture a step: per layer one key and one value tensor (batch, heads, capacity, head_dim),
    allocated once, and the position as a 1-element tensor on the device. A step writes its token
    at that position and attends to the whole capacity through a mask, so neither the shapes nor
    the Python values seen by the compiled step change from token to token.
    """

    def __init__(self, keys, values, position):
        self.keys, self.values, self.position = keys, values, position
        capacity = keys[0].size(2)
        self.attn_mask = (torch.arange(capacity, device=position.device) <= position).view(1, 1, 1, capacity)

    @classmethod
    def from_prefill(cls, prefilled, batch_size, capacity):
        """Keys/values of a filled batch-1 KVCache, broadcast to `batch_size` rows of `capacity` slots."""
        length = prefilled.get_pos()
        assert capacity > length, f"capacity {capacity} leaves no room after the {length} prompt tokens"
        kv = prefilled.kv_cache[:, :, :, :, :length]
        keys = [_with_capacity(layer[0], batch_size, capacity) for layer in kv]
        values = [_with_capacity(layer[1], batch_size, capacity) for layer in kv]
        return cls(keys, values, torch.tensor([length], device=kv.device))

    @property
    def capacity(self):
        return self.keys[0].size(2)

    def grown(self, capacity):
        """A copy with more slots (a decode without max_tokens that runs past its first capacity)."""
        batch_size = self.keys[0].size(0)
        return DecodeCache([_with_capacity(k, batch_size, capacity) for k in self.keys],
                           [_with_capacity(v, batch_size, capacity) for v in self.values], self.position)

    def get_pos(self):
        return self.position.expand(self.keys[0].size(0))  # every row is at the same position

    def insert_kv(self, layer_idx, k, v):
        """k, v: (B, H, 1, D) written at the position; returns the layer's whole keys/values."""
        self.keys[layer_idx].index_copy_(2, self.position, k)
        self.values[layer_idx].index_copy_(2, self.position, v)
        return self.keys[layer_idx], self.values[layer_idx]


def _with_capacity(t, batch_size, capacity):
    """t (1 or batch_size, H, T, D) copied into the first T of `capacity` zeroed slots of batch_size rows."""
    slots = torch.zeros(batch_size, t.size(1), capacity, t.size(3), dtype=t.dtype, device=t.device)
    slots[:, :, :t.size(2)] = t
    if slots.is_cuda:
        # CUDA graphs skip a step that writes into an ordinary input; marked static, the cache is
        # written in place by the replayed graph (a new cache is recorded again, without recompiling)
        torch._dynamo.mark_static_address(slots)
    return slots


GREEDY_BELOW = 1e-5  # temperatures under this are greedy: dividing by them overflows


def _inverse_cdf(probs, uniform):
    """Per row of probs (n, V), the index where the cumulative mass first reaches uniform (n, 1) of
    the row's total -> (n, 1). Each row needs only its own number, so no generator is drawn from."""
    cumulative = probs.cumsum(dim=-1)
    return (cumulative < uniform * cumulative[:, -1:]).sum(dim=-1, keepdim=True).clamp_max(probs.size(-1) - 1)


def draw_tokens(logits, uniform, temperature, top_k):
    """
    One token per row of `logits` (B, V) -> (B, 1), on the device: greedy below GREEDY_BELOW, else
    drawn from softmax(logits / temperature) (over the top_k best when top_k) by inverse CDF with
    the row's own uniform number (B, 1), so the draw needs no generator inside a compiled step.
    """
    if temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1, keepdim=True)
    indices = None
    if top_k is not None and 0 < top_k < logits.size(-1):
        logits, indices = logits.topk(top_k, dim=-1)
    choice = _inverse_cdf(F.softmax(logits.float() / temperature, dim=-1), uniform)
    return choice if indices is None else indices.gather(1, choice)


def decode_step(model, ids, position, keys, values, uniform, temperature, top_k):
    """One token per row (ids (B, 1)) at `position` -> the next token of every row (B, 1)."""
    logits = model.forward(ids, kv_cache=DecodeCache(keys, values, position))[:, -1, :]
    return draw_tokens(logits, uniform, temperature, top_k)


def sample_rows(logits, temperature, top_k, top_p, uniform):
    """
    One token per row of `logits` (n, V), each row with its own settings: temperature, top_p and
    uniform (n,) floats, top_k (n,) ints (V = no limit). A row draws with its own uniform number
    (inverse CDF), so its choice depends only on its own generator, whatever else is in the batch.
    """
    greedy = logits.argmax(dim=-1)
    k = int(top_k.max())
    values, indices = logits.topk(k, dim=-1) if k < logits.size(-1) else logits.sort(dim=-1, descending=True)
    values = values / temperature.clamp_min(GREEDY_BELOW)[:, None]
    values = values.masked_fill(torch.arange(k, device=logits.device)[None, :] >= top_k[:, None], float("-inf"))
    probs = F.softmax(values, dim=-1)
    # top_p: drop a token once the tokens ranked above it already hold top_p of the mass
    cumulative = probs.cumsum(dim=-1)
    probs = probs.masked_fill(cumulative - probs >= top_p[:, None], 0.0)
    sampled = indices.gather(1, _inverse_cdf(probs, uniform[:, None]))[:, 0]
    return torch.where(temperature < GREEDY_BELOW, greedy, sampled)


@torch.inference_mode()
def sample_next_token(logits, rng, temperature=1.0, top_k=None):
    """One token per row of `logits` (B, V) -> (B, 1). temperature 0 is greedy; top_k None/0 = off."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature < GREEDY_BELOW:
        return torch.argmax(logits, dim=-1, keepdim=True)
    indices = None
    if top_k is not None and top_k > 0:
        logits, indices = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1)
    choice = torch.multinomial(F.softmax(logits / temperature, dim=-1), num_samples=1, generator=rng)
    return choice if indices is None else indices.gather(1, choice)


class RowState:
    """Per-sample bookkeeping while generating."""

    def __init__(self, current_tokens=None):
        self.current_tokens = list(current_tokens or [])  # prompt + everything generated
        self.forced_tokens = deque()  # tool output waiting to be injected
        self.in_python_block = False
        self.python_expr_tokens = []
        self.completed = False


def _capacity(length):
    """Decode caches come in multiples of 256 slots, so a compiled step is reused across prompts."""
    return _round_up(length, 256)


class Engine:
    """
    `compile`: capture the decode step with torch.compile (None: on CUDA only). On a 2-core CPU it
    doubles d4's decode speed once warm, but the first call of each batch size and capacity waits
    ~15 s for the compiler, more than a short chat saves; on CUDA the step also runs as a CUDA graph.
    """

    def __init__(self, model, tokenizer, compile=None):
        self.model = model
        self.tokenizer = tokenizer
        on_cuda = model.get_device().type == "cuda"
        self._step = partial(decode_step, model)
        compile = on_cuda if compile is None else compile
        if compile:
            # CUDA graphs replay the whole step in one launch; on CPU a C++ wrapper calls the kernels
            options = {"triton.cudagraphs": True} if on_cuda else {"cpp_wrapper": True}
            self._step = torch.compile(self._step, dynamic=False, fullgraph=True, options=options)

    def _special_ids(self):
        get = self.tokenizer.encode_special
        return dict(python_start=get("<|python_start|>"), python_end=get("<|python_end|>"),
                    output_start=get("<|output_start|>"), output_end=get("<|output_end|>"),
                    assistant_end=get("<|assistant_end|>"), bos=self.tokenizer.get_bos_token_id())

    def _new_cache(self, batch_size, seq_len):
        config = self.model.config
        return KVCache(batch_size=batch_size, num_heads=config.n_kv_head, seq_len=seq_len,
                       head_dim=config.n_embd // config.n_head, num_layers=config.n_layer)

    @torch.inference_mode()
    def generate(self, tokens, num_samples=1, max_tokens=None, temperature=1.0, top_k=None, seed=42):
        """
        Yield (token_column, token_masks) once per step: one token per sample, mask 1 where it was
        sampled and 0 where the calculator forced it. Stops after `max_tokens` steps or when
        every row has emitted <|assistant_end|> or BOS.
        """
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, int) for t in tokens):
            raise ValueError("tokens must be a non-empty list of ints")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        device = self.model.get_device()
        rng = torch.Generator(device=device).manual_seed(seed)
        special = self._special_ids()
        terminal = (special["assistant_end"], special["bos"])

        # 1) prefill the prompt once, at batch 1
        prefill_cache = self._new_cache(1, len(tokens))
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        logits = self.model.forward(ids, kv_cache=prefill_cache)[:, -1, :]
        # 2) every sample draws its own first token from the prefill logits
        def uniform():  # each row's random number for its next draw (greedy needs none)
            return None if temperature < GREEDY_BELOW else torch.rand((num_samples, 1), generator=rng, device=device)
        next_ids = draw_tokens(logits.expand(num_samples, -1), uniform(), temperature, top_k)

        # 3) replicate the prompt's cache for the samples, with room for the reply
        length = len(tokens)
        reply_room = max_tokens if max_tokens else max(self.model.config.sequence_len - length, 1)
        cache = DecodeCache.from_prefill(prefill_cache, num_samples, _capacity(length + reply_room))
        del prefill_cache

        rows = [RowState(tokens) for _ in range(num_samples)]
        # positions past the rotary tables cannot be encoded; stop there at the latest
        position_limit = getattr(self.model, "rotary_seq_len", None)
        num_generated = 0
        while True:
            if ((max_tokens is not None and num_generated >= max_tokens) or all(row.completed for row in rows)
                    or (position_limit is not None and length >= position_limit)):
                break
            if num_generated > 0:
                if length >= cache.capacity:
                    cache = cache.grown(_capacity(length + 1024))
                next_ids = self._step(next_ids, cache.position, cache.keys, cache.values, uniform(), temperature, top_k)
                cache.position += 1
                length += 1
            sampled = next_ids[:, 0].tolist()
            column, masks = [], []
            for row, sampled_token in zip(rows, sampled):
                forced = bool(row.forced_tokens)
                token = row.forced_tokens.popleft() if forced else sampled_token
                column.append(token)
                masks.append(0 if forced else 1)
                row.current_tokens.append(token)
                if token in terminal:
                    row.completed = True
                self._advance_tool(row, token, special)
            yield column, masks
            num_generated += 1
            if column != sampled:  # the calculator forced a token: that is the next input
                next_ids = torch.tensor(column, dtype=torch.long, device=device).unsqueeze(1)

    def _advance_tool(self, row, token, special):
        """The calculator state machine of one row."""
        if token == special["python_start"]:
            row.in_python_block = True
            row.python_expr_tokens = []
        elif token == special["python_end"] and row.in_python_block:
            row.in_python_block = False
            if row.python_expr_tokens:
                expression = self.tokenizer.decode(row.python_expr_tokens)
                result = use_calculator(expression)
                if result is not None:
                    row.forced_tokens.append(special["output_start"])
                    row.forced_tokens.extend(self.tokenizer.encode(str(result)))
                    row.forced_tokens.append(special["output_end"])
            row.python_expr_tokens = []
        elif row.in_python_block:
            row.python_expr_tokens.append(token)

    def generate_batch(self, tokens, num_samples=1, **kwargs):
        """
        Run `generate` to the end. Returns (results, masks): per sample the prompt followed by its
        tokens up to, not including, the first <|assistant_end|> or BOS.
        """
        terminal = (self.tokenizer.encode_special("<|assistant_end|>"), self.tokenizer.get_bos_token_id())
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        done = [False] * num_samples
        for column, column_masks in self.generate(tokens, num_samples, **kwargs):
            for i, (token, mask) in enumerate(zip(column, column_masks)):
                if done[i]:
                    continue
                if token in terminal:
                    done[i] = True
                else:
                    results[i].append(token)
                    masks[i].append(mask)
        return results, masks  # generate itself stops once every row is done


class ReplyDecoder:
    """
    Turns a stream of generated ids into the text a person should see, piece by piece: special
    tokens never leak (the conversation markers are dropped, a calculator call is shown as
    "[calculator: 2+3] = 5"), and a multi-byte character split across tokens is only emitted once
    complete. `stop` is set by <|assistant_end|> or BOS, after which nothing more is shown.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        get = tokenizer.encode_special
        self.terminal = {get("<|assistant_end|>"), tokenizer.get_bos_token_id()}
        self.renderings = {get("<|python_start|>"): "[calculator: ", get("<|python_end|>"): "]",
                           get("<|output_start|>"): " = ", get("<|output_end|>"): ""}
        # any other special token (user/assistant markers) is dropped
        self.hidden = {get(name) for name in tokenizer.get_special_tokens()} - set(self.renderings)
        self.pending = []  # ordinary ids whose text is not complete yet
        self.stop = False

    def add(self, token):
        """Feed one id; return the newly visible text ('' when there is none yet)."""
        if self.stop:
            return ""
        if token in self.terminal:
            self.stop = True
            return self.flush()
        if token in self.renderings:
            return self.flush() + self.renderings[token]
        if token in self.hidden:
            return self.flush()
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd"):
            return ""  # wait for the rest of the character
        self.pending = []
        return text

    def flush(self):
        """Whatever is still pending, even if it is not valid UTF-8."""
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending = []
        return text


if __name__ == "__main__":
    # self-check: greedy decoding with the cache matches the naive model, and is faster
    import time

    from nanochat.checkpoint_manager import load_model
    from nanochat.common import autocast_context, autodetect_device_type, compute_init

    device_type = autodetect_device_type()
    _, _, _, _, device = compute_init(device_type)
    model, tokenizer, _ = load_model("base", device, phase="eval")
    prompt = tokenizer.encode("The chemical formula of water is", prepend=tokenizer.get_bos_token_id())
    with autocast_context(device_type):  # bf16 on CUDA, where the checkpoint's embedding is bf16
        t0 = time.time()
        naive = list(model.generate(prompt, max_tokens=64, temperature=0.0))
        t1 = time.time()
        engine = Engine(model, tokenizer)
        cached = [column[0] for column, _ in engine.generate(prompt, max_tokens=64, temperature=0.0)]
        t2 = time.time()
    print(tokenizer.decode(naive))
    print(f"naive GPT.generate: {t1 - t0:.2f}s, Engine.generate: {t2 - t1:.2f}s")
    print("match" if naive == cached else "MISMATCH")
