"""Checkpoints: layout, atomic saves, completeness, clear errors, model rebuild."""

import json
import os
import subprocess
import sys

import pytest
import torch

from nanochat import checkpoint_manager as cm
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import save_token_bytes


def tiny_model(vocab_size=265):
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=16, vocab_size=vocab_size, n_layer=1, n_head=1, n_kv_head=1, n_embd=16))
    model.init_weights()
    return model


def save_step(d, step, model=None, rank=0, optim=None):
    model = model or tiny_model()
    meta = {"step": step, "model_config": model.config.__dict__}
    cm.save_checkpoint(d, step, model.state_dict(), optim, meta, rank=rank)
    return model


def test_layout_and_round_trip(tmp_path):
    d = str(tmp_path / "ck")
    model = tiny_model()
    optim = [{"state": {}, "param_groups": [{"lr": 0.1}]}]
    cm.save_checkpoint(d, 7, model.state_dict(), optim, {"step": 7, "model_config": model.config.__dict__},
                       rank=0, rank_state={"x": 1})
    assert sorted(os.listdir(d)) == ["meta_000007.json", "model_000007.pt", "optim_000007_rank0.pt",
                                     "rng_000007_rank0.pt"]
    model_data, optim_data, meta = cm.load_checkpoint(d, 7, "cpu", load_optimizer=True, rank=0)
    assert meta["step"] == 7 and optim_data == optim
    assert all(torch.equal(model_data[k], v) for k, v in model.state_dict().items())
    assert cm.load_rank_state(d, 7, 0) == {"x": 1} and cm.load_rank_state(d, 7, 1) is None
    with open(os.path.join(d, "meta_000007.json")) as f:
        assert json.load(f)["model_config"]["n_embd"] == 16


def test_find_last_step_counts_only_complete_checkpoints(tmp_path):
    d = str(tmp_path)
    save_step(d, 3)
    save_step(d, 10)
    torch.save({}, os.path.join(d, "model_000020.pt"))  # crashed before its meta was written
    open(os.path.join(d, "model_000030.pt.tmp"), "w").close()
    assert cm.available_steps(d) == [3, 10]
    assert cm.find_last_step(d) == 10
    with pytest.raises(FileNotFoundError, match=r"no complete checkpoints .* in "):
        cm.find_last_step(str(tmp_path / "empty"))


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    d = str(tmp_path)
    save_step(d, 1)
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_step(d, 2)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(d)) == ["meta_000001.json", "model_000001.pt"]  # no step 2, no .tmp
    assert cm.find_last_step(d) == 1
    cm.load_checkpoint(d, 1, "cpu")


