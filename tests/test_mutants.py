"""dev/mutants.py: its patterns still match the code (fast), and every mutant is killed (slow, minutes)."""

import os
import subprocess
import sys

import pytest

from conftest import REPO

MUTANTS = os.path.join(REPO, "dev", "mutants.py")


def test_every_mutant_pattern_still_matches_once():
    out = subprocess.run([sys.executable, MUTANTS, "--check"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_stale_pattern_is_an_error(tmp_path):
    from dev.mutants import Mutant, check_pattern
    (tmp_path / "code.py").write_text("x = 1\nx = 1\n")
    for pattern, count in (("y = 2", 0), ("x = 1", 2)):
        with pytest.raises(SystemExit, match=f"occurs {count} times"):
            check_pattern(str(tmp_path), Mutant("m", "code.py", pattern, "", ("tests",)))
    assert check_pattern(str(tmp_path), Mutant("m", "code.py", "x = 1\nx", "", ("tests",))) == "x = 1\nx = 1\n"


@pytest.mark.slow
def test_every_mutant_is_killed(data_pack):
    out = subprocess.run([sys.executable, MUTANTS], cwd=REPO, capture_output=True, text=True, timeout=3600)
    print(out.stdout)
    assert out.returncode == 0 and "SURVIVED" not in out.stdout, out.stdout[-4000:] + out.stderr[-2000:]
