"""
Conversion between our checkpoints and the Hugging Face `transformers` NanoChat format.

An exported directory holds config.json (model_type "nanochat"), model.safetensors,
generation_config.json, tokenizer.json (+ tokenizer_config.json with a chat template,
special_tokens_map.json) and nanochat_meta.json (where the weights came from, so an import can
put them back). `transformers.AutoModelForCausalLM` / `AutoTokenizer` load it without remote code.

The two models compute the same function, so the weight mapping is a pure renaming:
- our rotary layout (half split, y1 = x1*cos + x2*sin, y2 = -x1*sin + x2*cos) is the one the
  transformers NanoChat model uses (its rotate_half flips signs to match), so q/k need no permutation;
- RMSNorm has no weights on either side; ours uses the float32 machine epsilon (F.rms_norm's
  default), which we write as rms_norm_eps so float32 inference agrees.
"""

import json
import os

import torch

from nanochat.checkpoint_manager import (SOURCE_DIRS, available_steps, find_largest_model, load_checkpoint,
                                         model_from_state_dict, save_checkpoint)
from nanochat.tokenizer import SPECIAL_TOKENS

HF_MODEL_TYPE = "nanochat"
HF_ARCHITECTURE = "NanoChatForCausalLM"
SOFTCAP = 15.0
ROPE_THETA = 10000.0
RMS_NORM_EPS = torch.finfo(torch.float32).eps  # what F.rms_norm uses for float32 when eps=None
META_FILE = "nanochat_meta.json"
HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", META_FILE)
STAGE_DIRS = {source: subdir for source, (subdir, _) in SOURCE_DIRS.items()}
CHAT_SOURCES = ("mid", "sft", "rl")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODEL_CONFIG_KEYS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")

# Renders exactly what RustBPETokenizer.render_for_completion renders: BOS, then user/assistant
# turns; a leading system message is folded into the first user message ("system\n\nuser");
# assistant content is a string or a list of text/python/python_output parts.
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "<|bos|>"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('roles must alternate user/assistant, starting with user (after an optional system message)') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "<|user_start|>{{ (system_prefix if loop.first else '') + message['content'] }}<|user_end|>"
    "{%- elif message['role'] == 'assistant' -%}"
    "<|assistant_start|>"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] == 'python' -%}<|python_start|>{{ part['text'] }}<|python_end|>"
    "{%- elif part['type'] == 'python_output' -%}<|output_start|>{{ part['text'] }}<|output_end|>"
    "{%- else -%}{{ raise_exception('unknown assistant part type: ' + part['type']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "<|assistant_end|>"
    "{%- else -%}"
    "{{ raise_exception('unsupported role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant_start|>{%- endif -%}"
)


class HFExportError(ValueError):
    pass


# -----------------------------------------------------------------------------
# weights and config

