"""The typed --key=value override helper."""

import pytest

from nanochat.configurator import ConfigError, apply_overrides, configure
from test_base_train import TINY, train_env  # noqa: F401  (fixture)

DEFAULTS = dict(depth=20, lr=0.02, run="dummy", flag=True, tag=None)


def test_overrides_parse_and_keep_types():
    argv = ["--depth=4", "--lr=0.5", "--run=my_run", "--flag=False", "--tag=[1, 2]"]
    cfg = configure(DEFAULTS, argv, log=lambda m: None)
    assert (cfg.depth, cfg.lr, cfg.run, cfg.flag, cfg.tag) == (4, 0.5, "my_run", False, [1, 2])
    assert cfg.user_config() == {"depth": 4, "lr": 0.5, "run": "my_run", "flag": False}


def test_values_may_contain_equals_and_lone_double_dash_is_ignored():
    values = apply_overrides(DEFAULTS, ["--", "--run=a=b"], log=lambda m: None)
    assert values["run"] == "a=b"


def test_unknown_key_is_refused():
    with pytest.raises(ConfigError, match="Unknown config key: depht"):
        apply_overrides(DEFAULTS, ["--depht=4"], log=lambda m: None)


def test_type_mismatch_explains_the_fix():
    with pytest.raises(ConfigError, match=r"write --lr=1\.0"):
        apply_overrides(DEFAULTS, ["--lr=1"], log=lambda m: None)
    with pytest.raises(ConfigError, match="expects int"):
        apply_overrides(DEFAULTS, ["--depth=abc"], log=lambda m: None)


def test_flag_without_value_and_positional_garbage():
    with pytest.raises(ConfigError, match="needs a value"):
        apply_overrides(DEFAULTS, ["--depth"], log=lambda m: None)
    with pytest.raises(ConfigError, match="not found"):
        apply_overrides(DEFAULTS, ["no_such_config.py"], log=lambda m: None)


def test_config_file(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text("depth = 8\nlr = 0.1\n_private = 3\n")
    values = apply_overrides(DEFAULTS, [str(path), "--depth=6"], log=lambda m: None)
    assert values["depth"] == 6 and values["lr"] == 0.1
    path.write_text("bogus = 1\n")
    with pytest.raises(ConfigError, match="Unknown config key: bogus"):
        apply_overrides(DEFAULTS, [str(path)], log=lambda m: None)


def test_defaults_are_not_mutated():
    apply_overrides(DEFAULTS, ["--depth=1"], log=lambda m: None)
    assert DEFAULTS["depth"] == 20


SCRIPT_HELPER_SCALE = 3  # a module-level name of the "script" calling configure


def test_config_file_runs_with_the_scripts_settings_and_globals_in_scope(tmp_path):
    """Like the original: imports, helper names, the script's globals and the current values all work."""
    path = tmp_path / "cfg.py"
    path.write_text("import math\n"
                    "def double(x):\n    return 2 * x\n"
                    "_half = depth // 2\n"
                    "depth = double(_half) * SCRIPT_HELPER_SCALE\n"
                    "lr = math.sqrt(lr * lr) / 2\n"
                    "tag = [run, depth]\n")
    cfg = configure(DEFAULTS, ["--depth=8", str(path)], log=lambda m: None)
    assert (cfg.depth, cfg.lr, cfg.tag) == (24, 0.01, ["dummy", 24])
    # names that end up set keep the typed check; an unknown plain value is still a typo
    path.write_text("import math\nlr = math.floor(lr)\n")
    with pytest.raises(ConfigError, match="expects float"):
        configure(DEFAULTS, [str(path)], log=lambda m: None)
    path.write_text("depht = depth + 1\n")
    with pytest.raises(ConfigError, match="Unknown config key: depht"):
        configure(DEFAULTS, [str(path)], log=lambda m: None)


def test_base_train_config_file_sees_the_scripts_imports_and_settings(train_env, tmp_path, capsys):  # noqa: F811
    """`python -m scripts.base_train my.py` as in the original: the file uses `torch` (imported by the
    script, not by the file), `import math`, and the current settings."""
    from scripts.base_train import main
    path = tmp_path / "my.py"
    path.write_text("import math\n"
                    "assert torch.get_num_threads() >= 1\n"
                    "total_batch_size = device_batch_size * max_seq_len * int(math.sqrt(4))\n")
    main(TINY + [str(path), "--num_iterations=1", "--eval_every=-1"])
    assert "Total batch size 256 => gradient accumulation steps: 2" in capsys.readouterr().out
