"""
Where task datasets come from: Hugging Face when online, the offline data pack when
NANOCHAT_DATA_PACK is set. Both go through `datasets.load_dataset` and give the same row schema,
then the same `.shuffle(seed=42)`. Loaded datasets are cached per process.
"""

import os

from nanochat.common import data_pack_path, get_data_pack_dir, host_reachable

HF_HOST = "https://huggingface.co"


class DatasetUnavailable(FileNotFoundError):
    """The requested dataset split cannot be loaded here (not in the pack, or no network)."""


# (hf_path, config, split) -> file inside the data pack. Anything absent here is not in the pack.
def _pack_file(hf_path, config, split):
    if hf_path == "allenai/ai2_arc" and config in ("ARC-Easy", "ARC-Challenge"):
        return ("arc", config, f"{split}.jsonl")
    if hf_path == "cais/mmlu" and config == "all" and split in ("test", "dev"):
        return ("mmlu", f"{split}.jsonl")
    if hf_path == "openai/gsm8k" and config == "main":
        return ("gsm8k", f"{split}.jsonl")
    if hf_path == "openai/openai_humaneval" and split == "test":
        return ("humaneval", "HumanEval.jsonl.gz")
    if hf_path == "HuggingFaceTB/smol-smoltalk":
        return ("chat", f"{split}.jsonl")
    return None


def pack_file_for(hf_path, config, split):
    """Absolute path of the pack file for this split (None without a pack or when the pack lacks it)."""
    parts = _pack_file(hf_path, config, split)
    if parts is None or get_data_pack_dir() is None:
        return None
    path = data_pack_path(*parts)
    return path if os.path.exists(path) else None


def split_available(hf_path, config, split):
    """Can this split be loaded? With a data pack: only if the pack has it. Without one we assume the
    Hugging Face hub has every split it documents (a real network error surfaces on load)."""
    return get_data_pack_dir() is None or pack_file_for(hf_path, config, split) is not None


_CACHE = {}


def load_task_dataset(hf_path, config, split, shuffle_seed=42):
    """`datasets.Dataset` for (hf_path, config, split), shuffled with the given seed, cached per process."""
    key = (hf_path, config, split, shuffle_seed, get_data_pack_dir())
    if key not in _CACHE:
        ds = _load_from_pack(hf_path, config, split) if get_data_pack_dir() else _load_from_hub(hf_path, config, split)
        _CACHE[key] = ds.shuffle(seed=shuffle_seed) if shuffle_seed is not None else ds
    return _CACHE[key]


def _load_from_pack(hf_path, config, split):
    from datasets import load_dataset
    path = pack_file_for(hf_path, config, split)
    if path is None:
        raise DatasetUnavailable(
            f"The data pack at NANOCHAT_DATA_PACK={get_data_pack_dir()} has no file for {hf_path} "
            f"(config={config!r}, split={split!r}). Use a split the pack has (see its README.md), "
            "or unset NANOCHAT_DATA_PACK to download from Hugging Face."
        )
    return load_dataset("json", data_files=path, split="train")


def _load_from_hub(hf_path, config, split):
    from datasets import load_dataset
    offline_mode = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    if not offline_mode and not host_reachable(HF_HOST):
        raise DatasetUnavailable(
            f"Cannot reach {HF_HOST} to download {hf_path} (config={config!r}, split={split!r}). "
            "For offline use set NANOCHAT_DATA_PACK=<folder of a data pack> (layout in its README.md)."
        )
    try:
        return load_dataset(hf_path, config, split=split) if config else load_dataset(hf_path, split=split)
    except Exception as e:  # re-raised with the way out
        raise DatasetUnavailable(
            f"Loading {hf_path} (config={config!r}, split={split!r}) from Hugging Face failed: {e}. "
            "For offline use set NANOCHAT_DATA_PACK=<folder of a data pack>."
        ) from e
