"""Fault drills, for the tests only: switched on by one environment variable, never by config.

    NIGHTSCORE_FAULT_DRILL="fail_at_epoch=2"             a training worker dies once in epoch 2
    NIGHTSCORE_FAULT_DRILL="kill_actor_after_batches=2"  a scoring actor dies once after 2 batches
    NIGHTSCORE_FAULT_DRILL="fail_before_commit"          scoring stops after writing, before the manifest

The driver reads it and hands the value to the workers or actors that act on it, so it works
against a Ray cluster that was started before the variable was set.
"""
from __future__ import annotations

import os

ENV = "NIGHTSCORE_FAULT_DRILL"
DRILLS = ("fail_at_epoch", "kill_actor_after_batches", "fail_before_commit")


def drill(name: str) -> int | bool | None:
    """The named drill's setting: its number, True for a bare name, None when it is off."""
    if name not in DRILLS:
        raise ValueError(f"unknown fault drill {name!r}; known: {DRILLS}")
    for item in os.environ.get(ENV, "").split(","):
        key, _, value = item.strip().partition("=")
        if key == name:
            return int(value) if value else True
    return None
