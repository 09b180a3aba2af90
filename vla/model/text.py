"""Instruction encoders: list[str] (len B) -> tokens (B, T, D) and a validity mask (B, T).

``ByteTextEncoder`` is the default: UTF-8 bytes grouped into patches and passed through a
small transformer. It needs no vocabulary file, so it works offline out of the box.
``HFTextEncoder`` wraps a ``transformers`` text model and tokenizer from a local directory.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from vla.errors import ConfigError

PAD = 0  # byte b is stored as b + 1 so that 0 can mean padding


def transformer_layer(d_model: int, n_heads: int, mlp_ratio: float, dropout: float) -> nn.Module:
    return nn.TransformerEncoderLayer(
        d_model,
        n_heads,
        int(d_model * mlp_ratio),
        dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )


class ByteTextEncoder(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        max_len: int = 64,
        patch: int = 4,
        layers: int = 1,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.patch = patch
        self.max_tokens = -(-max_len // patch)
        byte_dim = max(8, d_model // patch)
        self.embed = nn.Embedding(257, byte_dim, padding_idx=PAD)
        self.proj = nn.Linear(patch * byte_dim, d_model)
        self.pos = nn.Parameter(torch.randn(self.max_tokens, d_model) * 0.02)
        self.layers = nn.ModuleList(
            transformer_layer(d_model, n_heads, mlp_ratio, dropout) for _ in range(layers)
        )

    def tokenize(self, texts: list[str], device) -> tuple[Tensor, Tensor]:
        """Byte ids (B, T*patch) and token mask (B, T), trimmed to the longest text in the batch."""
        limit = self.max_tokens * self.patch
        rows = [list(t.encode("utf-8")[:limit]) for t in texts]
        n_tok = max(1, max(-(-len(r) // self.patch) for r in rows))
        ids = torch.full((len(rows), n_tok * self.patch), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long) + 1
        mask = ids.view(len(rows), n_tok, self.patch)[:, :, 0] != PAD
        mask[:, 0] = True  # an empty instruction still gives one (padding) token to attend to
        return ids.to(device), mask.to(device)

    def forward(self, texts: list[str], device) -> tuple[Tensor, Tensor]:
        ids, mask = self.tokenize(texts, device)
        B, T = mask.shape
        x = self.proj(self.embed(ids).view(B, T, -1)) + self.pos[:T]
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~mask)
        return x, mask


class HFTextEncoder(nn.Module):
    def __init__(self, d_model: int, path: str, frozen: bool = True, max_tokens: int = 32):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        if not Path(path).is_dir():
            raise ConfigError(f"model.text.path={path!r} is not a local directory")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
        # Encoder-decoder models (T5, ...) contribute their encoder only.
        self.backbone = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model
        self.max_tokens = max_tokens
        self.frozen = frozen
        if frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self.proj = nn.Linear(self.backbone.config.hidden_size, d_model)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, texts: list[str], device) -> tuple[Tensor, Tensor]:
        tok = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.backbone(
                input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
            ).last_hidden_state
        mask = tok["attention_mask"].bool()
        mask[:, 0] = True
        return self.proj(hidden), mask
