"""Tiny LeRobot policies (diffusion, SmolVLA, pi0, pi0.5, ACT), built and saved offline for the tests.

Each builder takes our features ({key: shape}: ``observation.state`` (Ds,), cameras (3, H, W) or
(H, W, 3), ``action`` (Da,)) and LeRobot-style stats, and writes what ``lerobot-train`` writes
(config, weights, pre/post processors) into a directory that ``policies.load_policy`` opens.

SmolVLA's VLM backbone comes from a tiny local SmolVLM config and a word-level tokenizer. pi0 and
pi0.5 hard-code PaliGemma sizes, so ``pi_patches`` shrinks the size tables and points the tokenizer
at a local one; the patches must stay active while such a checkpoint is loaded (LeRobot rebuilds
the model from the size tables), which is why those kinds only run in-process.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

WORDS = ["<pad>", "<unk>", "<bos>", "<eos>", "<fake_token_around_image>", "<global-img>", "<image>",
         "<end_of_utterance>", "pick", "place", "the", "red", "blue", "green", "cube", "reach", "ball", "into",
         "bin", "push", "to", "target", "stack", "on", "a", "and"]
KINDS = ("diffusion", "pi0", "pi05", "smolvla")


def lerobot_features(features: dict) -> dict:
    """Our {key: shape} -> LeRobot's input_features / output_features (images as (3, H, W))."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    inputs = {}
    for key, shape in features.items():
        shape = tuple(int(s) for s in shape)
        if key == "observation.state":
            inputs[key] = PolicyFeature(FeatureType.STATE, shape)
        elif key.startswith("observation.images."):
            inputs[key] = PolicyFeature(FeatureType.VISUAL, shape if shape[0] == 3 else (shape[2], shape[0], shape[1]))
    action = PolicyFeature(FeatureType.ACTION, tuple(int(s) for s in features["action"]))
    return {"input_features": inputs, "output_features": {"action": action}}


def lerobot_stats(stats: dict, features: dict) -> dict:
    """Our stats ({key: {mean, std, min, max}} of lists) as LeRobot tensors, quantiles included; images
    get fixed per-channel stats."""
    out = {}
    for key in ("observation.state", "action"):
        s = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in stats[key].items()}
        lo, hi = s.get("min", s["mean"] - 2 * s["std"]), s.get("max", s["mean"] + 2 * s["std"])
        out[key] = {"mean": s["mean"], "std": s["std"], "min": lo, "max": hi, "q01": lo, "q99": hi}
    for key in features:
        if key.startswith("observation.images."):
            out[key] = {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25),
                        "min": torch.zeros(3, 1, 1), "max": torch.ones(3, 1, 1)}
    return out


def save(policy, stats: dict, directory: Path, **kw) -> Path:
    from lerobot.policies.factory import make_pre_post_processors

    pre, post = make_pre_post_processors(policy.config, dataset_stats=stats, **kw)
    for part in (policy, pre, post):
        part.save_pretrained(directory)
    return Path(directory)


def tokenizer_dir(path: Path):
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


def build_diffusion(features: dict, stats: dict, directory: Path, **overrides) -> Path:
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    torch.manual_seed(0)
    opts = dict(n_obs_steps=2, horizon=8, n_action_steps=4, down_dims=(16, 32), kernel_size=3, n_groups=4,
                diffusion_step_embed_dim=16, pretrained_backbone_weights=None, use_group_norm=True,
                spatial_softmax_num_keypoints=4, num_inference_steps=4, crop_shape=None, device="cpu")
    cfg = DiffusionConfig(**lerobot_features(features), **{**opts, **overrides})
    return save(DiffusionPolicy(cfg), stats, directory)


def build_act(features: dict, stats: dict, directory: Path) -> Path:
    """ACT: a chunk policy without a generative head (no caller-given noise, no per-sample loss)."""
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    torch.manual_seed(0)
    cfg = ACTConfig(**lerobot_features(features), chunk_size=4, n_action_steps=4, dim_model=16, n_heads=2,
                    dim_feedforward=32, n_encoder_layers=1, n_decoder_layers=1, use_vae=False,
                    pretrained_backbone_weights=None, device="cpu")
    return save(ACTPolicy(cfg), stats, directory)


