"""
Save and load training checkpoints, and rebuild a ready model + tokenizer from a stage directory.

A checkpoint for step N in a directory is:
    model_N.pt              model state_dict (rank 0)
    optim_N_rank<R>.pt      [adamw.state_dict(), muon.state_dict()] of rank R (every rank)
    rng_N_rank<R>.pt        RNG state of rank R (optional; written by the training utilities)
    meta_N.json             metadata (rank 0), written LAST, with the id and start time of the run
Every file goes through a temp file, an fsync, an atomic rename and an fsync of the directory, and
the meta file is what makes a checkpoint "there": re-saving a step removes its meta first, so a
crash or a full disk mid-save leaves at most an incomplete step that find_last_step ignores, and
the previous checkpoint stays loadable. The latest checkpoint is the last step of the newest run,
so a later, shorter run under the same tag is not shadowed by an earlier run's later steps.
Files are read with torch.load(weights_only=True): tensors and plain data only, never code.
"""

import glob
import json
import os
import pickle
import re
import time
import uuid

import torch

from nanochat.common import atomic_write, fsync_dir, get_base_dir, print0
from nanochat.gpt import GPT, GPTConfig

# The one registry of checkpoint families: source -> (directory under the base dir, the stage that writes it).
SOURCE_DIRS = {
    "base": ("base_checkpoints", "python -m scripts.base_train"),
    "mid": ("mid_checkpoints", "python -m scripts.mid_train"),
    "sft": ("chatsft_checkpoints", "python -m scripts.chat_sft"),
    "rl": ("chatrl_checkpoints", "python -m scripts.chat_rl"),
}


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read."""


def _model_path(d, step):
    return os.path.join(d, f"model_{step:06d}.pt")


def _meta_path(d, step):
    return os.path.join(d, f"meta_{step:06d}.json")


def _optim_path(d, step, rank):
    return os.path.join(d, f"optim_{step:06d}_rank{rank}.pt")


def _rng_path(d, step, rank):
    return os.path.join(d, f"rng_{step:06d}_rank{rank}.pt")


# one id per process: every checkpoint this training run writes carries it in its meta
RUN_ID = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
RUN_STARTED = time.time()


def _atomic_write(path, write_fn):
    atomic_write(path, write_fn)
    print0(f"Saved {path}")


def _torch_save(obj, path):
    _atomic_write(path, lambda f: torch.save(obj, f))


def invalidate_step(checkpoint_dir, step):
    """Remove step's meta so the step reads as incomplete while its files are rewritten."""
    path = _meta_path(checkpoint_dir, step)
    if os.path.exists(path):
        os.remove(path)
        fsync_dir(checkpoint_dir)


