"""Frozen text encoder from a local Hugging Face folder.

Gemma-2-2B-it for PixelDiT-T2I: 2304-d states, at most 300 tokens.
"""

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
        prefix: instruction put before every caption: ``"chi"`` (PixelDiT's,
            :data:`pid.text.prompts.CHI_PROMPT`), any other string, or None. With a prefix the official
            selection applies (PixelDiT / ``pixeldit_model._encode_text_raw``): the string is tokenised
            to n_prefix + max_length - 2 tokens (right padding, truncation), and BOS plus the last
            max_length - 1 states are kept.
        null_caption: the caption whose states stand for "no caption" in text CFG (the official teacher
            uses its negative prompt; training drops captions to the empty string).
    """

    def __init__(self, path: str | None, max_length: int = 300, dtype: str = "bfloat16",
                 trust_remote_code: bool = False, config_key: str = "text.path", prefix: str | None = None,
                 null_caption: str = ""):
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
        from pid.text.prompts import resolve_prefix

        self.prefix = resolve_prefix(prefix)
        self.num_prefix_tokens = len(self.tokenizer.encode(self.prefix)) if self.prefix else 0
        self.null_caption = null_caption
        self._null: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions → (states (B, max_length, D) float32, mask (B, max_length) bool)."""
        device = next(self.model.parameters()).device
        if not self.prefix:
            tokens = self.tokenizer(captions, padding="max_length", truncation=True,
                                    max_length=self.max_length, return_tensors="pt").to(device)
            return self.model(**tokens).last_hidden_state.float(), tokens["attention_mask"].bool()
        tokens = self.tokenizer([self.prefix + c for c in captions], padding="max_length", truncation=True,
                                max_length=self.num_prefix_tokens + self.max_length - 2,
                                return_tensors="pt").to(device)
        hidden = self.model(tokens["input_ids"], tokens["attention_mask"]).last_hidden_state.float()
        keep = [0, *range(hidden.shape[1] - self.max_length + 1, hidden.shape[1])]  # BOS + the last L - 1
        return hidden[:, keep], tokens["attention_mask"][:, keep].bool()

    @torch.no_grad()
    def null_states(self) -> torch.Tensor:
        """(1, max_length, D) states of ``null_caption`` (computed once)."""
        if self._null is None:
            self._null = self([self.null_caption])[0]
        return self._null


def _looks_like_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/", "~"))