def test_failed_meta_write_leaves_step_incomplete(tmp_path, monkeypatch):
    d = str(tmp_path)
    save_step(d, 1)
    monkeypatch.setattr(cm.json, "dumps", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        save_step(d, 2)
    assert os.path.exists(os.path.join(d, "model_000002.pt"))
    assert cm.find_last_step(d) == 1


def test_corrupt_files_give_a_clear_error(tmp_path):
    d = str(tmp_path)
    save_step(d, 5)
    path = os.path.join(d, "model_000005.pt")
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(cm.CheckpointError, match=r"model_000005\.pt is corrupt or truncated"):
        cm.load_checkpoint(d, 5, "cpu")
    with open(os.path.join(d, "meta_000005.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(cm.CheckpointError, match=r"meta_000005\.json is corrupt"):
        cm.load_checkpoint(d, 5, "cpu")


def test_missing_step_lists_the_available_ones(tmp_path):
    d = str(tmp_path)
    save_step(d, 4)
    save_step(d, 8)
    with pytest.raises(FileNotFoundError, match=r"step 6 .*available steps: \[4, 8\]"):
        cm.load_checkpoint(d, 6, "cpu")


def test_missing_optimizer_shard_names_the_saved_ranks(tmp_path):
    d = str(tmp_path)
    save_step(d, 2, optim=[{}], rank=0)
    with pytest.raises(FileNotFoundError, match=r"optim_000002_rank1\.pt not found \(shards saved for ranks \[0\]\)"):
        cm.load_checkpoint(d, 2, "cpu", load_optimizer=True, rank=1)


@pytest.mark.parametrize("source,command", [("base", "scripts.base_train"), ("mid", "scripts.mid_train"),
                                            ("sft", "scripts.chat_sft"), ("rl", "scripts.chat_rl")])
def test_load_model_without_checkpoints_names_dir_and_stage(base_dir, source, command):
    with pytest.raises(FileNotFoundError) as e:
        cm.load_model(source, "cpu", phase="eval")
    assert cm.SOURCE_DIRS[source][0] in str(e.value) and command in str(e.value)


def test_find_largest_model(tmp_path):
    for tag in ("d4", "d12", "custom"):
        (tmp_path / tag).mkdir()
    assert cm.find_largest_model(str(tmp_path)) == "d12"


def test_find_largest_model_reads_the_depth_from_the_tag_prefix(tmp_path):
    """As in the original, `d20_long` is a depth-20 model and wins over d12."""
    for tag in ("d12", "d20_long", "d4x"):
        (tmp_path / tag).mkdir()
    assert cm.find_largest_model(str(tmp_path)) == "d20_long"


def test_load_model_rebuilds_the_trained_model(base_dir, byte_tokenizer):
    tok_dir = os.path.join(base_dir, "tokenizer")
    byte_tokenizer.save(tok_dir)
    save_token_bytes(byte_tokenizer, tok_dir)
    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    state = model.state_dict()
    state["transformer.wte.weight"] = state["transformer.wte.weight"].bfloat16()  # as saved on CUDA
    state = {"_orig_mod." + k: v for k, v in state.items()}  # as saved from a compiled model
    d = os.path.join(base_dir, "base_checkpoints", "d1")
    cm.save_checkpoint(d, 3, state, None, {"step": 3, "model_config": model.config.__dict__})
    loaded, tokenizer, meta = cm.load_model("base", "cpu", phase="eval")
    assert meta["step"] == 3 and not loaded.training
    assert loaded.transformer.wte.weight.dtype == torch.float32
    idx = torch.tensor([[256, 72, 105]])
    model.transformer.wte.weight.data = model.transformer.wte.weight.data.bfloat16().float()
    assert torch.allclose(loaded(idx), model(idx))
    with pytest.raises(ValueError, match="vocab size 265 does not match"):
        cm.save_checkpoint(d, 4, {}, None, {"step": 4, "model_config": dict(model.config.__dict__, vocab_size=300)})
        cm.load_model("base", "cpu", phase="eval", step=4)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CodeRunningPickle:
    """Unpickling this calls os.mkdir(path): what a tampered checkpoint would do with worse code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("victim", ["model", "optim", "rng"])
def test_a_checkpoint_that_runs_code_is_refused(tmp_path, victim):
    d = str(tmp_path / "ck")
    model = tiny_model()
    cm.save_checkpoint(d, 1, model.state_dict(), [{"state": {}}], {"step": 1, "model_config": model.config.__dict__},
                       rank_state={"torch": torch.get_rng_state()})
    marker = str(tmp_path / "pwned")
    path = {"model": cm._model_path, "optim": lambda d, s: cm._optim_path(d, s, 0),
            "rng": lambda d, s: cm._rng_path(d, s, 0)}[victim](d, 1)
    torch.save({"payload": CodeRunningPickle(marker)}, path)
    with pytest.raises(cm.CheckpointError, match=r"refusing to load .*holds objects other than tensors"):
        cm.load_checkpoint(d, 1, "cpu", load_optimizer=True)
        cm.load_rank_state(d, 1)
    assert not os.path.exists(marker)


def test_checkpoints_written_the_original_way_still_load(tmp_path):
    """Plain torch.save of the state dicts and a meta without a run record (the original's files)."""
    d = tmp_path / "d4"
    d.mkdir()
    model = tiny_model()
    optimizers = model.setup_optimizers()
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)).backward()
    for opt in optimizers:
        opt.step()
    torch.save(model.state_dict(), d / "model_000007.pt")
    torch.save([opt.state_dict() for opt in optimizers], d / "optim_000007_rank0.pt")
    (d / "meta_000007.json").write_text(json.dumps({"step": 7, "model_config": model.config.__dict__}))
    model_data, optim_data, meta = cm.load_checkpoint(str(d), 7, "cpu", load_optimizer=True)
    assert all(torch.equal(model_data[k], v) for k, v in model.state_dict().items())
    assert optim_data[0]["param_groups"][0]["betas"] == optimizers[0].param_groups[0]["betas"]
    assert cm.find_last_step(str(d)) == 7 and meta["step"] == 7


def test_resaving_a_step_marks_it_incomplete_until_the_new_meta_is_written(tmp_path, monkeypatch):
    d = str(tmp_path / "ck")
    save_step(d, 4)
    save_step(d, 5)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if "model_000005" in getattr(f, "name", ""):
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_step(d, 5, optim=[{"state": {}}])  # the new optimizer shard lands, the model does not
    assert cm.available_steps(d) == [4]  # step 5 is no longer vouched for by its old meta
    assert cm.find_last_step(d) == 4


def test_every_rename_is_made_durable_with_a_directory_fsync(tmp_path, monkeypatch):
    import stat
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode)
                                                               else "file"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))[1])
    save_step(str(tmp_path / "ck"), 1)
    assert events == ["file", "rename", "dir"] * 2  # model, then meta


