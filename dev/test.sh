#!/usr/bin/env bash
# Set up the environment and run the default test suite (heavier tests are marked `slow`).
# Extra arguments go to pytest, e.g. `bash dev/test.sh -m slow` or `bash dev/test.sh tests/test_gpt.py`.
# Tests that need the offline data pack read it from $NANOCHAT_DATA_PACK; unset, a shared/data folder
# beside the checkout (or beside one of its parents) is used, and pytest's summary counts the tests
# that skipped for want of a pack.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NANOCHAT_DATA_PACK:-}" ]; then
    dir="$(pwd)"
    while [ "$dir" != "/" ]; do
        dir="$(dirname "$dir")"
        if [ -f "$dir/shared/data/README.md" ] && [ -d "$dir/shared/data/corpus" ]; then
            export NANOCHAT_DATA_PACK="$dir/shared/data"
            echo "using the data pack at $NANOCHAT_DATA_PACK (set NANOCHAT_DATA_PACK to choose another)"
            break
        fi
    done
fi
# shellcheck disable=SC1091
source dev/setup_env.sh cpu

if [ $# -eq 0 ]; then
    set -- -m "not slow"
fi
status=0
python -m pytest "$@" || status=$?
if [ $status -eq 5 ]; then
    echo "pytest collected no tests: treating that as a failure" >&2
    exit 1
fi
exit $status
