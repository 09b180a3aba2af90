"""No lost data: kill -9 in the middle of an episode (while stepping, and while saving it)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from vla.data import ChunkDataset, EpisodeWriter

CHILD = textwrap.dedent(
    """
    import sys, time, pathlib
    import numpy as np
    from vla.data import EpisodeWriter

    root, mode, ready = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
    spec = {"observation.state": (3,), "observation.images.front": (32, 32, 3)}

    def obs(i):
        return {"observation.state": np.full(3, i, np.float32),
                "observation.images.front": np.full((32, 32, 3), 10 * i, np.uint8), "task": "stack"}

    w = EpisodeWriter(root, fps=10, obs_spec=spec, action_dim=2)
    for ep in range(2):
        for i in range(4):
            w.add_step(obs(i), np.array([i, ep], np.float32))
        w.end_episode("demo", seed=ep)
    if mode == "save":
        # stop inside LeRobot's save, after the new data parquet and video are on disk
        from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
        def hang(*a, **k):
            ready.write_text("x")
            time.sleep(600)
        LeRobotDatasetMetadata.save_episode = hang
    for i in range(3):
        w.add_step(obs(i), np.array([i, 9], np.float32))
    if mode == "steps":
        ready.write_text("x")
        time.sleep(600)
    w.end_episode("demo", seed=9)
    """
)


@pytest.mark.parametrize("mode", ["steps", "save"])
def test_kill_9_keeps_closed_episodes(tmp_path, mode):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    root, ready = tmp_path / "ds", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, str(script), str(root), mode, str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not ready.exists():
            assert proc.poll() is None, "child died before the kill"
            assert time.monotonic() < deadline, "child never reached the kill point"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()

    ds = ChunkDataset([root], chunk_len=2)
    assert ds.num_episodes == 2 and len(ds) == 8
    assert set(ds.frames["action"][:, 1].tolist()) == {0.0, 1.0}  # nothing of the broken episode
    assert abs(ds[7]["observation.images.front"].mean().item() * 255 - 30) < 4

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    lr = LeRobotDataset("local/ds", root=root)
    assert lr.num_episodes == 2 and lr.num_frames == 8

    # recording goes on where it stopped
    spec = {"observation.state": (3,), "observation.images.front": (32, 32, 3)}
    with EpisodeWriter(root, fps=10, obs_spec=spec, action_dim=2) as w:
        assert len(w) == 2
        w.add_step({"observation.state": np.zeros(3, np.float32),
                    "observation.images.front": np.zeros((32, 32, 3), np.uint8), "task": "stack"},
                   np.array([0, 5], np.float32))
        assert w.end_episode("demo", seed=5) == 2
    again = ChunkDataset([root], chunk_len=2)
    assert again.num_episodes == 3 and len(again) == 9
