"""
The GPT model, readable top to bottom.

Notable features:
- rotary embeddings (no positional embeddings), half-split layout
- QK norm (after rotary)
- untied weights for token embedding and lm_head
- ReLU^2 activation in the MLP
- parameter-free RMSNorm: after the embedding, before attention/MLP, and before lm_head
- no biases in any Linear layer
- group-query attention (GQA) support
- logit soft-capping 15 * tanh(x / 15)
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    sequence_len: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 6  # number of query heads
    n_kv_head: int = 6  # number of key/value heads (GQA when < n_head)
    n_embd: int = 768


def valid_depth(depth, aspect_ratio=64, head_dim=128):
    model_dim = depth * aspect_ratio
    num_heads = max(1, math.ceil(model_dim / head_dim))
    return model_dim % num_heads == 0


def config_for_depth(depth, max_seq_len, vocab_size, aspect_ratio=64, head_dim=128):
    """Model dims from depth: width = 64*depth, heads of ~128 dims, no GQA by default."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    model_dim = depth * aspect_ratio
    num_heads = max(1, math.ceil(model_dim / head_dim))
    if model_dim % num_heads != 0:
        lower = next((d for d in range(depth - 1, 0, -1) if valid_depth(d, aspect_ratio, head_dim)), None)
        upper = next(d for d in range(depth + 1, depth + 100) if valid_depth(d, aspect_ratio, head_dim))
        nearest = " or ".join(str(d) for d in (lower, upper) if d is not None)
        raise ValueError(
            f"depth={depth} gives width {model_dim}, which does not split into {num_heads} heads; "
            f"nearest valid depths: {nearest}"
        )
    return GPTConfig(sequence_len=max_seq_len, vocab_size=vocab_size, n_layer=depth,
                     n_head=num_heads, n_kv_head=num_heads, n_embd=model_dim)


