"""A Ray Data actor pool scales out on a real autoscaler (fake nodes) and the nodes go back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "cluster" / "autoscaling_demo.py"


@pytest.mark.slow  # about a minute of fake-node start-up; runs in CI: the design's autoscaled negatives
def test_actor_pool_grows_with_backlog_and_idle_nodes_are_released():
    # Its own process: the demo's driver joins its own cluster, not this session's Ray. 36 s of
    # backlog for one actor: nodes take 6-25 s to join here, and with 24 s the pool once never grew.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(DEMO), "--rows", "36", "--seconds-per-row", "1.0", "--max-size", "3"],
                          capture_output=True, text=True, timeout=420, env=env)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    obs = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert obs["rows_out"] == obs["rows_in"] == 36
    # The pool started at one actor and grew while rows waited; never past max_size.
    assert 1 < obs["actors_used"] <= 3
    assert obs["actor_first_row_s"][-1] > obs["actor_first_row_s"][0]
    # Each one-CPU actor needed a node of its own: the autoscaler added them...
    assert obs["max_alive_worker_nodes"] >= obs["actors_used"] == obs["nodes_used"]
    # ...and released them once the stage was done and they sat idle.
    assert obs["all_nodes_released_s"] is not None and obs["all_nodes_released_s"] > obs["stage_finished_s"]
    assert obs["ok"] and proc.returncode == 0, obs["problems"]
