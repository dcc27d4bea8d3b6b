"""
Tokenizers (GPT-4 style byte-level BPE) and chat rendering.

Two implementations:
- RustBPETokenizer: trained with our `rustbpe`, run with tiktoken. This is what nanochat uses.
- HuggingFaceTokenizer: a HF `tokenizers` wrapper, used to evaluate external HF models.
"""

import os
import pickle
from functools import lru_cache

SPECIAL_TOKENS = [
    "<|bos|>",  # every document / conversation begins with it
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
    "<|python_start|>", "<|python_end|>",  # the assistant calls the python tool
    "<|output_start|>", "<|output_end|>",  # the tool's output, fed back to the assistant
]

# GPT-4's split pattern, but with \p{N}{1,2} instead of \p{N}{1,3}: fewer tokens spent on
# digit groups at small vocab sizes.
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""  # noqa: E501


class TokenizerError(ValueError):
    pass


def _check_vocab_size(vocab_size):
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise TokenizerError(f"vocab_size must be an int, got {vocab_size!r}")
    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise TokenizerError(f"vocab_size={vocab_size} is too small: it must be at least {minimum} "
                             f"(256 byte tokens + {len(SPECIAL_TOKENS)} special tokens)")


def _special_ids(tokenizer, token):
    """[] for None, else [id] of a special token given by name or id: what encode puts around the text."""
    if token is None:
        return []
    if isinstance(token, int):
        return [token]
    if isinstance(token, str):
        return [tokenizer.encode_special(token)]
    raise ValueError(f"prepend/append must be a special-token string or an int id, got {type(token)}")


def byte_level_pre_tokenizer(pattern=SPLIT_PATTERN):
    """The HF `tokenizers` pre-tokenizer that splits text as tiktoken does with `pattern`, then maps bytes to
    GPT-2's printable characters: shared by HF training, the HF export and the benchmarks."""
    from tokenizers import Regex, pre_tokenizers
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