# (our name, transformers name); {i} is the layer index
_LAYER_NAMES = [
    ("attn.c_q", "self_attn.q_proj"), ("attn.c_k", "self_attn.k_proj"), ("attn.c_v", "self_attn.v_proj"),
    ("attn.c_proj", "self_attn.o_proj"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"),
]
_TOP_NAMES = [("transformer.wte.weight", "model.embed_tokens.weight"), ("lm_head.weight", "lm_head.weight")]


def _name_map(n_layer):
    pairs = list(_TOP_NAMES)
    for i in range(n_layer):
        for ours, theirs in _LAYER_NAMES:
            pairs.append((f"transformer.h.{i}.{ours}.weight", f"model.layers.{i}.{theirs}.weight"))
    return pairs


def _rename(state_dict, pairs, what):
    mapping = dict(pairs)
    missing = sorted(set(mapping) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(mapping))
    if missing or unexpected:
        raise HFExportError(f"{what} does not match the model config: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
    return {mapping[k]: v for k, v in state_dict.items()}


def state_dict_to_hf(state_dict, n_layer):
    """Our state_dict -> transformers NanoChatForCausalLM names (a renaming; tensors are shared)."""
    state_dict = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
    return _rename(state_dict, _name_map(n_layer), "checkpoint state_dict")


def state_dict_from_hf(hf_state_dict, n_layer):
    """transformers NanoChat names -> our state_dict names."""
    return _rename(hf_state_dict, [(t, o) for o, t in _name_map(n_layer)], "model.safetensors")


def hf_config_dict(model_config, bos_id, eos_id, pad_id, dtype="float32"):
    """config.json contents for a model of ours (model_config = GPTConfig fields)."""
    c = {k: int(model_config[k]) for k in MODEL_CONFIG_KEYS}
    return {
        "architectures": [HF_ARCHITECTURE],
        "model_type": HF_MODEL_TYPE,
        "vocab_size": c["vocab_size"],
        "hidden_size": c["n_embd"],
        "intermediate_size": 4 * c["n_embd"],
        "num_hidden_layers": c["n_layer"],
        "num_attention_heads": c["n_head"],
        "num_key_value_heads": c["n_kv_head"],
        "max_position_embeddings": c["sequence_len"],
        "hidden_act": "relu2",
        "attention_dropout": 0.0,
        "attention_bias": False,
        "rms_norm_eps": RMS_NORM_EPS,
        "initializer_range": 0.02,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
        "final_logit_softcapping": SOFTCAP,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "dtype": dtype,
    }


def model_config_from_hf(config, where="config.json"):
    """GPTConfig fields from an HF config dict; refuses anything our GPT cannot represent."""
    model_type = config.get("model_type")
    if model_type != HF_MODEL_TYPE:
        raise HFExportError(f"{where} has model_type={model_type!r}; only {HF_MODEL_TYPE!r} models "
                            "(exported by scripts.export_hf or the original nanochat) can be imported")
    n_embd, n_head = config["hidden_size"], config["num_attention_heads"]
    n_kv_head = config.get("num_key_value_heads") or n_head
    rope = config.get("rope_parameters") or {}
    checks = [
        ("hidden_act", config.get("hidden_act", "relu2"), "relu2"),
        ("intermediate_size", config.get("intermediate_size"), 4 * n_embd),
        ("final_logit_softcapping", config.get("final_logit_softcapping"), SOFTCAP),
        ("tie_word_embeddings", config.get("tie_word_embeddings", False), False),
        ("attention_bias", config.get("attention_bias", False), False),
        ("rope_parameters.rope_type", rope.get("rope_type", "default"), "default"),
        ("rope_parameters.rope_theta", rope.get("rope_theta", config.get("rope_theta", ROPE_THETA)), ROPE_THETA),
        ("head_dim", config.get("head_dim") or n_embd // n_head, n_embd // n_head),
    ]
    for key, found, wanted in checks:
        if found != wanted:
            raise HFExportError(f"{where}: {key}={found!r} but our GPT only supports {wanted!r}")
    return {"sequence_len": config["max_position_embeddings"], "vocab_size": config["vocab_size"],
            "n_layer": config["num_hidden_layers"], "n_head": n_head, "n_kv_head": n_kv_head, "n_embd": n_embd}


# -----------------------------------------------------------------------------
# tokenizer: tiktoken ranks <-> HF tokenizers byte-level BPE

def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character table used by byte-level BPE vocabularies."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)  # bytes that would be invisible get shifted past 255
            extra += 1
    return table


def _merges_from_ranks(ranks):
    """
    Every (left, right) split of a token whose halves are both tokens, ordered by the rank of the
    merged token. tiktoken merges any adjacent pair whose concatenation is a token (lowest rank
    first); listing every such split gives HF's merge-list BPE the same choices.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        splits = []
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                splits.append((ranks[left], ranks[right], left, right))
        merges.extend((left, right) for _, _, left, right in sorted(splits))
    return merges


def hf_tokenizer_from_encoding(enc, add_bos=True):
    """A `tokenizers.Tokenizer` that gives the same ids as the tiktoken Encoding `enc`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    ranks = enc._mergeable_ranks
    specials = enc._special_tokens
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise HFExportError("the tokenizer's ranks are not 0..N-1; cannot build a BPE vocabulary")
    to_unicode = bytes_to_unicode()

    def u(b):
        return "".join(to_unicode[x] for x in b)

    vocab = {u(token): rank for token, rank in ranks.items()}
    merges = [(u(a), u(b)) for a, b in _merges_from_ranks(ranks)]
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(enc._pat_str), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # add specials in id order so each lands on the id tiktoken gives it
    for name, token_id in sorted(specials.items(), key=lambda kv: kv[1]):
        if tok.get_vocab_size(with_added_tokens=True) != token_id:
            raise HFExportError(f"special token {name!r} has id {token_id}, expected the next free id "
                                f"{tok.get_vocab_size(with_added_tokens=True)}")
        tok.add_special_tokens([AddedToken(name, special=True, normalized=False)])
    if add_bos and "<|bos|>" in specials:  # every document our models saw started with <|bos|>
        tok.post_processor = processors.TemplateProcessing(
            single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", specials["<|bos|>"])])
    return tok


def encoding_from_tokenizer_json(path):
    """Rebuild our tiktoken Encoding from an exported tokenizer.json."""
    import tiktoken
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise HFExportError(f"{path}: model type {model.get('type')!r}, expected a byte-level 'BPE'")
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    try:
        ranks = {bytes(to_byte[c] for c in token): rank for token, rank in model["vocab"].items()}
    except KeyError as e:
        raise HFExportError(f"{path}: vocabulary is not byte-level (character {e} has no byte)") from None
    rank_ids = set(ranks.values())
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t["id"] not in rank_ids}
    pattern = _split_pattern(spec.get("pre_tokenizer"))
    if pattern is None:
        raise HFExportError(f"{path}: no Split(Regex) pre-tokenizer found; cannot recover the split pattern")
    return tiktoken.Encoding(name="rustbpe", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)


def _split_pattern(pre_tokenizer):
    if not pre_tokenizer:
        return None
    if pre_tokenizer.get("type") == "Sequence":
        for inner in pre_tokenizer.get("pretokenizers", []):
            found = _split_pattern(inner)
            if found is not None:
                return found
        return None
    if pre_tokenizer.get("type") == "Split":
        return (pre_tokenizer.get("pattern") or {}).get("Regex")
    return None


def tokenizer_files(enc, chat, sequence_len):
    """(tokenizers.Tokenizer, tokenizer_config dict, special_tokens_map dict)."""
    tok = hf_tokenizer_from_encoding(enc)
    eos = "<|assistant_end|>" if chat else "<|bos|>"
    extra = [s for s in SPECIAL_TOKENS if s in enc._special_tokens and s not in ("<|bos|>", eos)]
    special_map = {"bos_token": "<|bos|>", "eos_token": eos, "pad_token": eos}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "additional_special_tokens": extra,  # the name both transformers v4 and v5 read
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": sequence_len,
        "chat_template": CHAT_TEMPLATE,
    }
    return tok, config, {**special_map, "additional_special_tokens": extra}


# -----------------------------------------------------------------------------
# our checkpoint layout (SPEC §2.1): <base>/<stage>_checkpoints/<tag>/model_XXXXXX.pt + meta_XXXXXX.json

def list_checkpoints(base_dir):
    """[(source, tag, step)] of every model checkpoint under the base dir, sorted."""
    found = []
    for source, stage_dir in STAGE_DIRS.items():
        root = os.path.join(base_dir, stage_dir)
        if not os.path.isdir(root):
            continue
        for tag in sorted(os.listdir(root)):
            tag_dir = os.path.join(root, tag)
            if os.path.isdir(tag_dir):
                found.extend((source, tag, step) for step in available_steps(tag_dir))
    return found


def _default_tag(root):
    try:
        return find_largest_model(root)  # the largest model, as load_model guesses
    except FileNotFoundError:
        return None


def resolve_checkpoint(base_dir, source, model_tag=None, step=None):
    """(checkpoint_dir, step) for a source/tag/step, guessing the newest when not given."""
    if source not in STAGE_DIRS:
        raise HFExportError(f"unknown source {source!r}; choose one of {', '.join(STAGE_DIRS)}")
    root = os.path.join(base_dir, STAGE_DIRS[source])
    tag = model_tag or (_default_tag(root) if os.path.isdir(root) else None)
    steps = available_steps(os.path.join(root, tag)) if tag else []
    if step is None and steps:
        step = steps[-1]
    if step not in steps:
        wanted = f"{source}" + (f" tag={tag}" if tag else "") + (f" step={step}" if step is not None else "")
        available = list_checkpoints(base_dir)
        listing = "\n".join(f"  --source={s} --model_tag={t} --step={n}" for s, t, n in available) or "  (none)"
        raise FileNotFoundError(f"no checkpoint for {wanted} under {root}. Checkpoints in {base_dir}:\n{listing}")
    return os.path.join(root, tag), step


# -----------------------------------------------------------------------------
# export

def _prepare_out_dir(out_dir, force):
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        present = sorted(os.listdir(out_dir))
        if not force:
            raise FileExistsError(f"{out_dir} already holds files ({', '.join(present[:6])}"
                                  f"{', ...' if len(present) > 6 else ''}); pick an empty directory or pass --force")
        others = [p for p in present if p not in HF_FILES]
        if others:
            print(f"Note: --force keeps files we do not write: {', '.join(others)}")
    os.makedirs(out_dir, exist_ok=True)


def _write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def export_to_hf(out_dir, state_dict, model_config, enc, chat, dtype="float32", force=False, provenance=None):
    """Write a transformers-loadable NanoChat directory from a state_dict + tiktoken Encoding."""
    from safetensors.torch import save_file
    if dtype not in DTYPES:
        raise HFExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model_config = {k: int(model_config[k]) for k in MODEL_CONFIG_KEYS}
    if enc.n_vocab != model_config["vocab_size"]:
        raise HFExportError(f"tokenizer has {enc.n_vocab} ids but the model expects vocab_size="
                            f"{model_config['vocab_size']}; export with the tokenizer the model was trained with")
    _prepare_out_dir(out_dir, force)
    hf_state = state_dict_to_hf(state_dict, model_config["n_layer"])
    tensors = {k: v.detach().to("cpu", DTYPES[dtype]).contiguous() for k, v in hf_state.items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})

    bos_id = enc._special_tokens["<|bos|>"]
    eos_id = enc._special_tokens["<|assistant_end|>"] if chat else bos_id
    _write_json(os.path.join(out_dir, "config.json"), hf_config_dict(model_config, bos_id, eos_id, eos_id, dtype))
    _write_json(os.path.join(out_dir, "generation_config.json"),
                {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": eos_id})
    tok, tok_config, special_map = tokenizer_files(enc, chat, model_config["sequence_len"])
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), tok_config)
    _write_json(os.path.join(out_dir, "special_tokens_map.json"), special_map)
    _write_json(os.path.join(out_dir, META_FILE), {**(provenance or {}), "model_config": model_config})
    return out_dir


def export_checkpoint(source, out_dir, model_tag=None, step=None, dtype="float32", force=False):
    """Export <base>/<stage>_checkpoints/<tag>/model_<step>.pt with the base dir's tokenizer."""
    from nanochat.common import get_base_dir
    from nanochat.tokenizer import get_tokenizer
    base_dir = get_base_dir()
    checkpoint_dir, step = resolve_checkpoint(base_dir, source, model_tag, step)
    state_dict, _, meta = load_checkpoint(checkpoint_dir, step, "cpu")
    if "model_config" not in meta:
        raise HFExportError(f"{checkpoint_dir}/meta_{step:06d}.json has no model_config")
    tokenizer = get_tokenizer()
    provenance = {"source": source, "model_tag": os.path.basename(checkpoint_dir), "step": step,
                  "meta": {k: v for k, v in meta.items() if k != "model_config"}}
    export_to_hf(out_dir, state_dict, meta["model_config"], tokenizer.enc, chat=source in CHAT_SOURCES,
                 dtype=dtype, force=force, provenance=provenance)
    return checkpoint_dir, step


# -----------------------------------------------------------------------------
# import

def read_hf_dir(hf_dir):
    """(state_dict in our names, model_config, tiktoken Encoding, provenance) from an HF NanoChat dir."""
    from safetensors.torch import load_file
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{hf_dir} has no config.json; is it a transformers model directory?")
    with open(config_path, encoding="utf-8") as f:
        model_config = model_config_from_hf(json.load(f), where=config_path)
    weights = os.path.join(hf_dir, "model.safetensors")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{hf_dir} has no model.safetensors (sharded or pickled weights are not supported)")
    state_dict = state_dict_from_hf(load_file(weights), model_config["n_layer"])
    enc = encoding_from_tokenizer_json(os.path.join(hf_dir, "tokenizer.json"))
    if enc.n_vocab != model_config["vocab_size"]:
        raise HFExportError(f"{hf_dir}: tokenizer.json has {enc.n_vocab} ids, config.json vocab_size="
                            f"{model_config['vocab_size']}")
    provenance = {}
    meta_path = os.path.join(hf_dir, META_FILE)
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            provenance = json.load(f)
    return state_dict, model_config, enc, provenance


def _install_tokenizer(enc, tokenizer_dir):
    """Write the tokenizer to <base>/tokenizer unless one is there; an existing one must be the same."""
    from nanochat.tokenizer import RustBPETokenizer, save_token_bytes
    if os.path.exists(os.path.join(tokenizer_dir, "tokenizer.pkl")):
        existing = RustBPETokenizer.from_directory(tokenizer_dir).enc
        if existing._mergeable_ranks != enc._mergeable_ranks or existing._special_tokens != enc._special_tokens:
            raise HFExportError(f"{tokenizer_dir} already holds a different tokenizer; import into a fresh "
                                "base dir (NANOCHAT_BASE_DIR=...) so the checkpoint keeps its own tokenizer")
        return False
    tokenizer = RustBPETokenizer(enc, "<|bos|>")
    tokenizer.save(tokenizer_dir)
    save_token_bytes(tokenizer, tokenizer_dir)
    return True


def import_hf_dir(hf_dir, source=None, model_tag=None, step=None, force=False):
    """Turn an HF NanoChat directory back into our checkpoint layout. Returns (checkpoint_dir, step)."""
    from nanochat.common import get_base_dir
    state_dict, model_config, enc, provenance = read_hf_dir(hf_dir)
    source = source or provenance.get("source", "base")
    if source not in STAGE_DIRS:
        raise HFExportError(f"unknown source {source!r}; choose one of {', '.join(STAGE_DIRS)}")
    model_tag = model_tag or provenance.get("model_tag") or f"d{model_config['n_layer']}"
    step = step if step is not None else int(provenance.get("step", 0))
    base_dir = get_base_dir()
    checkpoint_dir = os.path.join(base_dir, STAGE_DIRS[source], model_tag)
    if os.path.exists(os.path.join(checkpoint_dir, f"model_{step:06d}.pt")) and not force:
        raise FileExistsError(f"{checkpoint_dir}/model_{step:06d}.pt exists; pass --force to overwrite "
                              "or choose another --model_tag/--step")
    _install_tokenizer(enc, os.path.join(base_dir, "tokenizer"))
    meta = {**provenance.get("meta", {}), "step": step, "model_config": model_config,
            "imported_from": os.path.abspath(hf_dir)}
    save_checkpoint(checkpoint_dir, step, state_dict, None, meta)
    return checkpoint_dir, step


def load_hf_dir_as_nanochat(hf_dir, device):
    """Our GPT + RustBPETokenizer from an HF NanoChat dir, ready for eval: (model, tokenizer, meta)."""
    from nanochat.gpt import GPTConfig
    from nanochat.tokenizer import RustBPETokenizer
    state_dict, model_config, enc, provenance = read_hf_dir(hf_dir)
    model = model_from_state_dict(GPTConfig(**model_config), state_dict, device, phase="eval")
    meta = {**provenance.get("meta", {}), "model_config": model_config}
    return model, RustBPETokenizer(enc, "<|bos|>"), meta
