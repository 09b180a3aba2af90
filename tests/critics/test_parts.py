"""The critics' building blocks and checkpoints."""

import json

import numpy as np
import pytest
import torch
from chain import TASK_TEXT, Chain

from critics import build_critic, load_critic
from critics.nets import EnsembleLinear, HashedText, random_shift
from vla.errors import CheckpointError


def test_ensemble_linear_is_one_linear_layer_per_member():
    torch.manual_seed(0)
    layer = EnsembleLinear(3, 4, 2)
    x = torch.randn(5, 4)
    out = layer(x)  # a shared input goes to every member
    for e in range(3):
        torch.testing.assert_close(out[e], x @ layer.weight[e] + layer.bias[e])
    assert not torch.allclose(out[0], out[1])


def test_hashed_text_is_stable_and_tells_instructions_apart():
    torch.manual_seed(0)
    a, b = HashedText(8), HashedText(8)
    assert a.ids("Push the block to the red zone") == b.ids("push the block to the RED zone!")
    emb = a(["push the block to the red zone", "push the block to the blue zone", "push the block to the red zone"])
    assert torch.equal(emb[0], emb[2]) and not torch.allclose(emb[0], emb[1])


def test_random_shift_crops_a_padded_copy():
    torch.manual_seed(0)
    img = torch.zeros(16, 3, 9, 9)
    img[:, :, 4, 4] = 1.0  # one bright pixel in the middle
    assert torch.equal(random_shift(img, 0), img)
    out = random_shift(img, 2)
    assert out.shape == img.shape
    ys, xs = (out[:, 0] == 1).nonzero()[:, 1:].T
    assert len(ys) == 16 and (ys - 4).abs().max() <= 2 and (xs - 4).abs().max() <= 2
    assert len({(int(y), int(x)) for y, x in zip(ys, xs, strict=True)}) > 1  # offsets differ per sample


@pytest.mark.parametrize("kind", ["aloe", "calql", "iql"])
def test_save_and_load_round_trip(kind, tmp_path):
    torch.manual_seed(0)
    mdp = Chain()
    critic = build_critic({"type": kind, "chunk_len": 2, "hidden": [16], "encoder": {"dim": 8}},
                          mdp.features(), mdp.stats()).eval()
    for p in critic.target_heads.parameters():  # targets travel too
        p.data.add_(1.0)
    critic.save_pretrained(tmp_path / "c")
    assert json.loads((tmp_path / "c/config.json").read_text())["type"] == kind
    loaded = load_critic(tmp_path / "c")
    obs = {"observation.state": mdp.one_hot([0, 3]), "task": [TASK_TEXT, "another task"]}
    chunks = torch.tensor(np.random.default_rng(0).choice([-1.0, 1.0], (2, 3, 2, 1)), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.q(obs, chunks), critic.q(obs, chunks))
        torch.testing.assert_close(loaded.q_target(obs, chunks), critic.q_target(obs, chunks))
    assert not loaded.training


def test_broken_checkpoints_give_one_clear_error(tmp_path):
    mdp = Chain()
    critic = build_critic({"type": "aloe", "hidden": [16], "encoder": {"dim": 8}}, mdp.features(), mdp.stats())
    critic.save_pretrained(tmp_path / "c")
    cfg = json.loads((tmp_path / "c/config.json").read_text())
    cfg["config"]["hidden"] = [32]  # weights of another architecture
    (tmp_path / "c/config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shapes differ"):
        load_critic(tmp_path / "c")
    (tmp_path / "c/model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights missing"):
        load_critic(tmp_path / "c")
    (tmp_path / "p").mkdir()
    (tmp_path / "p/config.json").write_text(json.dumps({"type": "vla", "head": "flow"}))
    with pytest.raises(CheckpointError, match="not a critic checkpoint"):
        load_critic(tmp_path / "p")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_critic(tmp_path / "missing")


def test_diagnostic_metrics():
    from critics.diagnostics import auroc, metrics, source_group, spearman

    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5  # ties count half
    assert auroc([0.1, 0.2], [1, 1]) is None
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 1, 1, 1], [1, 2, 3, 4]) is None
    assert [source_group(s, h) for s, h in [("demo", False), ("policy:v1", False), ("policy:v1", True),
                                            ("intervention", False)]] == ["demo", "policy", "intervention", "intervention"]
    pred = {"q": np.array([-1.0, -2.0, -3.0, -9.0, -8.0]), "ret": np.array([-1.0, -2.5, -3.0, -10.0, -10.0]),
            "success": np.array([1, 1, 1, 0, 0], bool), "episode": np.array([0, 0, 0, 1, 1]),
            "group": np.array(["demo", "demo", "demo", "policy", "intervention"])}
    m = metrics(pred)
    assert m["chunks"] == 5 and m["episodes"] == 2 and m["auroc_q"] == 1.0
    assert m["by_source"]["demo"]["spearman_q"] == pytest.approx(1.0) and m["by_source"]["demo"]["auroc_q"] is None
    assert m["by_source"]["policy"]["chunks"] == 1 and "v" not in pred and "mean_v" not in m


def test_bootstrap_intervals_resample_whole_episodes():
    from critics.diagnostics import bootstrap_intervals

    rng = np.random.default_rng(0)
    episode = np.repeat(np.arange(40), 5)
    success = np.repeat(rng.random(40) < 0.5, 5)
    ret = np.where(success, 0.0, -10.0) + rng.normal(0, 1, len(episode))
    perfect = {"q": ret.copy(), "ret": ret, "success": success, "episode": episode}
    ci = bootstrap_intervals(perfect, resamples=100)
    assert ci["spearman_q"] == [1.0, 1.0] and ci["auroc_q"] == [1.0, 1.0] and "spearman_v" not in ci
    noisy = {**perfect, "q": ret + rng.normal(0, 8, len(ret)), "v": rng.normal(0, 1, len(ret))}
    ci = bootstrap_intervals(noisy, resamples=100)
    lo, hi = ci["spearman_q"]
    assert 0.0 < lo < hi < 1.0  # an informative but noisy critic: a proper interval
    assert ci["auroc_v"][0] < 0.5 < ci["auroc_v"][1]  # V is noise: chance lies inside its interval
    assert bootstrap_intervals(noisy, resamples=0) == {}
    one_class = {**perfect, "success": np.ones_like(success)}
    assert bootstrap_intervals(one_class, resamples=10)["auroc_q"] is None
