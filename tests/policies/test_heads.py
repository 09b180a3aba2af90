"""VLAPolicy with the flow and diffusion heads: shapes, per-sample loss, caching, save/load, errors."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from policies import VLAPolicy, build_policy, load_policy
from policies.diffusion import DiffusionConfig, DiffusionHead
from policies.flow import FlowConfig, FlowHead
from vla.errors import CheckpointError, ConfigError, DataError, ShapeError
from vla.types import ChunkPolicy

HEADS = ["flow", "diffusion"]
H, DA = 6, 3
TINY = {
    "d_model": 32,
    "n_heads": 2,
    "expert_layers": 2,
    "expert_width": 16,
    "prefix_layers": 1,
    "state_hidden": 32,
    "vision": {"channels": [8, 16], "grid": 2},
    "text": {"max_len": 32},
}
FEATURE_SETS = {
    "state": {"observation.state": (5,)},
    "images": {"observation.images.front": (3, 20, 20)},
    "both": {"observation.state": (5,), "observation.images.front": (3, 20, 20)},
    "two_cameras": {
        "observation.state": (5,),
        "observation.images.front": (3, 20, 20),
        "observation.images.wrist": (3, 16, 16),
    },
}
STATS = {
    "observation.state": {"mean": [0.5] * 5, "std": [2.0] * 5},
    "action": {"mean": [1.0, -1.0, 0.0], "std": [3.0, 0.5, 1.0], "min": [-5] * 3, "max": [5] * 3},
}


def make_policy(head="flow", feats="both", seed=0, **over):
    torch.manual_seed(seed)
    cfg = {
        "head": head,
        "chunk_len": H,
        "model": TINY,
        "flow": {"num_steps": 4},
        "diffusion": {"num_inference_steps": 4},
        **over,
    }
    return build_policy(cfg, {**FEATURE_SETS[feats], "action": (DA,)}, STATS)


def make_batch(feats="both", B=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    batch = {k: torch.rand(B, *s, generator=g) for k, s in FEATURE_SETS[feats].items()}
    batch["task"] = ["pick the cube", "push the puck left", "", "stack"][:B]
    batch["action"] = torch.randn(B, H, DA, generator=g) * 2 + 1
    batch["action_is_pad"] = torch.zeros(B, H, dtype=torch.bool)
    return batch


def randomise(policy, std=0.1):
    """Weights away from adaLN-Zero's zero init, so that every input reaches the output."""
    with torch.no_grad():
        for p in policy.expert.parameters():
            p.add_(torch.randn_like(p) * std)
    return policy


@pytest.mark.parametrize("feats", list(FEATURE_SETS))
@pytest.mark.parametrize("head", HEADS)
def test_shapes_for_both_heads_and_any_inputs(head, feats):
    policy = make_policy(head, feats)
    assert isinstance(policy, ChunkPolicy) and policy.chunk_len == H and policy.action_dim == DA
    batch = make_batch(feats)
    per = policy.loss(batch, reduction="none")
    assert per.shape == (4,) and torch.isfinite(per).all()
    policy.loss(batch).backward()
    policy.eval()
    chunks = policy.sample(policy.encode(batch), n=5)
    assert chunks.shape == (4, 5, H, DA) and torch.isfinite(chunks).all()
    json.dumps(policy.config)  # plain JSON
    assert policy.config["type"] == "vla" and policy.config["head"] == head


@pytest.mark.parametrize("head", HEADS)
def test_per_sample_loss_is_deterministic_at_fixed_noise_and_time(head):
    policy = randomise(make_policy(head)).eval()
    batch = make_batch()
    g = torch.Generator().manual_seed(3)
    noise, t = torch.randn(4, H, DA, generator=g), torch.rand(4, generator=g)
    a = policy.loss(batch, reduction="none", noise=noise, t=t)
    b = policy.loss(batch, reduction="none", noise=noise, t=t)
    assert torch.equal(a, b)
    assert torch.allclose(policy.loss(batch, noise=noise, t=t), a.mean())
    # each row's loss depends on its own sample only
    sub = {k: v[1:3] for k, v in batch.items()}
    assert torch.allclose(policy.loss(sub, reduction="none", noise=noise[1:3], t=t[1:3]), a[1:3], atol=1e-5)
    # and it is a function of (noise, t): other draws give other values
    assert not torch.allclose(policy.loss(batch, reduction="none", noise=noise, t=1 - t), a)
    assert not torch.allclose(policy.loss(batch, reduction="none", noise=-noise, t=t), a)


