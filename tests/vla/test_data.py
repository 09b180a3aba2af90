"""The data layer: writer round trip, chunks at episode ends, returns, labels, LeRobot compatibility."""

import json

import numpy as np
import pytest
import torch

from vla.data import ChunkDataset, EpisodeWriter, compute_stats, make_dataloader, mc_returns, obs_to_batch
from vla.data.returns import pre_takeover_mask, sparse_negative_rewards, takeover_penalties
from vla.errors import DataError, ShapeError

STATE_SPEC = {"observation.state": (3,)}


def _obs(i, task="pick the red cube", image=None):
    obs = {"observation.state": np.array([i, 2 * i, -i], np.float32), "task": task}
    if image is not None:
        obs["observation.images.front"] = image
    return obs


def write_episodes(root, lengths, spec=STATE_SPEC, interventions=None, successes=None, sources=None):
    """Episodes whose action is (frame, episode) so items can be checked by value."""
    with EpisodeWriter(root, fps=10, obs_spec=spec, action_dim=2, use_videos=True) as w:
        for ep, n in enumerate(lengths):
            succ = successes[ep] if successes else True
            for i in range(n):
                img = None
                if "observation.images.front" in spec:
                    img = np.full(spec["observation.images.front"], (40 * i + 10 * ep) % 255, np.uint8)
                last = i == n - 1
                iv = bool(interventions[ep][i]) if interventions else False
                w.add_step(
                    _obs(i, image=img),
                    action=np.array([i, ep], np.float32),
                    policy_action=np.array([i, ep + 100], np.float32) if iv else None,
                    intervention=iv,
                    reward=float(last and succ),
                    success=last and succ,
                    done=last and succ,
                )
            w.end_episode(sources[ep] if sources else "demo", seed=ep)
    return root


def test_round_trip_with_video_and_state(tmp_path):
    spec = {"observation.state": (3,), "observation.images.front": (32, 32, 3)}
    root = write_episodes(tmp_path / "ds", [4, 3], spec=spec)
    ds = ChunkDataset([root], chunk_len=2)
    assert len(ds) == 7 and ds.num_episodes == 2
    assert ds.features == {"observation.state": (3,), "observation.images.front": (3, 32, 32), "action": (2,)}
    item = ds[5]  # episode 1, frame 1
    assert torch.equal(item["action"][0], torch.tensor([1.0, 1.0]))
    assert torch.allclose(item["observation.state"], torch.tensor([1.0, 2.0, -1.0]))
    img = item["observation.images.front"]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    # lossy video: the flat grey level survives within a few levels
    assert abs(img.mean().item() * 255 - 50) < 4
    assert item["task"] == "pick the red cube"


def test_chunks_at_episode_end_pad_and_mask(tmp_path):
    root = write_episodes(tmp_path / "ds", [5, 3])
    ds = ChunkDataset([root], chunk_len=4, gamma=0.5)
    item = ds[3]  # frames 3, 4 then padding
    assert item["action_is_pad"].tolist() == [False, False, True, True]
    # padded steps repeat the last action, rewards are zero there
    assert item["action"][:, 0].tolist() == [3, 4, 4, 4]
    assert item["next.reward"].tolist() == [0, 1, 0, 0]
    assert bool(item["next.done"])
    assert torch.allclose(item["next.observation.state"], torch.tensor([4.0, 8.0, -4.0]))
    first = ds[0]
    assert not first["action_is_pad"].any() and not bool(first["next.done"])
    assert torch.allclose(first["next.observation.state"], torch.tensor([4.0, 8.0, -4.0]))  # t + H = 4
    # a chunk never crosses into the next episode
    assert ds[4]["action"][:, 1].tolist() == [0, 0, 0, 0]
    assert ds[5]["action"][:, 1].tolist() == [1, 1, 1, 1]


def test_mc_returns_hand_computed():
    rewards = np.array([0, 0, 1, 0, 2, 1], np.float32)
    episodes = np.array([0, 0, 0, 1, 1, 1])
    g = mc_returns(rewards, episodes, gamma=0.5)
    assert np.allclose(g, [0.25, 0.5, 1.0, 0 + 0.5 * 2 + 0.25 * 1, 2 + 0.5, 1.0])
    neg = sparse_negative_rewards(np.array([0, 0, 1], bool))
    assert neg.tolist() == [-1, -1, 0]
    assert np.allclose(mc_returns(neg, np.zeros(3), 0.9), [-1.9, -1.0, 0.0])


