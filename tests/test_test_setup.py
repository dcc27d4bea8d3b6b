"""The test setup itself: a data pack beside the checkout is found, and a run without one says so."""

import os
import shutil
import subprocess
import sys

from conftest import REPO

PACK_TEST = '''
def test_uses_the_pack(data_pack):
    print("PACK=" + data_pack)
'''


def make_checkout(root):
    """<root>/wt/checkout/tests holding a copy of our conftest and one test that needs the pack."""
    tests = root / "wt" / "checkout" / "tests"
    tests.mkdir(parents=True)
    shutil.copy(os.path.join(REPO, "tests", "conftest.py"), tests / "conftest.py")
    (tests / "test_pack.py").write_text(PACK_TEST)
    return tests.parent


def run_pytest(checkout):
    env = {k: v for k, v in os.environ.items() if k != "NANOCHAT_DATA_PACK"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests"],
                          cwd=checkout, env=env, capture_output=True, text=True, timeout=120)


def test_without_a_pack_the_summary_counts_the_skips(tmp_path):
    out = run_pytest(make_checkout(tmp_path))
    assert "1 test(s) skipped for want of the data pack" in out.stdout, out.stdout


def test_a_pack_in_shared_data_above_the_checkout_is_used(tmp_path):
    pack = tmp_path / "shared" / "data"
    (pack / "corpus").mkdir(parents=True)
    (pack / "README.md").write_text("pack")
    out = run_pytest(make_checkout(tmp_path))
    assert f"PACK={pack}" in out.stdout and "1 passed" in out.stdout, out.stdout
    assert "skipped for want of the data pack" not in out.stdout