@pytest.mark.parametrize("head", HEADS)
def test_padded_steps_do_not_affect_the_loss(head):
    policy = randomise(make_policy(head)).eval()
    batch = make_batch()
    batch["action_is_pad"][0, 4:] = True
    batch["action_is_pad"][2, 1:] = True
    noise, t = torch.randn(4, H, DA), torch.full((4,), 0.5)
    base = policy.loss(batch, reduction="none", noise=noise, t=t)
    garbage = {**batch, "action": batch["action"].clone()}
    garbage["action"][0, 4:] = 1e4
    garbage["action"][2, 1:] = -7.0
    assert torch.allclose(policy.loss(garbage, reduction="none", noise=noise, t=t), base, atol=1e-6)
    changed = {**batch, "action": batch["action"].clone()}
    changed["action"][0, 3] += 1.0  # a real step does count
    assert not torch.isclose(policy.loss(changed, reduction="none", noise=noise, t=t)[0], base[0])
    # by default the padded steps are learnt as holding the last action; hold_after_end=false or
    # the batch's action_loss_mask leaves them out
    masked = policy.loss({**batch, "action_loss_mask": ~batch["action_is_pad"]}, reduction="none", noise=noise, t=t)
    assert not torch.allclose(masked[[0, 2]], base[[0, 2]]) and torch.allclose(masked[[1, 3]], base[[1, 3]])
    policy.cfg.hold_after_end = False
    assert torch.allclose(policy.loss(batch, reduction="none", noise=noise, t=t), masked, atol=1e-6)


@pytest.mark.parametrize("head", HEADS)
def test_cached_sampling_equals_recomputing_the_prefix(head):
    policy = randomise(make_policy(head, "two_cameras")).eval()
    batch = make_batch("two_cameras", B=3)
    ctx = policy.encode(batch)
    noise = torch.randn(3, 4, H, DA)
    cached = policy.sample(ctx, 4, noise)
    assert torch.allclose(cached, policy.sample(ctx, 4, noise, use_cache=False), atol=1e-5)
    for j in range(4):  # candidate j alone, from a fresh encoding, gives the same chunk
        one = policy.sample(policy.encode(batch), 1, noise[:, j : j + 1])
        assert torch.allclose(cached[:, j], one[:, 0], atol=1e-5)
    assert cached[:, 0].sub(cached[:, 1]).abs().max() > 1e-3  # candidates differ with their noise