def save_in_a_new_process(d, steps):
    """Each process is one training run (its own run id)."""
    code = ("import sys; from nanochat import checkpoint_manager as cm\n"
            "for step in map(int, sys.argv[2:]):\n"
            "    cm.save_checkpoint(sys.argv[1], step, {}, None, {'step': step})\n")
    subprocess.run([sys.executable, "-c", code, d] + [str(s) for s in steps], cwd=REPO, check=True)


def test_latest_is_the_last_step_of_the_newest_run(tmp_path):
    """A later, shorter run under the same tag must not be shadowed by the earlier run's later steps."""
    d = str(tmp_path / "ck")
    save_in_a_new_process(d, [100, 200, 300])
    save_in_a_new_process(d, [100, 150])
    assert cm.available_steps(d) == [100, 150, 200, 300]
    assert cm.find_last_step(d) == 150
    metas = [json.load(open(os.path.join(d, f"meta_{s:06d}.json"))) for s in (150, 300)]
    assert metas[0]["run_id"] != metas[1]["run_id"] and metas[0]["run_started"] > metas[1]["run_started"]


def test_public_save_checkpoint_is_not_collective(tmp_path):
    """Written the original way (only rank 0 saves, optimizer data included) it must not wait for rank 1."""
    d = str(tmp_path / "ck")
    script = tmp_path / "rank0_saves.py"
    script.write_text(
        "import os, sys, torch, torch.distributed as dist\n"
        "from nanochat import checkpoint_manager as cm\n"
        "dist.init_process_group('gloo')\n"
        "rank = dist.get_rank()\n"
        "if rank == 0:\n"
        "    cm.save_checkpoint(sys.argv[1], 3, {'w': torch.ones(2)}, [{'state': {}}], {'step': 3}, rank=0)\n"
        "dist.destroy_process_group()\n")
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), d]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-3000:]
    assert cm.find_last_step(d) == 3 and os.path.exists(os.path.join(d, "optim_000003_rank0.pt"))


def test_bf16_tensors_load_as_float32_on_every_device():
    """A CUDA-trained checkpoint keeps its embedding in bf16; loaded for --dtype=float32 (no autocast) it
    would meet fp32 layers, so every bf16 tensor becomes fp32 at load, whatever the device (meta here)."""
    model = tiny_model()
    state = model.state_dict()
    state["transformer.wte.weight"] = state["transformer.wte.weight"].bfloat16()
    loaded = cm.model_from_state_dict(model.config, state, "meta")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    on_cpu = cm.model_from_state_dict(model.config, state, "cpu")
    assert torch.equal(on_cpu.transformer.wte.weight, state["transformer.wte.weight"].float())
