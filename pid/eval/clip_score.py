"""CLIP score (image–caption agreement) through open_clip with *local* weights only.

CLIPScore = 100 · max(cos(E_img, E_txt), 0), averaged over images (Hessel et al. 2021; the same
definition as torchmetrics). Configure ``metrics.clip.model_name`` (an open_clip architecture, e.g.
``ViT-B-32``) and ``metrics.clip.pretrained`` (a local ``open_clip_pytorch_model.bin``/``.safetensors``),
or ``metrics.clip.model_cfg`` (an open_clip CLIP config dict, e.g. a tiny one for tests; random weights
unless ``pretrained`` is set). With neither, :func:`build_clip_scorer` returns None and the report says
"not configured" instead of printing a number.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from pid.eval.images import as_metric_images

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPScorer:
    """Scores (images: uint8 or floats in [-1, 1], see pid.eval.images; captions) with an open_clip model."""

    def __init__(self, model: torch.nn.Module, tokenizer, image_size: int, mean=OPENAI_MEAN, std=OPENAI_STD,
                 name: str = "clip"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.name = name

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize the shorter side to the model's size (bicubic, antialiased), centre-crop, normalise."""
        x = as_metric_images(images).add(1).div(2)
        h, w = x.shape[-2:]
        s = self.image_size / min(h, w)
        nh, nw = max(self.image_size, round(h * s)), max(self.image_size, round(w * s))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (nh - self.image_size) // 2, (nw - self.image_size) // 2
        x = x[..., top:top + self.image_size, left:left + self.image_size]
        return (x - self.mean.to(x)) / self.std.to(x)

    @torch.no_grad()
    def scores(self, images: torch.Tensor, captions: list[str], batch_size: int = 16) -> torch.Tensor:
        """Per-image CLIP score (B,), float64."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        dev = next(self.model.parameters()).device
        out = []
        for i in range(0, len(images), batch_size):
            img = self.preprocess(images[i:i + batch_size]).to(dev)
            tok = self.tokenizer(list(captions[i:i + batch_size])).to(dev)
            e_img = F.normalize(self.model.encode_image(img).float(), dim=-1)
            e_txt = F.normalize(self.model.encode_text(tok).float(), dim=-1)
            out.append((100.0 * (e_img * e_txt).sum(-1).clamp_min(0)).double().cpu())
        return torch.cat(out)

    def __call__(self, images: torch.Tensor, captions: list[str]) -> float:
        return float(self.scores(images, captions).mean())


def build_clip_scorer(model_name: str | None = None, pretrained: str | None = None,
                      model_cfg: dict | None = None,
                      device: str | torch.device = "cpu") -> CLIPScorer | None:
    """An open_clip scorer from local weights or an explicit config; None when nothing is configured.

    Raises FileNotFoundError when ``pretrained`` is given but missing (never downloads).
    """
    import open_clip

    if pretrained and not Path(str(pretrained)).expanduser().is_file():
        raise FileNotFoundError(f"metrics.clip.pretrained={pretrained} does not exist "
                                "(a local open_clip weights file; nothing is downloaded at run time)")
    if model_cfg:
        cfg = dict(model_cfg)
        model = open_clip.CLIP(**cfg)
        if pretrained:
            state = _load_state(str(pretrained))
            model.load_state_dict(state.get("state_dict", state))
        ctx = int(cfg.get("text_cfg", {}).get("context_length", 77))
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
        size = cfg.get("vision_cfg", {}).get("image_size", 224)
        name = "open_clip(custom config" + (", random weights)" if not pretrained else ")")
    elif model_name and pretrained:
        model = open_clip.create_model(model_name, pretrained=str(Path(pretrained).expanduser()),
                                       device="cpu")
        tokenizer = open_clip.get_tokenizer(model_name)
        size = model.visual.image_size
        name = f"open_clip {model_name}"
    else:
        return None
    size = size[0] if isinstance(size, (tuple, list)) else size
    pp = getattr(model.visual, "preprocess_cfg", None) or {}
    mean, std = pp.get("mean", OPENAI_MEAN), pp.get("std", OPENAI_STD)
    return CLIPScorer(model.to(device), tokenizer, int(size), mean, std, name=name)


def _load_state(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)