def norm(x):
    # parameter-free RMSNorm
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary_emb(x, cos, sin):
    assert x.ndim == 4  # (B, T, H, D)
    d = x.shape[3] // 2
    x1, x2 = x[..., :d], x[..., d:]
    y1 = x1 * cos + x2 * sin
    y2 = x1 * (-sin) + x2 * cos
    return torch.cat([y1, y2], 3)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.n_embd = config.n_embd
        assert self.n_embd % self.n_head == 0, "n_embd must be divisible by n_head"
        self.head_dim = self.n_embd // self.n_head
        assert self.n_kv_head <= self.n_head and self.n_head % self.n_kv_head == 0, \
            "n_head must be a multiple of n_kv_head"
        self.c_q = nn.Linear(self.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(self.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(self.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(self.n_embd, self.n_embd, bias=False)

    def forward(self, x, cos_sin, kv_cache):
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)

        # rotary first, then QK norm
        cos, sin = cos_sin
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)

        if kv_cache is not None:
            k, v = kv_cache.insert_kv(self.layer_idx, k, v)
        Tq, Tk = q.size(2), k.size(2)

        enable_gqa = self.n_head != self.n_kv_head
        if kv_cache is not None and kv_cache.attn_mask is not None:
            # the cache says what each row may see: rows at their own lengths (continuous batching),
            # or the fixed capacity of Engine.generate's decode cache
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=kv_cache.attn_mask, enable_gqa=enable_gqa)
        elif kv_cache is None or Tq == Tk:
            # training, or prefill into an empty cache: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=enable_gqa)
        elif Tq == 1:
            # one new token attends to everything in the cache
            y = F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=enable_gqa)
        else:
            # a chunk after a prefix: full view of the prefix, causal within the chunk
            attn_mask = torch.ones((Tq, Tk), dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=enable_gqa)

        y = y.transpose(1, 2).contiguous().view(B, T, -1)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, cos_sin, kv_cache):
        x = x + self.attn(norm(x), cos_sin, kv_cache)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        })
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Rotary tables cover 10x the context so generation can run past it. Non-persistent:
        # they are rebuilt, never saved. Kept in fp32; forward casts the rows it uses.
        self.rotary_seq_len = config.sequence_len * 10
        head_dim = config.n_embd // config.n_head
        cos, sin = self._precompute_rotary_embeddings(self.rotary_seq_len, head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def init_weights(self):
        self.apply(self._init_weights)
        # zero the output projections: every block starts as the identity, logits start at 0
        torch.nn.init.zeros_(self.lm_head.weight)
        for block in self.transformer.h:
            torch.nn.init.zeros_(block.mlp.c_proj.weight)
            torch.nn.init.zeros_(block.attn.c_proj.weight)
        head_dim = self.config.n_embd // self.config.n_head
        self.cos, self.sin = self._precompute_rotary_embeddings(self.rotary_seq_len, head_dim)
        if self.transformer.wte.weight.device.type == "cuda":
            self.transformer.wte.to(dtype=torch.bfloat16)  # the embedding is a lookup; halve its memory

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            fan_out, fan_in = module.weight.size(0), module.weight.size(1)
            std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)  # no Linear here has a bias
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=1.0)

    def _precompute_rotary_embeddings(self, seq_len, head_dim, base=10000):
        device = self.transformer.wte.weight.device
        if device.type == "meta":
            device = torch.device("cpu")  # meta-tensor arithmetic is slow to warm up; init_weights rebuilds these
        channel_range = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
        inv_freq = 1.0 / (base ** (channel_range / head_dim))
        t = torch.arange(seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        cos, sin = freqs.cos(), freqs.sin()
        return cos[None, :, None, :], sin[None, :, None, :]  # (1, T, 1, D/2)

    def get_device(self):
        return self.transformer.wte.weight.device

    def estimate_flops(self):
        """FLOPs per token for a forward+backward pass (matmuls 6N, plus attention)."""
        nparams = sum(p.numel() for p in self.parameters())
        nparams_embedding = self.transformer.wte.weight.numel()
        L, H = self.config.n_layer, self.config.n_head
        Q, T = self.config.n_embd // self.config.n_head, self.config.sequence_len
        return 6 * (nparams - nparams_embedding) + 12 * L * H * Q * T

    def setup_optimizers(self, unembedding_lr=0.004, embedding_lr=0.2, matrix_lr=0.02, weight_decay=0.0):
        from nanochat.adamw import DistAdamW
        from nanochat.common import get_dist_info, print0
        from nanochat.muon import DistMuon, Muon

        model_dim = self.config.n_embd
        ddp, rank, local_rank, world_size = get_dist_info()
        matrix_params = list(self.transformer.h.parameters())
        embedding_params = list(self.transformer.wte.parameters())
        lm_head_params = list(self.lm_head.parameters())
        assert len(list(self.parameters())) == len(matrix_params) + len(embedding_params) + len(lm_head_params)
        # AdamW learning rates were tuned at width 768; scale them as 1/sqrt(width)
        dmodel_lr_scale = (model_dim / 768) ** -0.5
        print0(f"Scaling the LR for the AdamW parameters ∝1/√({model_dim}/768) = {dmodel_lr_scale:.6f}")
        adam_groups = [
            dict(params=lm_head_params, lr=unembedding_lr * dmodel_lr_scale),
            dict(params=embedding_params, lr=embedding_lr * dmodel_lr_scale),
        ]
        adamw_kwargs = dict(betas=(0.8, 0.95), eps=1e-10, weight_decay=weight_decay)
        if ddp:
            adamw_optimizer = DistAdamW(adam_groups, **adamw_kwargs)
        else:
            # fused on CUDA for speed. Elsewhere torch's default kernel: its rounding matches DistAdamW
            # bit for bit (the fused CPU kernel differs in the last ulp), so one CPU process and
            # several gloo ranks train identically.
            fused = self.get_device().type == "cuda"
            adamw_optimizer = torch.optim.AdamW(adam_groups, fused=fused, **adamw_kwargs)
        muon_optimizer = (DistMuon if ddp else Muon)(matrix_params, lr=matrix_lr, momentum=0.95)
        optimizers = [adamw_optimizer, muon_optimizer]
        for opt in optimizers:
            for group in opt.param_groups:
                group["initial_lr"] = group["lr"]
        return optimizers

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        B, T = idx.size()
        assert T <= self.cos.size(1), f"sequence length {T} exceeds the rotary cache {self.cos.size(1)}"
        assert idx.device == self.cos.device, f"tokens on {idx.device}, rotary tables on {self.cos.device}"
        T0 = 0 if kv_cache is None else kv_cache.get_pos()
        if isinstance(T0, int):
            cos_sin = self.cos[:, T0:T0 + T], self.sin[:, T0:T0 + T]
        else:  # a RowKVCache: one new token per row, each row at its own position
            cos_sin = self.cos[0, T0].unsqueeze(1), self.sin[0, T0].unsqueeze(1)

        x = self.transformer.wte(idx)
        # the tables in the dtype q and k come in (bf16 under CUDA autocast): one cast per forward,
        # not one per layer and per q and k
        dtype = torch.get_autocast_dtype(idx.device.type) if torch.is_autocast_enabled(idx.device.type) else x.dtype
        cos_sin = tuple(table.to(dtype) for table in cos_sin)
        x = norm(x)
        for block in self.transformer.h:
            x = block(x, cos_sin, kv_cache)
        x = norm(x)

        softcap = 15
        logits = self.lm_head(x)
        logits = softcap * torch.tanh(logits / softcap)
        if targets is None:
            return logits
        logits = logits.float()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1, reduction=loss_reduction)

    @torch.inference_mode()
    def generate(self, tokens, max_tokens, temperature=1.0, top_k=None, seed=42):
        """Naive batch-1 sampling without a KV cache: re-runs the whole sequence every step."""
        assert isinstance(tokens, list)
        device = self.get_device()
        rng = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        for _ in range(max_tokens):
            logits = self.forward(ids)[:, -1, :]
            if top_k is not None and top_k > 0:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            if temperature > 0:
                probs = F.softmax(logits / temperature, dim=-1)
                next_ids = torch.multinomial(probs, num_samples=1, generator=rng)
            else:
                next_ids = torch.argmax(logits, dim=-1, keepdim=True)
            ids = torch.cat((ids, next_ids), dim=1)
            yield next_ids.item()
