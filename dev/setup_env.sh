#!/usr/bin/env bash
# Set up the Python environment on a fresh machine and activate it.
# Usage: source dev/setup_env.sh [cpu|gpu]
# Installs uv (through pip) when missing, checks for the Rust toolchain, runs `uv sync`
# (which also compiles the rustbpe tokenizer extension through maturin) and activates .venv.

# shellcheck disable=SC2317  # `return` works when sourced, `exit` when run directly
_nanochat_extra="${1:-cpu}"
_nanochat_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

export PATH="$HOME/.local/bin:$PATH"  # where a user install of uv lands
if ! command -v uv >/dev/null 2>&1; then
    echo "[setup] uv not found: installing it with pip"
    python3 -m pip install --user --quiet uv || python3 -m pip install --quiet uv
fi
if ! command -v uv >/dev/null 2>&1; then
    echo "[setup] could not install uv; see https://docs.astral.sh/uv/ and re-run" >&2
    return 1 2>/dev/null || exit 1
fi

if ! command -v cargo >/dev/null 2>&1; then
    # shellcheck disable=SC1091
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "[setup] the Rust toolchain (cargo) is needed to build the tokenizer." >&2
    echo "[setup] install it with: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y" >&2
    return 1 2>/dev/null || exit 1
fi

(cd "$_nanochat_root" && uv sync --extra "$_nanochat_extra" --group dev) || {
    echo "[setup] uv sync failed (see above)" >&2
    return 1 2>/dev/null || exit 1
}
# shellcheck disable=SC1091
source "$_nanochat_root/.venv/bin/activate"
unset _nanochat_extra _nanochat_root
