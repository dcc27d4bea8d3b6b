"""
`--key=value` overrides for the training scripts ("poor man's configurator"), as a typed helper:

    cfg = configure(dict(depth=20, run="dummy", model_tag=None))   # reads sys.argv[1:]
    cfg.depth, cfg.user_config()

Rules (kept from the original so existing command lines work):
- an argument without `=` is a Python config file, run with the calling script's globals and the
  current settings in scope; what it assigns overrides keys (`total_batch_size = device_batch_size
  * 2 * 1024` works). Modules, functions, classes and `_private` names are helpers; any other new
  name is an unknown setting;
- otherwise it must be `--key=value` with an existing key; the value is `ast.literal_eval`ed,
  falling back to the raw string, and must have the default's exact type unless the default is
  None (`--lr=1` for a float default is refused: write `--lr=1.0`).
Unlike the original, values may contain `=`, and a lone `--` (left by some launchers) is ignored.
"""

import ast
import inspect
import os
import sys

from nanochat.common import print0


class ConfigError(ValueError):
    pass


class Config:
    """Attribute access over the settings, remembering which keys are user-facing."""

    def __init__(self, values):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, key):
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        if key not in self._values:
            raise AttributeError(f"unknown config key {key!r}")
        self._values[key] = value

    def user_config(self):
        """Settings that are int/float/bool/str (what gets logged, saved in meta and reported)."""
        return {k: v for k, v in self._values.items() if isinstance(v, (int, float, bool, str))}

    def __repr__(self):
        return f"Config({self._values!r})"


def _parse_value(raw):
    try:
        return ast.literal_eval(raw)
    except (SyntaxError, ValueError):
        return raw


def _check_type(key, default, value):
    if default is None or type(value) is type(default):
        return
    int_for_float = isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)
    hint = f" (write --{key}={value}.0)" if int_for_float else ""
    raise ConfigError(f"--{key} expects {type(default).__name__} like its default {default!r}, "
                      f"got {type(value).__name__} {value!r}{hint}")


def _is_helper(value):
    return inspect.ismodule(value) or inspect.isroutine(value) or inspect.isclass(value)


def _apply_file(path, values, defaults, scope, log):
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found (arguments without '=' are config files)")
    with open(path, encoding="utf-8") as f:
        source = f.read()
    log(f"Overriding config with {path}:\n{source}")
    before = {**scope, **values}
    namespace = dict(before)  # one dict, so functions defined in the file see its names too
    exec(compile(source, path, "exec"), namespace)  # a user's own config file, not argv text
    for key, value in namespace.items():
        if key.startswith("_") or (key in before and before[key] is value):
            continue  # private, or left as it was
        if key in values:
            _check_type(key, defaults[key], value)
            values[key] = value
        elif key not in scope and not _is_helper(value):
            raise ConfigError(f"Unknown config key: {key} (in {path}; name helper variables with a leading _)")


def apply_overrides(defaults, argv=None, log=None, scope=None):
    """Return a new dict of settings with the overrides in `argv` applied (`scope`: the names a
    config file may use besides the settings)."""
    argv = sys.argv[1:] if argv is None else argv
    log = print0 if log is None else log
    values = dict(defaults)
    for arg in argv:
        if arg == "--":
            continue
        if "=" not in arg:
            if arg.startswith("--"):
                raise ConfigError(f"argument {arg!r} needs a value: write {arg}=VALUE")
            _apply_file(arg, values, defaults, scope or {}, log)
            continue
        if not arg.startswith("--"):
            raise ConfigError(f"argument {arg!r} must look like --key=value")
        key, raw = arg[2:].split("=", 1)
        if key not in values:
            raise ConfigError(f"Unknown config key: {key} (known keys: {', '.join(sorted(values))})")
        value = _parse_value(raw)
        _check_type(key, defaults[key], value)
        log(f"Overriding: {key} = {value}")
        values[key] = value
    return values


def configure(defaults, argv=None, log=None, scope=None):
    """Settings for a script; config files run with the caller's module globals unless `scope` is given."""
    if scope is None:
        scope = sys._getframe(1).f_globals
    return Config(apply_overrides(defaults, argv, log, scope))
