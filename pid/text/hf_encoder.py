"""Frozen text encoder from a local Hugging Face folder (Gemma-2-2B-it for PixelDiT-T2I: 2304-d, ≤300 tokens)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pid.utils.errors import MissingWeightsError


class HFTextEncoder(nn.Module):
    """Captions → (hidden states (B, L, D), attention mask (B, L) bool) from the encoder's last layer.

    Args:
        path: local folder with config, tokenizer and weights (a hub id works for users online).
        max_length: tokens kept per caption (PixelDiT-T2I: 300).
        dtype: torch dtype name for the weights.
        trust_remote_code: explicit opt-in for models that ship code.
        config_key: the config key named in the error when ``path`` is missing.
    """

    def __init__(self, path: str | None, max_length: int = 300, dtype: str = "bfloat16",
                 trust_remote_code: bool = False, config_key: str = "text.path"):
        super().__init__()
        if not path or (not Path(path).exists() and not _looks_like_hub_id(path)):
            raise MissingWeightsError("text encoder", config_key,
                                      "a Hugging Face model folder (config.json, tokenizer, *.safetensors)",
                                      source="google/gemma-2-2b-it (PixelDiT-T2I's text encoder)", path=path)
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModel.from_pretrained(path, torch_dtype=getattr(torch, dtype),
                                          trust_remote_code=trust_remote_code)
        self.model = model.requires_grad_(False).eval()
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(device)
        hidden = self.model(**tokens).last_hidden_state
        return hidden, tokens["attention_mask"].bool()


def _looks_like_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/", "~"))
