"""One agent per state directory: the flock, the holder's name in the refusal, release."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lifeline.errors import LifelineError
from edge_agent.statelock import LOCK_FILE, StateDirInUse, StateDirLock


def test_a_second_lock_on_one_state_dir_is_refused_naming_the_holder(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateDirLock(state, agent_id="yz-jfb-01"):
        assert (state / LOCK_FILE).read_text().startswith(f"pid={os.getpid()}\n")
        with pytest.raises(StateDirInUse) as refused:
            StateDirLock(state, agent_id="yz-jfb-01").acquire()
        message = str(refused.value)
        assert f"pid {os.getpid()} (agent yz-jfb-01)" in message and str(state) in message
        assert isinstance(refused.value, LifelineError), "the CLI exits 2 on it"
    with StateDirLock(state, agent_id="yz-jfb-01"):  # released: free again
        pass


def test_a_lock_file_left_behind_does_not_block(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text("pid=999999\nhost=elsewhere\n")  # as after kill -9
    with StateDirLock(tmp_path, agent_id="a") as lock:
        assert lock.holder().startswith(f"lifeline agent pid {os.getpid()} (agent a)")


def test_a_state_dir_that_cannot_be_made_is_an_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LifelineError, match="state_dir"):
        StateDirLock(blocker / "state", agent_id="a").acquire()