def save_rank_files(checkpoint_dir, step, optimizer_data=None, rank_state=None, rank=0):
    """This rank's optimizer shard and RNG state (each only when given)."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    if optimizer_data is not None:
        _torch_save(optimizer_data, _optim_path(checkpoint_dir, step, rank))
    if rank_state is not None:
        _torch_save(rank_state, _rng_path(checkpoint_dir, step, rank))


def save_checkpoint(checkpoint_dir, step, model_data, optimizer_data, meta_data, rank=0, rank_state=None):
    """
    Write one checkpoint from this process, without talking to other ranks (the original contract:
    code where only rank 0 saves works under torchrun). Rank 0 writes the model and, last, the meta;
    every rank writes its own optimizer shard / RNG state when given. The collective version that
    training stages use (all shards on disk before the meta) is training.save_training_checkpoint.
    """
    if rank == 0:
        invalidate_step(checkpoint_dir, step)
    save_rank_files(checkpoint_dir, step, optimizer_data, rank_state, rank)
    if rank == 0:
        _torch_save(model_data, _model_path(checkpoint_dir, step))
        meta_data = {"run_id": RUN_ID, "run_started": RUN_STARTED, **meta_data}
        text = json.dumps(meta_data, indent=2).encode("utf-8")
        _atomic_write(_meta_path(checkpoint_dir, step), lambda f: f.write(text))


def _load_torch(path, device):
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # any other unpickling failure means a damaged file
        if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
            # a pickle that asks to build objects or call functions
            raise CheckpointError(
                f"refusing to load {path}: it holds objects other than tensors and plain data, which a "
                "checkpoint written by nanochat never does (a tampered or foreign file can run code when "
                "unpickled). Delete it, or re-save it from a source you trust.") from None
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated ({type(e).__name__}: {e}); "
                              "delete that step's files and resume from an earlier step") from e


def _load_meta(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint meta file {path} is corrupt ({e}); "
                              "delete that step's files and resume from an earlier step") from e


def available_steps(checkpoint_dir):
    """Sorted steps that have both a model and a meta file (i.e. finished saving)."""
    steps = []
    for path in glob.glob(os.path.join(checkpoint_dir, "model_*.pt")):
        match = re.search(r"model_(\d+)\.pt$", path)
        if match and os.path.exists(_meta_path(checkpoint_dir, int(match.group(1)))):
            steps.append(int(match.group(1)))
    return sorted(steps)


def load_checkpoint(checkpoint_dir, step, device, load_optimizer=False, rank=0):
    """-> (model_data, optimizer_data or None, meta_data). Missing files name the steps that exist."""
    model_path, meta_path = _model_path(checkpoint_dir, step), _meta_path(checkpoint_dir, step)
    if not (os.path.exists(model_path) and os.path.exists(meta_path)):
        steps = available_steps(checkpoint_dir)
        raise FileNotFoundError(f"no complete checkpoint for step {step} in {checkpoint_dir} "
                                f"(needs {os.path.basename(model_path)} and {os.path.basename(meta_path)}); "
                                + (f"available steps: {steps}" if steps else "no complete checkpoints there"))
    meta_data = _load_meta(meta_path)
    model_data = _load_torch(model_path, device)
    optimizer_data = None
    if load_optimizer:
        optim_path = _optim_path(checkpoint_dir, step, rank)
        if not os.path.exists(optim_path):
            shards = glob.glob(os.path.join(checkpoint_dir, f"optim_{step:06d}_rank*.pt"))
            ranks = sorted(int(m.group(1)) for p in shards if (m := re.search(r"rank(\d+)\.pt$", p)))
            raise FileNotFoundError(f"optimizer shard {optim_path} not found (shards saved for ranks {ranks}); "
                                    "resume with the same number of processes that saved it")
        optimizer_data = _load_torch(optim_path, device)
    return model_data, optimizer_data, meta_data


def saved_world_size(checkpoint_dir, step):
    """How many ranks wrote `step`: from its meta, else from its per-rank files (the original's
    checkpoints have one optimizer shard per rank); None when nothing says."""
    meta_path = _meta_path(checkpoint_dir, step)
    world_size = _load_meta(meta_path).get("world_size") if os.path.exists(meta_path) else None
    if isinstance(world_size, int):
        return world_size
    for pattern in (f"optim_{step:06d}_rank*.pt", f"rng_{step:06d}_rank*.pt"):
        shards = glob.glob(os.path.join(checkpoint_dir, pattern))
        if shards:
            return len(shards)
    return None


def load_rank_state(checkpoint_dir, step, rank=0):
    """The RNG state saved by this rank, or None for checkpoints written without one."""
    path = _rng_path(checkpoint_dir, step, rank)
    if not os.path.exists(path):
        return None
    return _load_torch(path, "cpu")


def build_model(checkpoint_dir, step, device, phase):
    """-> (model, tokenizer, meta) with the raw (uncompiled) model in train or eval mode."""
    from nanochat.tokenizer import get_tokenizer

    assert phase in ("train", "eval"), f"phase must be 'train' or 'eval', got {phase!r}"
    device = torch.device(device)
    model_data, _, meta_data = load_checkpoint(checkpoint_dir, step, device, load_optimizer=False)
    model_config = GPTConfig(**meta_data["model_config"])
    tokenizer = get_tokenizer()
    if tokenizer.get_vocab_size() != model_config.vocab_size:
        raise ValueError(f"tokenizer vocab size {tokenizer.get_vocab_size()} does not match the checkpoint's "
                         f"{model_config.vocab_size} ({checkpoint_dir}); the tokenizer in "
                         f"{os.path.join(get_base_dir(), 'tokenizer')} is not the one this model was trained with")
    print0(f"Building model with config: {model_config}")
    return model_from_state_dict(model_config, model_data, device, phase), tokenizer, meta_data


def model_from_state_dict(model_config, model_data, device, phase="eval"):
    """A GPT on `device` holding `model_data` (bf16 tensors become fp32 on every device), in train or eval mode."""
    device = torch.device(device)
    # the bf16 embedding CUDA training saves would meet fp32 layers under --dtype=float32 (no
    # autocast); an fp32 copy works under either dtype, at the cost of the embedding's memory
    model_data = {key.removeprefix("_orig_mod."): value.float() if value.dtype == torch.bfloat16 else value
                  for key, value in model_data.items()}
    with torch.device("meta"):
        model = GPT(model_config)
    model.to_empty(device=device)
    model.init_weights()  # builds the rotary tables; the weights are replaced just below
    model.load_state_dict(model_data, strict=True, assign=True)
    model.train() if phase == "train" else model.eval()
    return model


def find_largest_model(checkpoint_dir):
    """The subdirectory whose tag starts with d<N> for the largest N (`d20_long` counts as depth 20, like
    the original; the newest of equal depths), else the most recently modified subdirectory."""
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"checkpoint directory {checkpoint_dir} does not exist")
    tags = [f for f in os.listdir(checkpoint_dir) if os.path.isdir(os.path.join(checkpoint_dir, f))]
    if not tags:
        raise FileNotFoundError(f"no model directories in {checkpoint_dir}")
    def mtime(tag):
        return os.path.getmtime(os.path.join(checkpoint_dir, tag))
    depths = [(int(m.group(1)), mtime(tag), tag) for tag in tags if (m := re.match(r"d(\d+)", tag))]
    return max(depths)[2] if depths else max(tags, key=mtime)


def _run_started(checkpoint_dir, step):
    """When the run that wrote `step` started; checkpoints without a run record (the original's) count as oldest."""
    try:
        started = _load_meta(_meta_path(checkpoint_dir, step)).get("run_started")
    except (OSError, CheckpointError):
        return float("-inf")
    return started if isinstance(started, (int, float)) else float("-inf")


def find_last_step(checkpoint_dir):
    """The last complete step of the newest run that saved in `checkpoint_dir`."""
    steps = available_steps(checkpoint_dir)
    if not steps:
        raise FileNotFoundError(f"no complete checkpoints (model_*.pt with its meta_*.json) in {checkpoint_dir}")
    started = {step: _run_started(checkpoint_dir, step) for step in steps}
    newest = max(started.values())
    last = max(step for step in steps if started[step] == newest)
    if last != steps[-1]:
        print0(f"Taking step {last}, the last of the newest run in {checkpoint_dir}; the later steps "
               f"{[s for s in steps if s > last]} are left over from an earlier run (pass the step to load one)")
    return last


def checkpoints_dir_of(source, base_dir=None):
    """<base>/<stage>_checkpoints of a source ("base", "mid", "sft" or "rl")."""
    if source not in SOURCE_DIRS:
        raise ValueError(f"unknown checkpoint source {source!r}; expected one of {sorted(SOURCE_DIRS)}")
    return os.path.join(base_dir or get_base_dir(), SOURCE_DIRS[source][0])


def list_checkpoints(base_dir=None):
    """[(source, tag, step)] of every complete checkpoint under the base dir, sorted."""
    found = []
    for source in SOURCE_DIRS:
        root = checkpoints_dir_of(source, base_dir)
        tags = sorted(os.listdir(root)) if os.path.isdir(root) else []
        for tag in tags:
            if os.path.isdir(os.path.join(root, tag)):
                found.extend((source, tag, step) for step in available_steps(os.path.join(root, tag)))
    return found


def _not_found(checkpoints_dir, wanted=""):
    """FileNotFoundError naming the stage that writes this directory and the checkpoints that do exist."""
    base_dir, name = os.path.split(os.path.normpath(checkpoints_dir))
    writer = next((command for subdir, command in SOURCE_DIRS.values() if subdir == name), None)
    listing = "\n".join(f"  --source={s} --model_tag={t} --step={n}" for s, t, n in list_checkpoints(base_dir))
    return FileNotFoundError(
        f"no checkpoint{wanted} in {checkpoints_dir}" + (f"; it is written by `{writer}`" if writer else "")
        + f". Checkpoints in {base_dir}:\n{listing or '  (none)'}\n"
        "Pick one with --source/--model_tag/--step, or point NANOCHAT_BASE_DIR at another run.")


def resolve_checkpoint(checkpoints_dir, model_tag=None, step=None):
    """(checkpoint_dir, step) under a <stage>_checkpoints directory; a missing tag is guessed as the
    largest model and a missing step as the last complete one (both guesses are logged)."""
    if model_tag is None:
        try:
            model_tag = find_largest_model(checkpoints_dir)
        except FileNotFoundError:
            raise _not_found(checkpoints_dir) from None
        print0(f"No model tag provided, guessing model tag: {model_tag}")
    steps = available_steps(os.path.join(checkpoints_dir, model_tag))
    if step is None and steps:
        step = find_last_step(os.path.join(checkpoints_dir, model_tag))
        print0(f"No model step provided, guessing model step: {step}")
    if step not in steps:
        raise _not_found(checkpoints_dir, f" tag={model_tag}" + (f" step={step}" if step is not None else ""))
    return os.path.join(checkpoints_dir, model_tag), step


def load_model_from_dir(checkpoints_dir, device, phase, model_tag=None, step=None):
    return build_model(*resolve_checkpoint(checkpoints_dir, model_tag, step), device, phase)


def load_model(source, *args, **kwargs):
    """load_model("base"|"mid"|"sft"|"rl", device, phase, model_tag=None, step=None) -> (model, tokenizer, meta)."""
    return load_model_from_dir(checkpoints_dir_of(source), *args, **kwargs)