@pytest.mark.parametrize("head", HEADS)
def test_save_then_load_gives_identical_samples(head, tmp_path):
    policy = randomise(make_policy(head, "two_cameras")).eval()
    batch = make_batch("two_cameras")
    noise = torch.randn(4, 2, H, DA)
    expected = policy.sample(policy.encode(batch), 2, noise)
    ckpt = tmp_path / "run/checkpoints/00000010/pretrained_model"
    ckpt.mkdir(parents=True)  # the trainer pre-creates the folder: saving must replace it
    policy.save_pretrained(ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors", "stats.json"]
    assert not [p for p in ckpt.parent.iterdir() if p.name.startswith(".tmp")]
    os.symlink("00000010", tmp_path / "run/checkpoints/last")
    for loaded in (VLAPolicy.from_pretrained(ckpt), load_policy(tmp_path / "run")):
        assert not loaded.training and loaded.config == policy.config
        assert torch.equal(loaded.sample(loaded.encode(batch), 2, noise), expected)
    policy.save_pretrained(ckpt)  # saving over an existing checkpoint works too
    assert torch.equal(load_policy(ckpt).sample(policy.encode(batch), 2, noise), expected)


@pytest.mark.parametrize("head", HEADS)
def test_a_tiny_model_overfits_a_few_chunks(head):
    torch.manual_seed(0)
    B = 4
    state = torch.randn(B, 4)
    actions = torch.cumsum(torch.randn(B, 8, 3) * 0.3, 1) + torch.randn(B, 1, 3)  # smooth chunks
    stats = {
        "observation.state": {"mean": state.mean(0).tolist(), "std": state.std(0).tolist()},
        "action": {
            "mean": actions.reshape(-1, 3).mean(0).tolist(),
            "std": actions.reshape(-1, 3).std(0).tolist(),
        },
    }
    cfg = {
        "head": head,
        "chunk_len": 8,
        "flow": {"num_steps": 10},
        "model": {
            "d_model": 32,
            "n_heads": 2,
            "expert_layers": 2,
            "expert_width": 32,
            "prefix_layers": 0,
            "state_hidden": 64,
            "dropout": 0.0,  # capacity, not regularisation, is under test
            "text": {"type": "none"},
        },
    }
    policy = build_policy(cfg, {"observation.state": (4,), "action": (3,)}, stats)
    train = {"observation.state": state.repeat(8, 1), "action": actions.repeat(8, 1, 1)}
    evalb = {"observation.state": state.repeat(64, 1), "action": actions.repeat(64, 1, 1)}
    g = torch.Generator().manual_seed(1)
    noise, t = torch.randn(B * 64, 8, 3, generator=g), torch.rand(B * 64, generator=g)

    def eval_loss():
        with torch.no_grad():
            return policy.eval().loss(evalb, noise=noise, t=t).item()

    before = eval_loss()
    opt = torch.optim.AdamW(policy.train().parameters(), lr=3e-3)
    for _ in range(300):
        loss = policy.loss(train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < before / 10, (before, after)
    chunks = policy.sample(policy.encode({"observation.state": state}), n=4)
    assert (chunks - actions[:, None]).abs().mean() < 0.25 * actions.abs().mean()


def test_flow_head_math_and_exact_euler_integration():
    head = FlowHead(FlowConfig(num_steps=5))
    a, eps, t = torch.randn(2, 4, 3), torch.randn(2, 4, 3), torch.tensor([0.25, 1.0])
    x, net_t = head.noisy(a, eps, t)
    assert torch.allclose(x[0], 0.25 * eps[0] + 0.75 * a[0]) and torch.equal(x[1], eps[1])
    assert torch.equal(net_t, t) and torch.equal(head.target(a, eps, t), eps - a)
    # the true velocity of the straight path is constant, so Euler lands exactly on a
    oracle = lambda x, t: (x - a) / t[:, None, None]  # noqa: E731
    assert torch.allclose(head.denoise(oracle, eps), a, atol=1e-5)
    assert torch.allclose(head.denoise(oracle, head.renoise(a, eps, 0.4), t_start=0.4), a, atol=1e-5)
    times = head.sample_time(20000, "cpu")
    assert times.min() >= 0.001 and times.max() <= 1.0 and times.mean() > 0.55  # Beta(1.5, 1): towards noise
    with pytest.raises(ConfigError, match="time_sampling"):
        FlowHead(FlowConfig(time_sampling="logit"))


def test_diffusion_head_time_mapping_and_ddim_with_an_oracle():
    head = DiffusionHead(DiffusionConfig())
    T = 100
    assert head.timestep(torch.tensor([0.0, 0.5, 0.999, 1.0])).tolist() == [0, 50, 99, 99]
    a, eps = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    t = torch.tensor([0.0, 0.42, 1.0])
    x, net_t = head.noisy(a, eps, t)
    k = head.timestep(t)
    assert torch.allclose(x, head.train_scheduler.add_noise(a, eps, k), atol=1e-6)
    assert torch.allclose(net_t, k.float() / (T - 1)) and torch.equal(head.target(a, eps, t), eps)

    abar = head.train_scheduler.alphas_cumprod

    def oracle(x, net_t):  # the exact epsilon for the known clean chunk a
        ab = abar[(net_t * (T - 1)).round().long()][:, None, None]
        return (x - ab.sqrt() * a) / (1 - ab).sqrt()

    assert torch.allclose(head.denoise(oracle, eps), a, atol=1e-4)
    assert torch.allclose(head.denoise(oracle, head.renoise(a, eps, 0.5), t_start=0.5), a, atol=1e-4)


@pytest.mark.parametrize("head", HEADS)
def test_sampling_can_start_from_a_chunk_at_partial_noise(head):
    policy = randomise(make_policy(head)).eval()
    batch = make_batch(B=2)
    ctx = policy.encode(batch)
    init, noise = torch.randn(2, 3, H, DA), torch.randn(2, 3, H, DA)
    out = policy.sample(ctx, 3, noise, init=init, t_start=0.5)
    assert out.shape == (2, 3, H, DA)
    assert not torch.allclose(out, policy.sample(ctx, 3, noise))
    # without init, the start is the chunk that normalises to zero (the contract in vla/types.py)
    zero = policy.normalizer.unnormalize("action", torch.zeros(2, 3, H, DA))
    assert torch.allclose(policy.sample(ctx, 3, noise, t_start=0.5),
                          policy.sample(ctx, 3, noise, init=zero, t_start=0.5), atol=1e-5)
    with pytest.raises(ConfigError, match="t_start"):
        policy.sample(ctx, 3, noise, init=init, t_start=0.0)


def test_check_compatible_names_the_feature():
    policy = make_policy("flow", "two_cameras")
    env_like = {
        "observation.state": (5,),
        "observation.images.front": (20, 20, 3),
        "observation.images.wrist": (16, 16, 3),
        "observation.images.extra": (8, 8, 3),
        "action": (3,),
    }
    policy.check_compatible(env_like)  # HWC images and extra cameras are fine
    with pytest.raises(ShapeError, match="observation.state"):
        policy.check_compatible({**env_like, "observation.state": (6,)})
    with pytest.raises(ShapeError, match="observation.images.wrist"):
        policy.check_compatible({k: v for k, v in env_like.items() if "wrist" not in k}, where="the env")
    with pytest.raises(ShapeError, match="observation.images.front"):
        policy.check_compatible({**env_like, "observation.images.front": (3, 24, 24)})
    with pytest.raises(ShapeError, match="action"):
        policy.check_compatible({**env_like, "action": {"shape": [4]}})


def test_build_policy_checks_its_inputs():
    feats = {**FEATURE_SETS["both"], "action": (DA,)}
    only_state = build_policy({"model": TINY, "observation_keys": ["observation.state"]}, feats, STATS)
    assert list(only_state.encoder.features) == ["observation.state"]
    with pytest.raises(ShapeError, match="action"):
        build_policy({"model": TINY}, FEATURE_SETS["both"], STATS)
    with pytest.raises(DataError, match="action"):
        build_policy({"model": TINY}, feats, {"observation.state": STATS["observation.state"]})
    with pytest.raises(ShapeError, match="observation.state"):
        build_policy({"model": TINY}, feats, {**STATS, "observation.state": {"mean": [0.0], "std": [1.0]}})
    with pytest.raises(ConfigError, match="head"):
        build_policy({"model": TINY, "head": "gan"}, feats, STATS)
    with pytest.raises(ConfigError, match="policy.flow.steps"):
        build_policy({"model": TINY, "flow": {"steps": 3}}, feats, STATS)
    with pytest.raises(ShapeError, match="observation.images.side"):
        build_policy({"model": TINY, "observation_keys": ["observation.images.side"]}, feats, STATS)
    policy = build_policy({"model": TINY}, feats, STATS)
    ctx = policy.encode(make_batch())
    with pytest.raises(ShapeError, match="noise"):
        policy.sample(ctx, 2, torch.randn(4, 3, H, DA))
    with pytest.raises(ShapeError, match="action"):
        policy.loss({**make_batch(), "action": torch.randn(4, H + 1, DA)})


def test_bad_checkpoints_give_one_clear_error(tmp_path):
    policy = make_policy("flow", "state")
    good = policy.save_pretrained(tmp_path / "good")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        VLAPolicy.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        VLAPolicy.from_pretrained(tmp_path / "empty")
    with pytest.raises(CheckpointError):
        load_policy(tmp_path / "empty")

    def variant(name, edit):
        d = tmp_path / name
        d.mkdir()
        for f in good.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        edit(d)
        return d

    other = variant("other", lambda d: (d / "config.json").write_text(json.dumps({"type": "aloe"})))
    with pytest.raises(CheckpointError, match="'aloe'"):
        VLAPolicy.from_pretrained(other)
    with pytest.raises(CheckpointError, match="unknown policy checkpoint type 'aloe'"):
        load_policy(other)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        VLAPolicy.from_pretrained(variant("noweights", lambda d: (d / "model.safetensors").unlink()))
    with pytest.raises(CheckpointError, match="stats"):
        VLAPolicy.from_pretrained(variant("nostats", lambda d: (d / "stats.json").unlink()))
    with pytest.raises(CheckpointError, match="unreadable"):
        VLAPolicy.from_pretrained(
            variant("corrupt", lambda d: (d / "model.safetensors").write_bytes(b"\0" * 64))
        )

    def wider(d: Path):
        cfg = json.loads((d / "config.json").read_text())
        cfg["model"]["state_hidden"] = 48
        (d / "config.json").write_text(json.dumps(cfg))

    with pytest.raises(CheckpointError, match="shape"):
        VLAPolicy.from_pretrained(variant("wider", wider))

    def fewer_keys(d: Path):
        state = load_file(str(d / "model.safetensors"))
        save_file(
            {k: v for k, v in state.items() if not k.startswith("expert.blocks.1.")},
            str(d / "model.safetensors"),
        )

    with pytest.raises(CheckpointError, match="missing"):
        VLAPolicy.from_pretrained(variant("fewer", fewer_keys))


@pytest.mark.parametrize("name", ["flow", "diffusion", "tiny"])
def test_hydra_policy_configs_build(name):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[2] / "configs/policy"
    with initialize_config_dir(config_dir=str(root), version_base=None):
        cfg = compose(config_name=name)
    policy = build_policy(
        cfg,
        {"observation.state": (12,), "action": (4,)},
        {
            "observation.state": {"mean": [0.0] * 12, "std": [1.0] * 12},
            "action": {"mean": [0.0] * 4, "std": [1.0] * 4},
        },
    )
    assert policy.cfg.head == ("diffusion" if name == "diffusion" else "flow")
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert policy.config["model"] == plain["model"] and policy.chunk_len == plain["chunk_len"]


def test_load_policy_dispatch_rule(tmp_path):
    from policies import checkpoint_type

    ours = make_policy("flow", "state").save_pretrained(tmp_path / "ours")
    assert checkpoint_type(ours) == "vla"
    wrapped = tmp_path / "wrapped"
    wrapped.mkdir()
    (wrapped / "config.json").write_text(json.dumps({"type": "smolvla"}))
    (wrapped / "vla_adapter.json").write_text(json.dumps({"type": "lerobot", "policy_type": "smolvla"}))
    assert checkpoint_type(wrapped) == "lerobot"
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "config.json").write_text(
        json.dumps({"type": "diffusion", "input_features": {}, "output_features": {}})
    )
    assert checkpoint_type(raw) == "lerobot"
    (raw / "config.json").write_text(json.dumps({"type": "diffusion"}))
    assert checkpoint_type(raw) == "diffusion"  # not a LeRobot config: load_policy refuses it
