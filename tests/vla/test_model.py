"""The VLA network (vla.model): observation encoder, action expert and its prefix K/V cache."""

import pytest
import torch

from vla.errors import ConfigError, ShapeError
from vla.model import ActionExpert, ModelConfig, ObservationEncoder
from vla.model.config import from_dict
from vla.model.text import ByteTextEncoder

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


def obs_for(features, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = {k: torch.rand(B, *shape, generator=g) for k, shape in features.items()}
    obs["task"] = ["pick up the red cube", "", "stack the blue block on the green one"][:B]
    return obs


FEATURE_SETS = {
    "state": {"observation.state": (5,)},
    "images": {"observation.images.front": (3, 24, 24)},
    "both": {"observation.state": (5,), "observation.images.front": (3, 24, 24)},
    "two_cameras": {
        "observation.state": (5,),
        "observation.images.front": (3, 24, 24),
        "observation.images.wrist": (3, 16, 20),
    },
}


@pytest.mark.parametrize("name", list(FEATURE_SETS))
def test_observation_encoder_follows_the_features(name):
    feats = FEATURE_SETS[name]
    enc = ObservationEncoder(TINY, feats)
    prefix = enc(obs_for(feats))
    n_cams = sum(k.startswith("observation.images.") for k in feats)
    text_tokens = 32 // 4  # the longest instruction is truncated at max_len=32 bytes, 4 per token
    T = n_cams * 2 * 2 + text_tokens + ("observation.state" in feats)
    assert prefix.tokens.shape == (3, T, 32)
    assert prefix.mask.shape == (3, T) and prefix.mask.dtype == torch.bool
    assert prefix.pooled.shape == (3, 32)
    assert torch.isfinite(prefix.tokens).all() and torch.isfinite(prefix.pooled).all()
    # the empty instruction keeps one (padding) token valid, the rest of its text tokens are masked
    assert prefix.mask[1].sum() == T - text_tokens + 1


def test_image_layout_from_env_or_dataset_is_the_same():
    a = ObservationEncoder(TINY, {"observation.images.front": (24, 24, 3)})
    assert a.features == {"observation.images.front": (3, 24, 24)}


def test_text_padding_does_not_change_a_row():
    torch.manual_seed(0)
    enc = ObservationEncoder(TINY, FEATURE_SETS["state"]).eval()
    obs = obs_for(FEATURE_SETS["state"])
    alone = {"observation.state": obs["observation.state"][:1], "task": obs["task"][:1]}
    with torch.no_grad():
        full, single = enc(obs), enc(alone)
    T = single.tokens.shape[1]
    keep = full.mask[0]
    assert T < full.tokens.shape[1]  # the batch was padded to its longest instruction
    assert torch.allclose(full.pooled[0], single.pooled[0], atol=1e-5)
    assert torch.allclose(full.tokens[0][keep], single.tokens[0][single.mask[0]], atol=1e-5)


def test_byte_tokenizer_truncates_and_handles_unicode():
    enc = ByteTextEncoder(16, 2, max_len=8, patch=4)
    ids, mask = enc.tokenize(["grüße aus köln", ""], "cpu")
    assert ids.shape == (2, 8) and mask.tolist() == [[True, True], [True, False]]


def test_encoder_input_errors_name_the_feature():
    feats = FEATURE_SETS["two_cameras"]
    enc = ObservationEncoder(TINY, feats)
    obs = obs_for(feats)
    with pytest.raises(ShapeError, match="observation.images.wrist"):
        enc({k: v for k, v in obs.items() if k != "observation.images.wrist"})
    with pytest.raises(ShapeError, match="observation.state"):
        enc({**obs, "observation.state": torch.zeros(3, 7)})
    with pytest.raises(ShapeError, match="task"):
        enc({**obs, "task": "one string for three rows"})
    with pytest.raises(ConfigError, match="neither"):
        ObservationEncoder(TINY, {"action": (2,)})


def test_config_rejects_unknown_keys_and_bad_sizes():
    with pytest.raises(ConfigError, match="model.vision.chanels"):
        from_dict(ModelConfig, {"vision": {"chanels": [8]}}, "model")
    with pytest.raises(ConfigError, match="n_heads"):
        from_dict(ModelConfig, {"d_model": 30, "n_heads": 4}, "model")
    with pytest.raises(ConfigError, match="path"):
        from_dict(ModelConfig, {"text": {"type": "hf"}}, "model")
    cfg = from_dict(ModelConfig, {"vision": {"channels": [4, 8]}}, "model")
    assert cfg.vision.channels == (4, 8) and cfg.d_model == ModelConfig().d_model


def test_expert_prefix_cache_equals_recomputing_per_candidate():
    torch.manual_seed(0)
    feats = FEATURE_SETS["both"]
    enc = ObservationEncoder(TINY, feats).eval()
    expert = ActionExpert(TINY, action_dim=3, chunk_len=6).eval()
    for p in expert.parameters():  # leave adaLN-Zero's zero init so that every path matters
        torch.nn.init.normal_(p, std=0.2)
    B, N = 3, 4
    with torch.no_grad():
        prefix = enc(obs_for(feats))
        x, t = torch.randn(B * N, 6, 3), torch.rand(B * N)
        kv, mask = expert.repeat_kv(expert.prefix_kv(prefix.tokens), prefix.mask, N)
        cached = expert(x, t, kv, mask)
        for b in range(B):
            tokens, m = prefix.tokens[b : b + 1], prefix.mask[b : b + 1]
            for j in range(N):
                r = b * N + j
                one = expert(x[r : r + 1], t[r : r + 1], expert.prefix_kv(tokens), m)
                assert torch.allclose(cached[r], one[0], atol=1e-5)
    assert cached.abs().mean() > 0.1  # a real output, not the zero init


def test_hf_encoders_load_from_a_local_directory(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast, ViTConfig, ViTModel

    vit = ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=16,
        patch_size=8,
    )
    ViTModel(vit, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    (tmp_path / "bert").mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "pick", "up", "the", "red", "cube"]
    (tmp_path / "bert/vocab.txt").write_text("\n".join(vocab))
    BertTokenizerFast(vocab_file=str(tmp_path / "bert/vocab.txt")).save_pretrained(tmp_path / "bert")
    bert = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    BertModel(bert, add_pooling_layer=False).save_pretrained(tmp_path / "bert")

    cfg = {
        **TINY,
        "vision": {"type": "hf", "path": str(tmp_path / "vit"), "frozen": True},
        "text": {"type": "hf", "path": str(tmp_path / "bert"), "frozen": False},
    }
    feats = {"observation.images.front": (3, 24, 24)}
    enc = ObservationEncoder(cfg, feats).train()
    assert not enc.vision.backbone.training  # a frozen backbone stays in eval mode
    prefix = enc(obs_for(feats, B=2))
    # ViT: 2x2 patches + CLS at 16x16 (images resized); BERT: [CLS] pick up the red cube [SEP]
    assert prefix.tokens.shape == (2, 4 + 1 + 7, 32)
    assert prefix.mask[1].tolist() == [True] * 5 + [True, True] + [False] * 5  # "": [CLS] [SEP]
    prefix.pooled.sum().backward()
    assert all(p.grad is None for p in enc.vision.backbone.parameters())
    assert enc.vision.proj.weight.grad is not None
    assert any(p.grad is not None for p in enc.text.backbone.parameters())
    with pytest.raises(ConfigError, match="not a local directory"):
        ObservationEncoder({**TINY, "vision": {"type": "hf", "path": str(tmp_path / "nope")}}, feats)


def test_state_layout_gives_one_token_per_object_through_a_shared_encoder():
    feats = {"observation.state": (8 + 3 * 3,)}
    enc = ObservationEncoder({**TINY, "state_layout": [8, 3], "prefix_layers": 0, "text": {"type": "none"}}, feats)
    torch.manual_seed(0)
    state = torch.randn(2, 17)
    state[:, 11:14] = state[:, 8:11]  # objects 0 and 1 at the same place
    with torch.no_grad():
        tok = enc({"observation.state": state, "task": ["a", "b"]}).tokens
    assert tok.shape == (2, 1 + 3, 32)  # proprioception + three objects
    # the same position in two slots differs only by the two slots' embeddings (one shared encoder)
    raw = enc.objects(torch.cat([state[:, 8:11], state[:, :8]], dim=-1))  # an object sees the proprioception
    expect = [enc.norm(raw + enc.object_emb[i] + enc.type_emb[0]) for i in (0, 1)]
    assert torch.allclose(tok[:, 1], expect[0], atol=1e-5) and torch.allclose(tok[:, 2], expect[1], atol=1e-5)
    assert not torch.allclose(tok[:, 1], tok[:, 2])
    with pytest.raises(ShapeError, match=r"state_layout=\[8, 4\] does not fit"):
        ObservationEncoder({**TINY, "state_layout": [8, 4]}, feats)
    with pytest.raises(ConfigError, match="state_layout"):
        from_dict(ModelConfig, {"state_layout": [8]}, "model")
