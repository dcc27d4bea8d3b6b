"""
Our tiktoken encodings <-> Hugging Face `tokenizers` byte-level BPE (tokenizer.json), and the
tokenizer files of an exported model directory (tokenizer_config.json with the chat template,
special_tokens_map.json). Both directions give the very same ids.
"""

import json

from nanochat.tokenizer import SPECIAL_TOKENS, TokenizerError, byte_level_pre_tokenizer

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
    "{{ raise_exception('roles must alternate user/assistant, starting with user "
    "(after an optional system message)') }}"
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


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character table used by byte-level BPE vocabularies."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    invisible = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(invisible)})  # shifted past 255, in byte order
    return table


def _merges_from_ranks(ranks):
    """
    Every (left, right) split of a token whose halves are both tokens, ordered by the rank of the
    merged token. tiktoken merges any adjacent pair whose concatenation is a token (lowest rank
    first); listing every such split gives HF's merge-list BPE the same choices.
    """
    merges = []
    for token in sorted(ranks, key=ranks.get):
        halves = [(token[:i], token[i:]) for i in range(1, len(token))]
        splits = [(left, right) for left, right in halves if left in ranks and right in ranks]
        merges.extend(sorted(splits, key=lambda split: (ranks[split[0]], ranks[split[1]])))
    return merges


def hf_tokenizer_from_encoding(enc, add_bos=True):
    """A `tokenizers.Tokenizer` that gives the same ids as the tiktoken Encoding `enc`."""
    from tokenizers import AddedToken, Tokenizer, decoders, processors
    from tokenizers.models import BPE
    ranks, specials = enc._mergeable_ranks, enc._special_tokens
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError("the tokenizer's ranks are not 0..N-1; cannot build a BPE vocabulary")
    to_unicode = bytes_to_unicode()

    def u(b):
        return "".join(to_unicode[x] for x in b)

    vocab = {u(token): rank for token, rank in ranks.items()}
    merges = [(u(a), u(b)) for a, b in _merges_from_ranks(ranks)]
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = byte_level_pre_tokenizer(enc._pat_str)
    tok.decoder = decoders.ByteLevel()
    # add specials in id order so each lands on the id tiktoken gives it
    for name, token_id in sorted(specials.items(), key=lambda kv: kv[1]):
        if tok.get_vocab_size(with_added_tokens=True) != token_id:
            raise TokenizerError(f"special token {name!r} has id {token_id}, expected the next free id "
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
        raise TokenizerError(f"{path}: model type {model.get('type')!r}, expected a byte-level 'BPE'")
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    try:
        ranks = {bytes(to_byte[c] for c in token): rank for token, rank in model["vocab"].items()}
    except KeyError as e:
        raise TokenizerError(f"{path}: vocabulary is not byte-level (character {e} has no byte)") from None
    rank_ids = set(ranks.values())
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t["id"] not in rank_ids}
    pattern = _split_pattern(spec.get("pre_tokenizer"))
    if pattern is None:
        raise TokenizerError(f"{path}: no Split(Regex) pre-tokenizer found; cannot recover the split pattern")
    return tiktoken.Encoding(name="rustbpe", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)


def _split_pattern(pre_tokenizer):
    """The Regex of the first Split in a pre_tokenizer spec (Sequences searched depth-first), else None."""
    kind = (pre_tokenizer or {}).get("type")
    if kind == "Split":
        return (pre_tokenizer.get("pattern") or {}).get("Regex")
    if kind == "Sequence":
        found = (_split_pattern(inner) for inner in pre_tokenizer.get("pretokenizers", []))
        return next((pattern for pattern in found if pattern is not None), None)
    return None


def tokenizer_files(enc, chat, sequence_len):
    """(tokenizers.Tokenizer, tokenizer_config dict, special_tokens_map dict)."""
    tok = hf_tokenizer_from_encoding(enc)
    eos = "<|assistant_end|>" if chat else "<|bos|>"
    extra = [s for s in SPECIAL_TOKENS if s in enc._special_tokens and s not in ("<|bos|>", eos)]
    special_map = {"bos_token": "<|bos|>", "eos_token": eos, "pad_token": eos,
                   "additional_special_tokens": extra}  # the name both transformers v4 and v5 read
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": sequence_len,
        "chat_template": CHAT_TEMPLATE,
    }
    return tok, config, special_map