class HuggingFaceTokenizer:
    def __init__(self, tokenizer):
        # user text must never turn into special tokens: HF matches added tokens inside any text
        # unless told not to (specials are placed by encode_special only; the flag is not saved)
        tokenizer.encode_special_tokens = True
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, hf_path):
        """A Hub id, or a local folder holding tokenizer.json (e.g. our own export)."""
        if os.path.isdir(hf_path):
            return cls.from_directory(hf_path)
        from tokenizers import Tokenizer as HFTokenizer
        return cls(HFTokenizer.from_pretrained(hf_path))

    @classmethod
    def from_directory(cls, tokenizer_dir):
        from tokenizers import Tokenizer as HFTokenizer
        path = os.path.join(tokenizer_dir, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no tokenizer.json in {tokenizer_dir}")
        return cls(HFTokenizer.from_file(path))

    @classmethod
    def train_from_iterator(cls, text_iterator, vocab_size):
        from tokenizers import decoders, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers.models import BPE
        from tokenizers.trainers import BpeTrainer
        _check_vocab_size(vocab_size)
        tokenizer = HFTokenizer(BPE(byte_fallback=True, unk_token=None, fuse_unk=False))
        tokenizer.pre_tokenizer = byte_level_pre_tokenizer()  # no normalizer, no post-processor: the defaults
        tokenizer.decoder = decoders.ByteLevel()
        trainer = BpeTrainer(vocab_size=vocab_size, show_progress=True, min_frequency=0,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                             special_tokens=SPECIAL_TOKENS)
        tokenizer.train_from_iterator(text_iterator, trainer)
        return cls(tokenizer)

    def get_vocab_size(self):
        return self.tokenizer.get_vocab_size()

    def get_special_tokens(self):
        return [w.content for w in self.tokenizer.get_added_tokens_decoder().values()]

    def id_to_token(self, id):
        return self.tokenizer.id_to_token(id)

    def encode_special(self, text):
        return self.tokenizer.token_to_id(text)

    def get_bos_token_id(self):
        # GPT-2 style tokenizers have no <|bos|>; their document separator plays that role
        for name in ("<|bos|>", "<|endoftext|>"):
            if (bos := self.encode_special(name)) is not None:
                return bos
        raise TokenizerError("tokenizer has neither <|bos|> nor <|endoftext|>; cannot pick a BOS token")

    def encode(self, text, prepend=None, append=None):
        prefix, suffix = _special_ids(self, prepend), _special_ids(self, append)
        if isinstance(text, str):
            return prefix + self.tokenizer.encode(text, add_special_tokens=False).ids + suffix
        if isinstance(text, list):
            return [prefix + self.tokenizer.encode(t, add_special_tokens=False).ids + suffix for t in text]
        raise ValueError(f"Invalid input type: {type(text)}")

    def __call__(self, *args, **kwargs):
        return self.encode(*args, **kwargs)

    def decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def save(self, tokenizer_dir):
        os.makedirs(tokenizer_dir, exist_ok=True)
        path = os.path.join(tokenizer_dir, "tokenizer.json")
        self.tokenizer.save(path)
        print(f"Saved tokenizer to {path}")


class RustBPETokenizer:
    def __init__(self, enc, bos_token):
        self.enc = enc
        self.bos_token_id = self.encode_special(bos_token)

    @classmethod
    def train_from_iterator(cls, text_iterator, vocab_size):
        import rustbpe
        import tiktoken
        _check_vocab_size(vocab_size)
        vocab_size_no_special = vocab_size - len(SPECIAL_TOKENS)
        tokenizer = rustbpe.Tokenizer()
        tokenizer.train_from_iterator(text_iterator, vocab_size_no_special, pattern=SPLIT_PATTERN)
        mergeable_ranks = {bytes(k): v for k, v in tokenizer.get_mergeable_ranks()}
        if len(mergeable_ranks) < vocab_size_no_special:
            raise TokenizerError(
                f"the training text only supports {len(mergeable_ranks)} ranks, fewer than the "
                f"{vocab_size_no_special} needed for vocab_size={vocab_size}; give it more text or a smaller vocab")
        special_tokens = {name: len(mergeable_ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
        enc = tiktoken.Encoding(name="rustbpe", pat_str=tokenizer.get_pattern(),
                                mergeable_ranks=mergeable_ranks, special_tokens=special_tokens)
        return cls(enc, "<|bos|>")

    @classmethod
    def from_directory(cls, tokenizer_dir):
        pickle_path = os.path.join(tokenizer_dir, "tokenizer.pkl")
        if not os.path.exists(pickle_path):
            raise FileNotFoundError(
                f"no tokenizer at {pickle_path}. Train one first: python -m scripts.tok_train")
        with open(pickle_path, "rb") as f:
            return cls(pickle.load(f), "<|bos|>")

    @classmethod
    def from_pretrained(cls, tiktoken_name):
        import tiktoken
        # tiktoken's pretrained encodings use <|endoftext|> as the document delimiter
        return cls(tiktoken.get_encoding(tiktoken_name), "<|endoftext|>")

    def get_vocab_size(self):
        return self.enc.n_vocab

    def get_special_tokens(self):
        return self.enc.special_tokens_set

    def id_to_token(self, id):
        return self.enc.decode([id])

    @lru_cache(maxsize=32)
    def encode_special(self, text):
        try:
            return self.enc.encode_single_token(text)
        except KeyError:
            known = sorted(self.get_special_tokens())
            raise TokenizerError(f"unknown special token {text!r}; known: {known}") from None

    def get_bos_token_id(self):
        return self.bos_token_id

    def encode(self, text, prepend=None, append=None, num_threads=8):
        prefix, suffix = _special_ids(self, prepend), _special_ids(self, append)
        if isinstance(text, str):
            return prefix + self.enc.encode_ordinary(text) + suffix
        if isinstance(text, list):
            return [prefix + row + suffix for row in self.enc.encode_ordinary_batch(text, num_threads=num_threads)]
        raise ValueError(f"Invalid input type: {type(text)}")

    def __call__(self, *args, **kwargs):
        return self.encode(*args, **kwargs)

    def decode(self, ids):
        return self.enc.decode(ids)

    def save(self, tokenizer_dir):
        os.makedirs(tokenizer_dir, exist_ok=True)
        pickle_path = os.path.join(tokenizer_dir, "tokenizer.pkl")
        from nanochat.common import atomic_write  # lazy: importing this module needs no torch
        atomic_write(pickle_path, lambda f: pickle.dump(self.enc, f))
        print(f"Saved tokenizer encoding to {pickle_path}")

    def token_byte_lengths(self):
        """True byte length of every token id (0 for special tokens)."""
        special_ids = {self.encode_special(s) for s in self.get_special_tokens()}
        return [0 if token_id in special_ids else len(self.enc.decode_single_token_bytes(token_id))
                for token_id in range(self.get_vocab_size())]

    def render_conversation(self, conversation, max_tokens=2048):
        """Tokenize a chat conversation into (ids, mask); mask is 1 on the tokens the assistant
        is trained to produce and 0 elsewhere."""
        ids, mask = [], []

        def add(token_ids, mask_value, start=None, end=None):
            if start is not None:
                token_ids = [self.encode_special(start), *token_ids, self.encode_special(end)]
            ids.extend(token_ids)
            mask.extend([mask_value] * len(token_ids))

        add([self.get_bos_token_id()], 0)
        for i, message in enumerate(_normalize_messages(conversation)):
            content = message["content"]
            if message["role"] == "user":
                if not isinstance(content, str):
                    raise ValueError(f"message {i}: user content must be a string, got {type(content).__name__}")
                add(self.encode(content), 0, "<|user_start|>", "<|user_end|>")
                continue
            add([self.encode_special("<|assistant_start|>")], 0)
            for part in _assistant_parts(i, content):
                start, end, mask_value = _ASSISTANT_PARTS[part["type"]]
                add(self.encode(part["text"]), mask_value, start, end)
            add([self.encode_special("<|assistant_end|>")], 1)

        return ids[:max_tokens], mask[:max_tokens]

    def visualize_tokenization(self, ids, mask, with_token_id=False):
        RED, GREEN, RESET, GRAY = "\033[91m", "\033[92m", "\033[0m", "\033[90m"
        return "|".join(f"{GREEN if mask_value == 1 else RED}{self.decode([token_id])}{RESET}"
                        + (f"{GRAY}({token_id}){RESET}" if with_token_id else "")
                        for token_id, mask_value in zip(ids, mask))

    def render_for_completion(self, conversation):
        """Prompt ids for sampling the assistant's reply: the conversation minus its last
        (assistant) message, followed by <|assistant_start|>."""
        messages = conversation["messages"]
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError("render_for_completion needs a conversation whose last message is the assistant's")
        ids, _ = self.render_conversation({**conversation, "messages": messages[:-1]})
        return ids + [self.encode_special("<|assistant_start|>")]


# assistant part type -> (opening special, closing special, mask): the tool's output is given, not predicted
_ASSISTANT_PARTS = {
    "text": (None, None, 1),
    "python": ("<|python_start|>", "<|python_end|>", 1),
    "python_output": ("<|output_start|>", "<|output_end|>", 0),
}


def _assistant_parts(i, content):
    """Message i's assistant content as a checked list of {"type", "text"} parts (a string is one text part)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ValueError(f"message {i}: unknown assistant content type {type(content).__name__}")
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise ValueError(f"message {i}: every assistant part needs a string 'text', got {part!r}")
        if part.get("type") not in _ASSISTANT_PARTS:
            raise ValueError(f"message {i}: unknown assistant part type {part.get('type')!r}")
    return content


def _normalize_messages(conversation):
    """Fold a leading system message into the first user message and check role alternation."""
    messages = conversation.get("messages") if isinstance(conversation, dict) else None
    if not messages:
        raise ValueError(f"conversation has no messages: {str(conversation)[:200]}")
    if messages[0].get("role") == "system":
        if len(messages) < 2 or messages[1].get("role") != "user":
            raise ValueError("a system message must be followed by a user message")
        # a new first message: the caller's conversation is left as it was
        messages = [{**messages[1], "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}, *messages[2:]]
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if message.get("role") != expected:
            raise ValueError(f"message {i} has role {message.get('role')!r}, expected {expected!r} "
                             "(roles must alternate user/assistant, starting with user)")
        if "content" not in message:
            raise ValueError(f"message {i} has no content")
    return messages


def get_tokenizer():
    from nanochat.common import get_base_dir
    return RustBPETokenizer.from_directory(os.path.join(get_base_dir(), "tokenizer"))


def get_token_bytes(device="cpu"):
    import torch
    from nanochat.common import get_base_dir
    path = os.path.join(get_base_dir(), "tokenizer", "token_bytes.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; it is written by tok_train: python -m scripts.tok_train")
    return torch.load(path, map_location=device)


def save_token_bytes(tokenizer, tokenizer_dir):
    import torch

    from nanochat.common import atomic_write
    token_bytes = torch.tensor(tokenizer.token_byte_lengths(), dtype=torch.int32)
    path = os.path.join(tokenizer_dir, "token_bytes.pt")
    atomic_write(path, lambda f: torch.save(token_bytes, f))
    return token_bytes, path