def test_mc_return_in_dataset_and_vgps_mode(tmp_path):
    root = write_episodes(tmp_path / "ds", [3, 2], successes=[True, False])
    raw = ChunkDataset([root], chunk_len=1, gamma=0.9)
    assert np.allclose(raw.frames["mc_return"], [0.81, 0.9, 1.0, 0.0, 0.0])
    neg = ChunkDataset([root], chunk_len=1, gamma=0.9, reward_mode="sparse_neg")
    assert np.allclose(neg.frames["mc_return"], [-1.9, -1.0, 0.0, -1.9, -1.0])
    assert neg.frames["episode_success"].tolist() == [True] * 3 + [False] * 2


def test_takeover_penalties_rlif():
    iv = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1, 0], bool)
    ep = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    cost = takeover_penalties(iv, ep, 5.0)
    # the policy's step before each takeover; none before a takeover on an episode's first frame
    assert cost.tolist() == [0, -5, 0, 0, -5, 0, 0, 0, 0, 0]
    assert not takeover_penalties(iv, ep, 0.0).any()


def test_intervention_labels(tmp_path):
    iv = [[0, 0, 0, 0, 1, 1, 0, 0, 1, 0]]
    mask = pre_takeover_mask(np.array(iv[0], bool), np.zeros(10), window=2)
    assert mask.astype(int).tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0]
    # windows stop at episode starts
    m2 = pre_takeover_mask(np.array([0, 1, 0, 1], bool), np.array([0, 0, 1, 1]), window=5)
    assert m2.astype(int).tolist() == [1, 0, 1, 0]
    root = write_episodes(tmp_path / "ds", [10], interventions=iv, sources=["policy:base"])
    ds = ChunkDataset([root], chunk_len=3, intervention_window=2)
    assert ds.frames["label.pre_takeover"].astype(int).tolist() == mask.astype(int).tolist()
    assert ds.frames["label.human"].astype(int).tolist() == iv[0]
    item = ds[4]
    assert bool(item["label.human"]) and item["intervention"].tolist() == [True, True, False]
    # the policy's proposal is kept where the human acted
    assert item["policy_action"][0].tolist() == [4, 100] and item["action"][0].tolist() == [4, 0]
    assert item["source"] == "policy:base"


def test_several_datasets_and_dataloader(tmp_path):
    a = write_episodes(tmp_path / "a", [3])
    b = write_episodes(tmp_path / "b", [4], sources=["intervention"])
    ds = ChunkDataset([a, b], chunk_len=2)
    assert len(ds) == 7 and ds.num_episodes == 2
    batch = next(iter(make_dataloader(ds, batch_size=7, shuffle=False)))
    assert batch["action"].shape == (7, 2, 2) and batch["action_is_pad"].shape == (7, 2)
    assert batch["source"][-1] == "intervention" and len(batch["task"]) == 7
    stats = compute_stats(ds)
    assert np.allclose(stats["action"]["max"], [3, 0]) and len(stats["observation.state"]["mean"]) == 3
    # workers give the same items
    batch2 = next(iter(make_dataloader(ds, batch_size=7, shuffle=False, num_workers=1)))
    assert torch.equal(batch["action"], batch2["action"])


def test_dataset_written_by_lerobot_loads_with_defaults(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.state": {"dtype": "float32", "shape": (3,), "names": None},
        "action": {"dtype": "float32", "shape": (2,), "names": None},
    }
    ds = LeRobotDataset.create("local/native", fps=10, features=features, root=tmp_path / "native")
    for i in range(4):
        ds.add_frame({"observation.state": np.full(3, i, np.float32), "action": np.full(2, i, np.float32),
                      "task": "push the block"})
    ds.save_episode()
    ds.finalize()
    chunks = ChunkDataset([tmp_path / "native"], chunk_len=2)
    item = chunks[1]
    assert torch.equal(item["policy_action"], item["action"])
    assert not item["intervention"].any() and item["source"] == "demo"
    assert item["next.reward"].tolist() == [0, 0]
    assert chunks.frames["done"].sum() == 0 and bool(chunks[3]["next.done"])


