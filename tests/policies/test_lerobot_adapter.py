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
from lerobot.configs.types import FeatureType, PolicyFeature  # noqa: E402
from lerobot.policies.factory import make_pre_post_processors  # noqa: E402

DS, DA, IMG = 4, 2, 32
ACT_LO, ACT_HI = torch.tensor([10.0, -1.0]), torch.tensor([20.0, 1.0])
WORDS = ["<pad>", "<unk>", "<bos>", "<eos>", "<fake_token_around_image>", "<global-img>", "<image>",
         "<end_of_utterance>", "pick", "place", "the", "red", "blue", "cube"]


def _stats(lo: torch.Tensor, hi: torch.Tensor) -> dict:
    return {"min": lo, "max": hi, "mean": (lo + hi) / 2, "std": (hi - lo) / 4, "q01": lo, "q99": hi}


STATS = {"observation.state": _stats(-torch.ones(DS), torch.ones(DS)), "action": _stats(ACT_LO, ACT_HI),
         "observation.images.front": {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25),
                                      "min": torch.zeros(3, 1, 1), "max": torch.ones(3, 1, 1)}}
FEATURES = {"input_features": {"observation.state": PolicyFeature(FeatureType.STATE, (DS,)),
                               "observation.images.front": PolicyFeature(FeatureType.VISUAL, (3, IMG, IMG))},
            "output_features": {"action": PolicyFeature(FeatureType.ACTION, (DA,))}}


def _save(policy, directory, **kw):
    pre, post = make_pre_post_processors(policy.config, dataset_stats=STATS, **kw)
    for part in (policy, pre, post):
        part.save_pretrained(directory)
    return directory


def _batch(B: int, H: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"observation.state": torch.randn(B, DS, generator=g),
            "observation.images.front": torch.rand(B, 3, IMG, IMG, generator=g),
            "task": ["pick the red cube", "place the blue cube", "pick the cube"][:B] + ["pick"] * max(0, B - 3),
            "action": ACT_LO + (ACT_HI - ACT_LO) * torch.rand(B, H, DA, generator=g),
            "action_is_pad": torch.zeros(B, H, dtype=torch.bool)}


def _obs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k.startswith("observation.") or k == "task"}


def _tokenizer_dir(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = {"fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
                "image_token": "<image>", "end_of_utterance_token": "<end_of_utterance>"}
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>",
                                  eos_token="<eos>", extra_special_tokens=specials)
    tok.save_pretrained(path)
    return tok


# --- diffusion -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diffusion_dir(tmp_path_factory):
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    torch.manual_seed(0)
    cfg = DiffusionConfig(**FEATURES, n_obs_steps=2, horizon=8, n_action_steps=4, down_dims=(16, 32),
                          kernel_size=3, n_groups=4, diffusion_step_embed_dim=16, pretrained_backbone_weights=None,
                          use_group_norm=True, spatial_softmax_num_keypoints=4, num_inference_steps=4,
                          crop_shape=None, device="cpu")
    return _save(DiffusionPolicy(cfg), tmp_path_factory.mktemp("lerobot_diffusion"))


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
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    cfg = ACTConfig(**FEATURES, chunk_size=4, n_action_steps=4, dim_model=16, n_heads=2, dim_feedforward=32,
                    n_encoder_layers=1, n_decoder_layers=1, use_vae=False, pretrained_backbone_weights=None,
                    device="cpu")
    act = LeRobotChunkPolicy.from_pretrained(_save(ACTPolicy(cfg), tmp_path / "act"))
    assert (act.chunk_len, act.action_dim) == (4, DA)
    batch = _batch(2, 4)
    ctx = act.encode(_obs(batch))
    assert act.sample(ctx, n=2).shape == (2, 2, 4, DA)
    with pytest.raises(ConfigError, match="noise"):
        act.sample(ctx, n=2, noise=torch.randn(2, 2, 4, DA))
    assert act.loss(batch).ndim == 0
    with pytest.raises(ConfigError, match="per-sample"):
        act.loss(batch, reduction="none")
    with pytest.raises(ConfigError, match="caller-given noise"):
        act.loss(batch, reduction="none", noise=torch.randn(2, 4, DA), t=torch.rand(2))