def build_smolvla(features: dict, stats: dict, directory: Path, work: Path, chunk_size: int = 4) -> Path:
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    img = _image_size(features)
    vlm = Path(work) / "tiny_smolvlm"
    tok = tokenizer_dir(vlm)
    image_proc = SmolVLMImageProcessor(size={"longest_edge": img}, max_image_size={"longest_edge": img},
                                       do_image_splitting=False)
    SmolVLMProcessor(image_processor=image_proc, tokenizer=tok, video_processor=SmolVLMVideoProcessor(),
                     image_seq_len=4).save_pretrained(vlm)
    SmolVLMConfig(text_config=dict(model_type="llama", vocab_size=len(WORDS), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                   pad_token_id=0),
                  vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, image_size=img, patch_size=8),
                  scale_factor=2, image_token_id=WORDS.index("<image>"), pad_token_id=0).save_pretrained(vlm)
    torch.manual_seed(0)
    cfg = SmolVLAConfig(**lerobot_features(features), vlm_model_name=str(vlm), load_vlm_weights=False,
                        num_vlm_layers=2, chunk_size=chunk_size, n_action_steps=chunk_size, max_state_dim=32,
                        max_action_dim=8, tokenizer_max_length=8, resize_imgs_with_padding=(img, img), num_steps=3,
                        device="cpu")
    return save(SmolVLAPolicy(cfg), stats, directory)


@contextmanager
def pi_patches(kind: str, tok_dir: Path):
    """LeRobot's pi0 / pi0.5 at toy sizes, with a local tokenizer, while the context is active."""
    from lerobot.processor import TokenizerProcessorStep

    modeling = importlib.import_module(f"lerobot.policies.{kind}.modeling_{kind}")
    processor = importlib.import_module(f"lerobot.policies.{kind}.processor_{kind}")
    gemma, paligemma = modeling.GemmaConfig, modeling.PaliGemmaForConditionalGenerationWithPiGemma

    def tiny_gemma(variant):  # LeRobot's attention reshapes assume 8 heads
        width = 32 if variant == "gemma_2b" else 16
        return gemma(width=width, depth=1, mlp_dim=2 * width, num_heads=8, num_kv_heads=1, head_dim=4)

    def tiny_paligemma(config):  # LeRobot sets a 2048-wide SigLIP projection: shrink the vision tower
        v = config.vision_config
        v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads, v.patch_size = 16, 32, 1, 2, 8
        v.projection_dim = config.text_config.hidden_size
        return paligemma(config)

    with _patched(modeling, "get_gemma_config", tiny_gemma), \
            _patched(modeling, "PaliGemmaForConditionalGenerationWithPiGemma", tiny_paligemma), \
            _patched(processor, "TokenizerProcessorStep",
                     lambda **kw: TokenizerProcessorStep(**{**kw, "tokenizer_name": str(tok_dir)})):
        yield


def build_pi(kind: str, features: dict, stats: dict, directory: Path, chunk_size: int = 4,
             relative: bool | None = None) -> Path:
    """pi0 or pi0.5; call inside ``pi_patches(kind, ...)``. pi0 also covers relative actions by default."""
    modeling = importlib.import_module(f"lerobot.policies.{kind}.modeling_{kind}")
    config_mod = importlib.import_module(f"lerobot.policies.{kind}.configuration_{kind}")
    config_cls = getattr(config_mod, "PI0Config" if kind == "pi0" else "PI05Config")
    img = _image_size(features)
    torch.manual_seed(0)
    cfg = config_cls(**lerobot_features(features), image_resolution=(img, img), chunk_size=chunk_size,
                     n_action_steps=chunk_size, max_state_dim=32, max_action_dim=8, tokenizer_max_length=8,
                     num_inference_steps=3, device="cpu", use_relative_actions=kind == "pi0" if relative is None
                     else relative)
    return save(getattr(modeling, "PI0Policy" if kind == "pi0" else "PI05Policy")(cfg), stats, directory)


def _image_size(features: dict) -> int:
    shapes = [tuple(s) for k, s in features.items() if k.startswith("observation.images.")]
    return max(s[1] if s[0] == 3 else s[0] for s in shapes) if shapes else 32


@contextmanager
def _patched(module, name: str, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)
