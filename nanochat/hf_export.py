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
from pathlib import Path

import torch

from nanochat.checkpoint_manager import (checkpoints_dir_of, load_checkpoint, model_from_state_dict, resolve_checkpoint,
                                         save_checkpoint)
from nanochat.hf_tokenizer import encoding_from_tokenizer_json, tokenizer_files

HF_MODEL_TYPE = "nanochat"
HF_ARCHITECTURE = "NanoChatForCausalLM"
SOFTCAP = 15.0
ROPE_THETA = 10000.0
RMS_NORM_EPS = torch.finfo(torch.float32).eps  # what F.rms_norm uses for float32 when eps=None
META_FILE = "nanochat_meta.json"
HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", META_FILE)
CHAT_SOURCES = ("mid", "sft", "rl")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODEL_CONFIG_KEYS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")

class HFExportError(ValueError):
    pass


# (our name, transformers name) of each block's weights, then of the top-level ones
_LAYER_NAMES = [
    ("attn.c_q", "self_attn.q_proj"), ("attn.c_k", "self_attn.k_proj"), ("attn.c_v", "self_attn.v_proj"),
    ("attn.c_proj", "self_attn.o_proj"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"),
]
_TOP_NAMES = [("transformer.wte.weight", "model.embed_tokens.weight"), ("lm_head.weight", "lm_head.weight")]


def _name_map(n_layer):
    layers = [(f"transformer.h.{i}.{ours}.weight", f"model.layers.{i}.{theirs}.weight")
              for i in range(n_layer) for ours, theirs in _LAYER_NAMES]
    return _TOP_NAMES + layers


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


def _prepare_out_dir(out_dir, force):
    present = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    if present and not force:
        raise FileExistsError(f"{out_dir} already holds files ({', '.join(present[:6])}"
                              f"{', ...' if len(present) > 6 else ''}); pick an empty directory or pass --force")
    others = [p for p in present if p not in HF_FILES]
    if others:
        print(f"Note: --force keeps files we do not write: {', '.join(others)}")
    os.makedirs(out_dir, exist_ok=True)


def _write_json(out_dir, name, data):
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
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
    _write_json(out_dir, "config.json", hf_config_dict(model_config, bos_id, eos_id, eos_id, dtype))
    _write_json(out_dir, "generation_config.json",
                {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": eos_id})
    tok, tok_config, special_map = tokenizer_files(enc, chat, model_config["sequence_len"])
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    _write_json(out_dir, "tokenizer_config.json", tok_config)
    _write_json(out_dir, "special_tokens_map.json", special_map)
    _write_json(out_dir, META_FILE, {**(provenance or {}), "model_config": model_config})
    return out_dir


def export_checkpoint(source, out_dir, model_tag=None, step=None, dtype="float32", force=False):
    """Export <base>/<stage>_checkpoints/<tag>/model_<step>.pt with the base dir's tokenizer."""
    from nanochat.tokenizer import get_tokenizer
    checkpoint_dir, step = resolve_checkpoint(checkpoints_dir_of(source), model_tag, step)
    state_dict, _, meta = load_checkpoint(checkpoint_dir, step, "cpu")
    if "model_config" not in meta:
        raise HFExportError(f"{checkpoint_dir}/meta_{step:06d}.json has no model_config")
    provenance = {"source": source, "model_tag": os.path.basename(checkpoint_dir), "step": step,
                  "meta": {k: v for k, v in meta.items() if k != "model_config"}}
    export_to_hf(out_dir, state_dict, meta["model_config"], get_tokenizer().enc, chat=source in CHAT_SOURCES,
                 dtype=dtype, force=force, provenance=provenance)
    return checkpoint_dir, step


def read_hf_dir(hf_dir):
    """(state_dict in our names, model_config, tiktoken Encoding, provenance) from an HF NanoChat dir."""
    from safetensors.torch import load_file
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{hf_dir} has no config.json; is it a transformers model directory?")
    model_config = model_config_from_hf(json.loads(Path(config_path).read_text(encoding="utf-8")), where=config_path)
    weights = os.path.join(hf_dir, "model.safetensors")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{hf_dir} has no model.safetensors (sharded or pickled weights are not supported)")
    state_dict = state_dict_from_hf(load_file(weights), model_config["n_layer"])
    enc = encoding_from_tokenizer_json(os.path.join(hf_dir, "tokenizer.json"))
    if enc.n_vocab != model_config["vocab_size"]:
        raise HFExportError(f"{hf_dir}: tokenizer.json has {enc.n_vocab} ids, config.json vocab_size="
                            f"{model_config['vocab_size']}")
    meta_path = os.path.join(hf_dir, META_FILE)
    provenance = json.loads(Path(meta_path).read_text(encoding="utf-8")) if os.path.isfile(meta_path) else {}
    return state_dict, model_config, enc, provenance


def _install_tokenizer(enc, tokenizer_dir):
    """Write the tokenizer to <base>/tokenizer unless one is there; an existing one must be the same."""
    from nanochat.tokenizer import RustBPETokenizer, save_token_bytes
    if not os.path.exists(os.path.join(tokenizer_dir, "tokenizer.pkl")):
        tokenizer = RustBPETokenizer(enc, "<|bos|>")
        tokenizer.save(tokenizer_dir)
        save_token_bytes(tokenizer, tokenizer_dir)
        return
    existing = RustBPETokenizer.from_directory(tokenizer_dir).enc
    if existing._mergeable_ranks != enc._mergeable_ranks or existing._special_tokens != enc._special_tokens:
        raise HFExportError(f"{tokenizer_dir} already holds a different tokenizer; import into a fresh "
                            "base dir (NANOCHAT_BASE_DIR=...) so the checkpoint keeps its own tokenizer")


def import_hf_dir(hf_dir, source=None, model_tag=None, step=None, force=False):
    """Turn an HF NanoChat directory back into our checkpoint layout. Returns (checkpoint_dir, step)."""
    from nanochat.common import get_base_dir
    state_dict, model_config, enc, provenance = read_hf_dir(hf_dir)
    source = source or provenance.get("source", "base")
    model_tag = model_tag or provenance.get("model_tag") or f"d{model_config['n_layer']}"
    step = step if step is not None else int(provenance.get("step", 0))
    base_dir = get_base_dir()
    checkpoint_dir = os.path.join(checkpoints_dir_of(source, base_dir), model_tag)
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