# --- SmolVLA (flow matching, config-driven: a tiny local SmolVLM backbone) ------------------------
@pytest.fixture(scope="module")
def smolvla_dir(tmp_path_factory):
    pytest.importorskip("num2words")  # SmolVLMProcessor needs it (lerobot[smolvla] extra)
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    vlm = tmp_path_factory.mktemp("tiny_smolvlm")
    tok = _tokenizer_dir(vlm)
    image_proc = SmolVLMImageProcessor(size={"longest_edge": IMG}, max_image_size={"longest_edge": IMG},
                                       do_image_splitting=False)
    SmolVLMProcessor(image_processor=image_proc, tokenizer=tok, video_processor=SmolVLMVideoProcessor(),
                     image_seq_len=4).save_pretrained(vlm)
    SmolVLMConfig(text_config=dict(model_type="llama", vocab_size=len(WORDS), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                   pad_token_id=0),
                  vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, image_size=IMG, patch_size=8),
                  scale_factor=2, image_token_id=WORDS.index("<image>"), pad_token_id=0).save_pretrained(vlm)
    torch.manual_seed(0)
    cfg = SmolVLAConfig(**FEATURES, vlm_model_name=str(vlm), load_vlm_weights=False, num_vlm_layers=2,
                        chunk_size=4, n_action_steps=4, max_state_dim=8, max_action_dim=8, tokenizer_max_length=8,
                        resize_imgs_with_padding=(IMG, IMG), num_steps=3, device="cpu")
    return _save(SmolVLAPolicy(cfg), tmp_path_factory.mktemp("lerobot_smolvla"))


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
    adapter.eval().save_pretrained(tmp_path / "smolvla")
    again = LeRobotChunkPolicy.from_pretrained(tmp_path / "smolvla")
    obs, noise = _obs(_batch(2, 4)), torch.randn(2, 3, 4, DA)
    assert torch.equal(adapter.sample(adapter.encode(obs), 3, noise), again.sample(again.encode(obs), 3, noise))
    with pytest.raises(DataError, match="instruction"):
        adapter.encode({k: v for k, v in obs.items() if k != "task"})


# --- pi0 / pi0.5 (PaliGemma sizes are hard-coded in LeRobot: patched here to a tiny model) ---------
@pytest.fixture(scope="module", params=["pi0", "pi05"])
def tiny_pi(request, tmp_path_factory):
    """Build, save and load a tiny pi0 / pi0.5 with the size tables and the tokenizer name patched;
    the patches stay active while the tests use it (LeRobot rebuilds the model when loading)."""
    import importlib

    from lerobot.processor import TokenizerProcessorStep

    kind = request.param
    modeling = importlib.import_module(f"lerobot.policies.{kind}.modeling_{kind}")
    processor = importlib.import_module(f"lerobot.policies.{kind}.processor_{kind}")
    config_cls = importlib.import_module(f"lerobot.policies.{kind}.configuration_{kind}")
    config_cls = getattr(config_cls, "PI0Config" if kind == "pi0" else "PI05Config")
    tok_dir = tmp_path_factory.mktemp("tiny_tokenizer")
    _tokenizer_dir(tok_dir)
    gemma, paligemma = modeling.GemmaConfig, modeling.PaliGemmaForConditionalGenerationWithPiGemma

    def tiny_gemma(variant):  # LeRobot's attention reshapes assume 8 heads
        width = 32 if variant == "gemma_2b" else 16
        return gemma(width=width, depth=1, mlp_dim=2 * width, num_heads=8, num_kv_heads=1, head_dim=4)

    def tiny_paligemma(config):  # LeRobot sets a 2048-wide SigLIP projection: shrink the vision tower
        v = config.vision_config
        v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads, v.patch_size = 16, 32, 1, 2, 8
        v.projection_dim = config.text_config.hidden_size
        return paligemma(config)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(modeling, "get_gemma_config", tiny_gemma)
        mp.setattr(modeling, "PaliGemmaForConditionalGenerationWithPiGemma", tiny_paligemma)
        mp.setattr(processor, "TokenizerProcessorStep",
                   lambda **kw: TokenizerProcessorStep(**{**kw, "tokenizer_name": str(tok_dir)}))
        torch.manual_seed(0)
        cfg = config_cls(**FEATURES, image_resolution=(IMG, IMG), chunk_size=4, n_action_steps=4, max_state_dim=8,
                         max_action_dim=8, tokenizer_max_length=8, num_inference_steps=3, device="cpu",
                         use_relative_actions=kind == "pi0")  # pi0 also covers relative actions
        directory = _save(getattr(modeling, "PI0Policy" if kind == "pi0" else "PI05Policy")(cfg),
                          tmp_path_factory.mktemp(f"lerobot_{kind}"))
        yield kind, directory


def test_pi_family_adapter(tiny_pi, tmp_path):
    kind, directory = tiny_pi
    adapter = LeRobotChunkPolicy.from_pretrained(directory)
    assert adapter.policy_type == kind
    _check_flow_policy(adapter, H=4, full_dim=8)
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
