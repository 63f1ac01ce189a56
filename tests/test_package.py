"""What importing ablate does before torch loads."""

import os
import subprocess
import sys

SHOW = "import ablate, os, torch; print(os.environ['OMP_WAIT_POLICY'])"


def policy(**env):
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", SHOW], env={**base, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_openmp_waits_passively_unless_the_user_chose_a_policy():
    assert policy() == "PASSIVE"
    assert policy(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