def test_our_dataset_opens_in_lerobot(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = write_episodes(tmp_path / "ds", [3, 2], interventions=[[0, 1, 0], [0, 0]])
    ds = LeRobotDataset("local/ds", root=root)
    assert ds.num_episodes == 2 and ds.num_frames == 5
    frame = ds[1]
    for key in ("action", "policy_action", "intervention", "next.reward", "next.success", "next.done"):
        assert key in frame
    assert bool(frame["intervention"]) and frame["task"] == "pick the red cube"


def test_writer_resumes_and_records_metadata(tmp_path):
    root = write_episodes(tmp_path / "ds", [2])
    with EpisodeWriter(root, fps=10, obs_spec=STATE_SPEC, action_dim=2) as w:
        assert len(w) == 1
        w.add_step(_obs(0), np.zeros(2))
        w.end_episode("policy:base", seed=7)
        assert len(w) == 2
    journal = [json.loads(x) for x in (root / "meta/vla_episodes.jsonl").read_text().splitlines()]
    assert [(e["source"], e["seed"]) for e in journal] == [("demo", 0), ("policy:base", 7)]


def test_writer_bad_input(tmp_path):
    w = EpisodeWriter(tmp_path / "ds", fps=10, obs_spec=STATE_SPEC, action_dim=2)
    with pytest.raises(ShapeError, match="action shape"):
        w.add_step(_obs(0), np.zeros(3))
    with pytest.raises(DataError, match="NaN"):
        w.add_step(_obs(0), np.array([np.nan, 0]))
    with pytest.raises(ShapeError, match="observation.state"):
        w.add_step({"observation.state": np.zeros(4), "task": "x"}, np.zeros(2))
    with pytest.raises(DataError, match="source"):
        w.add_step(_obs(0), np.zeros(2))
        w.end_episode("robot")
    with pytest.raises(ShapeError, match="too small"):
        EpisodeWriter(tmp_path / "v", fps=10, obs_spec={"observation.images.front": (16, 16, 3)}, action_dim=2)
    # resuming with other shapes is refused, naming the column
    with pytest.raises(ShapeError, match="observation.state"):
        EpisodeWriter(tmp_path / "ds", fps=10, obs_spec={"observation.state": (5,)}, action_dim=2)


def test_chunk_dataset_bad_input(tmp_path):
    with pytest.raises(DataError, match="no LeRobot dataset"):
        ChunkDataset([tmp_path / "missing"], chunk_len=2)
    root = write_episodes(tmp_path / "ds", [2])
    with pytest.raises(DataError, match="lacks column 'observation.images.wrist'"):
        ChunkDataset([root], chunk_len=2, obs_keys=["observation.images.wrist"])
    other = tmp_path / "other"
    with EpisodeWriter(other, fps=10, obs_spec={"observation.state": (4,)}, action_dim=2) as w:
        w.add_step({"observation.state": np.zeros(4), "task": "x"}, np.zeros(2))
        w.end_episode("demo")
    with pytest.raises(ShapeError, match="observation.state"):
        ChunkDataset([root, other], chunk_len=2)


def test_obs_to_batch_layout():
    img = np.zeros((32, 40, 3), np.uint8)
    img[..., 0] = 255
    batch = obs_to_batch([_obs(1, image=img), _obs(2, task="b", image=img)])
    assert batch["observation.state"].shape == (2, 3)
    assert batch["observation.images.front"].shape == (2, 3, 32, 40)
    assert batch["observation.images.front"][:, 0].min() == 1.0 and batch["task"] == ["pick the red cube", "b"]


def test_readers_leave_a_live_writer_alone_and_writers_exclude_each_other(tmp_path):
    root = write_episodes(tmp_path / "ds", [3])
    journal = (root / "meta/vla_episodes.jsonl").read_text()
    w = EpisodeWriter(root, fps=10, obs_spec=STATE_SPEC, action_dim=2)
    try:
        with pytest.raises(DataError, match="another writer holds"):
            EpisodeWriter(root, fps=10, obs_spec=STATE_SPEC, action_dim=2)
        w.add_step(_obs(0), np.zeros(2))
        w.end_episode("demo", seed=1)
        assert ChunkDataset([root], chunk_len=2).num_episodes == 2  # opening while the writer lives
        assert (root / "meta/vla_episodes.jsonl").read_text().startswith(journal)
    finally:
        w.close()
    with EpisodeWriter(root, fps=10, obs_spec=STATE_SPEC, action_dim=2) as again:
        assert len(again) == 2
