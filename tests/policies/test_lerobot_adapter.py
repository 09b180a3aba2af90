"""The LeRobot adapter on tiny LeRobot policies that the tests build and save offline.

Diffusion and SmolVLA are built from their configs alone (SmolVLA's VLM backbone from a tiny local
SmolVLM config and word-level tokenizer). pi0 / pi0.5 hard-code PaliGemma sizes, so their tests
patch the size tables and the tokenizer name while building and loading (see ``tiny_pi``).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from policies.lerobot_adapter import LeRobotChunkPolicy, is_lerobot_checkpoint, resolve_lerobot_checkpoint
from vla.errors import CheckpointError, ConfigError, DataError, ShapeError
from vla.types import ChunkPolicy

pytest.importorskip("lerobot")
import tiny_lerobot  # noqa: E402  (tests/tiny_lerobot.py)

DS, DA, IMG = 4, 2, 32
ACT_LO, ACT_HI = torch.tensor([10.0, -1.0]), torch.tensor([20.0, 1.0])


def _stats(lo: torch.Tensor, hi: torch.Tensor) -> dict:
    return {"min": lo, "max": hi, "mean": (lo + hi) / 2, "std": (hi - lo) / 4, "q01": lo, "q99": hi}


STATS = {"observation.state": _stats(-torch.ones(DS), torch.ones(DS)), "action": _stats(ACT_LO, ACT_HI),
         "observation.images.front": {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25),
                                      "min": torch.zeros(3, 1, 1), "max": torch.ones(3, 1, 1)}}
FEATURES = {"observation.state": (DS,), "observation.images.front": (3, IMG, IMG), "action": (DA,)}


def _batch(B: int, H: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"observation.state": torch.randn(B, DS, generator=g),
            "observation.images.front": torch.rand(B, 3, IMG, IMG, generator=g),
            "task": ["pick the red cube", "place the blue cube", "pick the cube"][:B] + ["pick"] * max(0, B - 3),
            "action": ACT_LO + (ACT_HI - ACT_LO) * torch.rand(B, H, DA, generator=g),
            "action_is_pad": torch.zeros(B, H, dtype=torch.bool)}


def _obs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k.startswith("observation.") or k == "task"}


# --- diffusion -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diffusion_dir(tmp_path_factory):
    return tiny_lerobot.build_diffusion(FEATURES, STATS, tmp_path_factory.mktemp("lerobot_diffusion"))


@pytest.fixture(scope="module")
def diffusion(diffusion_dir):
    return LeRobotChunkPolicy.from_pretrained(diffusion_dir)


def test_diffusion_is_a_chunk_policy_with_lerobot_sizes(diffusion):
    assert isinstance(diffusion, ChunkPolicy)
    # horizon 8 starting one step in the past (n_obs_steps=2): 7 actions from now on
    assert (diffusion.chunk_len, diffusion.action_dim) == (7, DA)
    assert diffusion.config["type"] == "lerobot" and diffusion.config["policy_type"] == "diffusion"
    assert sum(p.numel() for p in diffusion.parameters()) > 0


def test_diffusion_samples_raw_chunks_and_fixed_noise_fixes_them(diffusion):
    ctx = diffusion.encode(_obs(_batch(2, 7)))
    noise = torch.randn(2, 3, 7, DA, generator=torch.Generator().manual_seed(1))
    a = diffusion.sample(ctx, n=3, noise=noise)
    assert a.shape == (2, 3, 7, DA)
    # clip_sample keeps normalised samples in [-1, 1]; raw ones land in the action's [min, max]
    assert (a >= ACT_LO - 1e-4).all() and (a <= ACT_HI + 1e-4).all() and (a[..., 0] > 5).all()
    assert torch.equal(a, diffusion.sample(ctx, n=3, noise=noise.clone()))
    assert not torch.allclose(a, diffusion.sample(ctx, n=3, noise=noise + 1.0))
    assert not torch.allclose(a[:, 0], a[:, 1])  # candidates differ
    assert diffusion.sample(ctx, n=5).shape == (2, 5, 7, DA)
    with pytest.raises(ShapeError, match="noise"):
        diffusion.sample(ctx, n=3, noise=torch.randn(2, 3, 6, DA))


def test_diffusion_sample_matches_lerobot_predict_action_chunk(diffusion_dir):
    from diffusers import DDIMScheduler

    adapter = LeRobotChunkPolicy.from_pretrained(diffusion_dir)
    d = adapter.policy.diffusion
    d.noise_scheduler = DDIMScheduler.from_config(d.noise_scheduler.config)  # deterministic steps
    obs = _obs(_batch(2, 7))
    full_noise = torch.randn(2, 1, 8, DA, generator=torch.Generator().manual_seed(3))  # model's own shape
    ours = adapter.sample(adapter.encode(obs), n=1, noise=full_noise)[:, 0]
    lb = adapter.preprocessor({k: v for k, v in obs.items()})
    hist = {k: torch.stack([lb[k], lb[k]], dim=1) for k in ("observation.state", "observation.images.front")}
    adapter.policy.reset()
    theirs = adapter.postprocessor(adapter.policy.predict_action_chunk(hist, noise=full_noise[:, 0]))
    assert torch.allclose(ours[:, :4], theirs, atol=1e-5)  # LeRobot keeps n_action_steps=4 of them


def _check_partial(adapter: LeRobotChunkPolicy, H: int, close: float):
    """sample(init=, t_start=): from a chunk noised a little, denoising ends near that chunk (through
    the policy's own normalisation and, for pi0 here, relative actions); fixed noise fixes it."""
    obs = _obs(_batch(2, H, seed=5))
    ctx = adapter.encode(obs)
    g = torch.Generator().manual_seed(4)
    init = (ACT_LO + (ACT_HI - ACT_LO) * (0.25 + 0.5 * torch.rand(2, 3, H, DA, generator=g)))
    noise = torch.randn(2, 3, H, DA, generator=g)
    near = adapter.sample(ctx, n=3, noise=noise, init=init, t_start=0.005)
    assert near.shape == (2, 3, H, DA)
    assert ((near - init).abs() / (ACT_HI - ACT_LO)).max() < close
    far = adapter.sample(ctx, n=3, noise=noise, init=init, t_start=0.9)
    assert ((far - init).abs() / (ACT_HI - ACT_LO)).max() > close  # started from mostly noise
    assert torch.equal(far, adapter.sample(ctx, n=3, noise=noise.clone(), init=init.clone(), t_start=0.9))
    # without init, below t = 1 it starts from the normalised zero chunk; t = 1 is plain sampling
    assert adapter.sample(ctx, n=3, noise=noise, t_start=0.5).shape == (2, 3, H, DA)
    if adapter.policy_type != "diffusion":
        assert torch.allclose(adapter.sample(ctx, n=3, noise=noise, init=init, t_start=1.0),
                              adapter.sample(ctx, n=3, noise=noise), atol=1e-5)
    with pytest.raises(ShapeError, match="init"):
        adapter.sample(ctx, n=3, noise=noise, init=init[:, :2], t_start=0.5)
    with pytest.raises(ConfigError, match="t_start"):
        adapter.sample(ctx, n=3, noise=noise, init=init, t_start=0.0)
    assert adapter.execute_steps <= adapter.chunk_len and set(adapter.features) >= {"action", "observation.state"}
    t = adapter.sample_time(64, "cpu")
    assert t.shape == (64,) and 0 <= float(t.min()) and float(t.max()) <= 1


def test_diffusion_partial_denoising(diffusion):
    _check_partial(diffusion, H=7, close=0.05)


def test_diffusion_loss_per_sample_deterministic_and_masked(diffusion):
    batch = _batch(3, 7)
    noise, t = torch.randn(3, 7, DA), torch.tensor([0.1, 0.5, 0.9])
    per = diffusion.loss(batch, reduction="none", noise=noise, t=t)
    assert per.shape == (3,) and torch.isfinite(per).all()
    assert torch.equal(per, diffusion.loss(batch, reduction="none", noise=noise.clone(), t=t.clone()))
    assert len(set(per.tolist())) == 3
    assert torch.allclose(diffusion.loss(batch, noise=noise, t=t), per.mean())
    padded = dict(batch, action_is_pad=torch.tensor([[False] * 5 + [True] * 2] * 3))
    assert not torch.allclose(per, diffusion.loss(padded, "none", noise, t))  # padding is masked out
    with pytest.raises(ShapeError, match="t must be"):
        diffusion.loss(batch, "none", noise, torch.rand(2))


def test_diffusion_loss_matches_lerobot_compute_loss(diffusion):
    """Same eps and timesteps as LeRobot's own forward (with its padding mask on) -> same loss."""
    p = diffusion.policy
    batch = _batch(3, 7)
    batch["action_is_pad"][:, 5:] = True  # the same count per sample, so batch and sample means agree
    lb = diffusion.preprocessor({k: v for k, v in batch.items()})
    hist = {k: torch.stack([lb[k], lb[k]], dim=1) for k in ("observation.state", "observation.images.front")}
    hist["action"] = torch.cat([lb["action"][:, :1], lb["action"]], dim=1)
    hist["action_is_pad"] = torch.cat([torch.ones(3, 1, dtype=torch.bool), lb["action_is_pad"]], dim=1)
    p.config.do_mask_loss_for_padding = True
    try:
        torch.manual_seed(7)
        theirs, _ = p.forward(hist)
    finally:
        p.config.do_mask_loss_for_padding = False
    torch.manual_seed(7)
    eps = torch.randn(3, 8, DA)
    steps = torch.randint(0, p.config.num_train_timesteps, (3,))
    ours = diffusion.loss(batch, reduction="mean", noise=eps, t=steps)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_diffusion_loss_trains_and_sampling_keeps_train_mode(diffusion_dir):
    adapter = LeRobotChunkPolicy.from_pretrained(diffusion_dir).train()
    adapter.sample(adapter.encode(_obs(_batch(1, 7))), n=2)
    assert adapter.policy.training
    loss = adapter.loss(_batch(2, 7))
    loss.backward()
    assert all(p.grad is not None for p in adapter.policy.diffusion.unet.parameters() if p.requires_grad)


def test_save_reload_and_dispatch_rule(diffusion, diffusion_dir, tmp_path):
    out = tmp_path / "ckpt"
    diffusion.save_pretrained(out)
    diffusion.save_pretrained(out)  # overwriting an existing checkpoint works
    assert json.loads((out / "vla_adapter.json").read_text())["policy_type"] == "diffusion"
    again = LeRobotChunkPolicy.from_pretrained(out)
    obs, noise = _obs(_batch(2, 7)), torch.randn(2, 2, 7, DA)
    assert torch.equal(diffusion.sample(diffusion.encode(obs), 2, noise), again.sample(again.encode(obs), 2, noise))
    assert is_lerobot_checkpoint(out) and is_lerobot_checkpoint(diffusion_dir)  # ours and a plain LeRobot dir
    ours = tmp_path / "vla"
    ours.mkdir()
    (ours / "config.json").write_text(json.dumps({"type": "vla", "input_features": {}, "output_features": {}}))
    assert not is_lerobot_checkpoint(ours) and not is_lerobot_checkpoint(tmp_path / "missing")
    run = tmp_path / "run" / "checkpoints" / "last"
    run.mkdir(parents=True)
    (run / "pretrained_model").symlink_to(out, target_is_directory=True)
    assert resolve_lerobot_checkpoint(tmp_path / "run") == run / "pretrained_model"


def test_clear_errors(diffusion, diffusion_dir, tmp_path):
    with pytest.raises(CheckpointError, match="no LeRobot checkpoint"):
        LeRobotChunkPolicy.from_pretrained(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((diffusion_dir / "config.json").read_text())
    (partial / "model.safetensors").write_bytes((diffusion_dir / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="policy_preprocessor.json"):
        LeRobotChunkPolicy.from_pretrained(partial)
    batch = _batch(2, 7)
    with pytest.raises(DataError, match="observation.images.front"):
        diffusion.encode({"observation.state": batch["observation.state"], "task": batch["task"]})
    with pytest.raises(ShapeError, match="action"):
        diffusion.loss(dict(batch, action=batch["action"][:, :5]))
    with pytest.raises(ConfigError, match="reduction"):
        diffusion.loss(batch, reduction="sum")
    diffusion.check_compatible({"observation.state": (DS,), "observation.images.front": (IMG, IMG, 3),
                                "action": (DA,)})
    with pytest.raises(ShapeError, match="observation.state"):
        diffusion.check_compatible({"observation.state": (DS + 1,), "observation.images.front": (3, IMG, IMG),
                                    "action": (DA,)})
    with pytest.raises(ShapeError, match="observation.images.front"):
        diffusion.check_compatible({"observation.state": (DS,), "action": (DA,)})


def test_rename_map_feeds_our_camera_names_to_the_policy(diffusion, diffusion_dir):
    renamed = LeRobotChunkPolicy.from_pretrained(diffusion_dir, rename_map={"observation.images.cam": "observation.images.front"})
    assert "observation.images.cam" in renamed.config["features"]
    obs = _obs(_batch(2, 7))
    ours = {("observation.images.cam" if k == "observation.images.front" else k): v for k, v in obs.items()}
    noise = torch.randn(2, 1, 7, DA)
    assert torch.equal(renamed.sample(renamed.encode(ours), 1, noise), diffusion.sample(diffusion.encode(obs), 1, noise))
    with pytest.raises(DataError, match="observation.images.cam"):
        renamed.encode(obs)


def test_weights_that_do_not_load_fail_loudly(diffusion_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in diffusion_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    state = load_file(str(bad / "model.safetensors"))
    save_file({f"renamed.{k}": v for k, v in state.items()}, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="matches"):
        LeRobotChunkPolicy.from_pretrained(bad)


def test_other_lerobot_types_work_where_they_can_and_say_where_not(tmp_path):
    """ACT has no noise and no per-sample loss: sampling and the mean loss work, the rest fails clearly."""
    act = LeRobotChunkPolicy.from_pretrained(tiny_lerobot.build_act(FEATURES, STATS, tmp_path / "act"))
    assert (act.chunk_len, act.action_dim) == (4, DA)
    batch = _batch(2, 4)
    ctx = act.encode(_obs(batch))
    assert act.sample(ctx, n=2).shape == (2, 2, 4, DA)
    with pytest.raises(ConfigError, match="noise") as e:
        act.sample(ctx, n=2, noise=torch.randn(2, 2, 4, DA))
    assert "re-ranking" in str(e.value) and "evaluate.py" in str(e.value)  # which commands it serves
    with pytest.raises(ConfigError, match="start chunk"):
        act.sample(ctx, n=2, init=torch.zeros(2, 2, 4, DA), t_start=0.5)
    assert act.execute_steps == 4 and not act.generative
    assert act.loss(batch).ndim == 0
    with pytest.raises(ConfigError, match="per-sample"):
        act.loss(batch, reduction="none")
    with pytest.raises(ConfigError, match="caller-given noise"):
        act.loss(batch, reduction="none", noise=torch.randn(2, 4, DA), t=torch.rand(2))


# --- SmolVLA (flow matching, config-driven: a tiny local SmolVLM backbone) ------------------------
@pytest.fixture(scope="module")
def smolvla_dir(tmp_path_factory):
    pytest.importorskip("num2words")  # SmolVLMProcessor needs it (lerobot[smolvla] extra)
    return tiny_lerobot.build_smolvla(FEATURES, STATS, tmp_path_factory.mktemp("lerobot_smolvla"),
                                      tmp_path_factory.mktemp("smolvlm"))


def _check_flow_policy(adapter: LeRobotChunkPolicy, H: int, full_dim: int):
    """Shared checks for the flow family: shapes, fixed noise, loss equal to LeRobot's own."""
    assert isinstance(adapter, ChunkPolicy) and (adapter.chunk_len, adapter.action_dim) == (H, DA)
    batch = _batch(3, H)
    ctx = adapter.encode(_obs(batch))
    noise = torch.randn(3, 2, H, DA)
    a = adapter.sample(ctx, n=2, noise=noise)
    assert a.shape == (3, 2, H, DA) and torch.isfinite(a).all()
    assert torch.equal(a, adapter.sample(ctx, n=2, noise=noise.clone()))
    assert not torch.allclose(a, adapter.sample(ctx, n=2, noise=-noise))
    # with the model's own padded noise, candidates equal LeRobot's predict_action_chunk
    full = torch.randn(3, 1, H, full_dim)
    theirs = adapter.postprocessor(adapter.policy.predict_action_chunk(dict(ctx.batch), noise=full[:, 0]))
    assert torch.allclose(adapter.sample(ctx, n=1, noise=full)[:, 0], theirs, atol=1e-5)
    # per-sample loss at fixed (noise, t), and equal to LeRobot's forward at the same draws
    eps, t = torch.randn(3, H, DA), torch.tensor([0.2, 0.5, 0.8])
    per = adapter.loss(batch, reduction="none", noise=eps, t=t)
    assert per.shape == (3,) and len(set(per.tolist())) == 3
    assert torch.equal(per, adapter.loss(batch, reduction="none", noise=eps.clone(), t=t.clone()))
    lb = adapter.preprocessor(dict(batch))
    torch.manual_seed(11)
    theirs_loss = adapter.policy.forward(lb, reduction="none")[0]
    torch.manual_seed(11)
    draw_eps = adapter.policy.model.sample_noise((3, H, full_dim), "cpu")
    draw_t = adapter.policy.model.sample_time(3, "cpu")
    assert torch.allclose(adapter.loss(batch, "none", noise=draw_eps, t=draw_t), theirs_loss, atol=1e-6)
    # AWM/APO's frozen reference is a deep copy evaluated at the same (noise, t)
    assert torch.equal(copy.deepcopy(adapter).loss(batch, "none", noise=eps, t=t), per)
    adapter.train()
    adapter.loss(batch, noise=eps, t=t).backward()
    assert any(p.grad is not None for p in adapter.parameters())


def test_smolvla_adapter(smolvla_dir, tmp_path):
    adapter = LeRobotChunkPolicy.from_pretrained(smolvla_dir)
    _check_flow_policy(adapter, H=4, full_dim=8)
    _check_partial(adapter.eval(), H=4, close=0.05)
    adapter.save_pretrained(tmp_path / "smolvla")
    again = LeRobotChunkPolicy.from_pretrained(tmp_path / "smolvla")
    obs, noise = _obs(_batch(2, 4)), torch.randn(2, 3, 4, DA)
    assert torch.equal(adapter.sample(adapter.encode(obs), 3, noise), again.sample(again.encode(obs), 3, noise))
    with pytest.raises(DataError, match="instruction"):
        adapter.encode({k: v for k, v in obs.items() if k != "task"})


# --- pi0 / pi0.5 (PaliGemma sizes are hard-coded in LeRobot: patched here to a tiny model) ---------
@pytest.fixture(scope="module", params=["pi0", "pi05"])
def tiny_pi(request, tmp_path_factory):
    """A tiny pi0 / pi0.5 (pi0 with relative actions); the size patches stay active while the tests use
    it (LeRobot rebuilds the model when loading)."""
    kind = request.param
    tok_dir = tmp_path_factory.mktemp("tiny_tokenizer")
    tiny_lerobot.tokenizer_dir(tok_dir)
    with tiny_lerobot.pi_patches(kind, tok_dir):
        yield kind, tiny_lerobot.build_pi(kind, FEATURES, STATS, tmp_path_factory.mktemp(f"lerobot_{kind}"))


def test_pi_family_adapter(tiny_pi, tmp_path):
    kind, directory = tiny_pi
    adapter = LeRobotChunkPolicy.from_pretrained(directory)
    assert adapter.policy_type == kind
    _check_flow_policy(adapter, H=4, full_dim=8)
    _check_partial(adapter.eval(), H=4, close=0.05)
    # pi0's own loss ignores action_is_pad; the adapter averages the error over real steps only
    adapter.eval()
    batch, eps, t = _batch(2, 4), torch.randn(2, 4, 8), torch.tensor([0.3, 0.6])
    batch["action_is_pad"][0, 2:] = True
    p, lb = adapter.policy, adapter.preprocessor(dict(batch))
    images, img_masks = p._preprocess_images(lb)
    state = (p.prepare_state(lb),) if kind == "pi0" else ()
    err = p.model.forward(images, img_masks, lb["observation.language.tokens"],
                          lb["observation.language.attention_mask"], *state, p.prepare_action(lb), eps, t)[..., :DA]
    expected = torch.stack([err[0, :2].mean(), err[1].mean()])
    assert torch.allclose(adapter.loss(batch, "none", eps, t), expected, atol=1e-6)
    # relative actions are made absolute with the state of the context sampled from, not the last seen
    obs_a, obs_b, noise = _obs(_batch(2, 4, seed=1)), _obs(_batch(2, 4, seed=2)), torch.randn(2, 1, 4, DA)
    ctx_a = adapter.encode(obs_a)
    adapter.encode(obs_b)
    assert torch.equal(adapter.sample(ctx_a, 1, noise), adapter.sample(adapter.encode(obs_a), 1, noise))
    if kind == "pi0":  # built with use_relative_actions: the offset is ctx_a's state, though b was seen last
        to_absolute = next(s for s in adapter.postprocessor.steps if type(s).__name__ == "AbsoluteActionsProcessorStep")
        absolute = adapter.sample(ctx_a, 1, noise)
        to_absolute.enabled = False
        try:
            relative = adapter.sample(ctx_a, 1, noise)
        finally:
            to_absolute.enabled = True
        assert torch.allclose(absolute - relative, obs_a["observation.state"][:, None, None, :DA], atol=1e-5)
