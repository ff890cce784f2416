"""The CLI makes idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) unless the user set a policy.

Checked in a fresh interpreter, because the policy only counts when it is set before torch is first imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = (
    "import os, sys, birddet.cli as cli; "
    "assert 'torch' not in sys.modules, 'importing the CLI must not import torch'; "
    "cli._passive_openmp_threads(); print(os.environ.get('OMP_WAIT_POLICY'))"
)


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_cli_sets_passive_openmp_wait_policy_before_torch_unless_user_chose(given: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(REPO)
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
