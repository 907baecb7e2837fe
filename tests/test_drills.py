"""Fault drills come from one environment variable, never from the product's config."""
import pytest

from nightscore import drills
from nightscore.config import ConfigError, load_config

from conftest import LOCAL_CONFIG


def test_drills_are_read_from_the_environment(monkeypatch):
    monkeypatch.delenv(drills.ENV, raising=False)
    assert drills.drill("fail_before_commit") is None
    monkeypatch.setenv(drills.ENV, "kill_actor_after_batches=2, fail_before_commit")
    assert drills.drill("kill_actor_after_batches") == 2 and drills.drill("fail_before_commit") is True
    assert drills.drill("fail_at_epoch") is None
    with pytest.raises(ValueError, match="unknown fault drill"):
        drills.drill("fail_sometimes")


@pytest.mark.parametrize("key", ["train.fail_at_epoch=2", "score.kill_actor_after_batches=2",
                                 "score.fail_before_commit=true"])
def test_no_drill_is_a_config_key(key):
    with pytest.raises(ConfigError):
        load_config(LOCAL_CONFIG, [key])
