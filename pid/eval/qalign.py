"""Q-Align (Wu et al. 2023, "Q-Align: teaching LMMs for visual scoring via discrete text-defined
levels") as a quality scorer, loaded with ``transformers`` from a LOCAL directory only.

Score = softmax over the logits of the five level words (excellent, good, fair, poor, bad) at the
answer position of "The quality of the image is", weighted by 5, 4, 3, 2, 1 → a value in 1–5.

The public checkpoint (q-future/one-align, mPLUG-Owl2) needs its own modelling code:
``trust_remote_code`` is used only when the caller passes it explicitly (``trust_remote_code=True``).
With remote code the model's own ``score`` method is used; otherwise the generic path below
(prompt + image processor + logits at the last position). Batched; on GPU when available.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LEVELS = ("excellent", "good", "fair", "poor", "bad")
LEVEL_WEIGHTS = (5.0, 4.0, 3.0, 2.0, 1.0)
PROMPT = (
    "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the image is"
)


def expected_level(logits) -> np.ndarray:
    """Softmax-weighted mean of the five level logits (…, 5) → score in [1, 5]."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    return p @ np.asarray(LEVEL_WEIGHTS)


def _square(im, background):
    from PIL import Image

    w, h = im.size
    if w == h:
        return im
    side = max(w, h)
    out = Image.new(im.mode, (side, side), background)
    out.paste(im, ((side - w) // 2, (side - h) // 2))
    return out


class QAlignScorer:
    """Q-Align from ``path`` (a local snapshot of q-future/one-align or a compatible model)."""

    name = "qalign"
    higher_is_better = True

    def __init__(
        self,
        path: str | None,
        device: str | None = None,
        batch_size: int = 8,
        trust_remote_code: bool = False,
        dtype: str = "float16",
        options: tuple[str, str] = ("--qalign-path", "--trust-remote-code"),
    ):
        """``options``: how the caller names the path setting and the remote-code opt-in (used in errors)."""
        self.path, self.batch_size, self.trust_remote_code = path, batch_size, trust_remote_code
        self.options = options
        self.device, self.dtype = device, dtype
        self._model = None
        self._check_path()

    def _check_path(self) -> Path:
        p = Path(self.path).expanduser() if self.path else None
        if p is None or not (p / "config.json").is_file():
            raise FileNotFoundError(
                f"Q-Align weights not found at '{self.path}': set {self.options[0]} to a "
                "local directory holding config.json and the weights of q-future/one-align (fetch it on a "
                "machine with internet: `huggingface-cli download q-future/one-align --local-dir DIR`); "
                "nothing is downloaded at run time"
            )
        cfg = json.loads((p / "config.json").read_text())
        if cfg.get("auto_map") and not self.trust_remote_code:
            raise PermissionError(
                f"the model at '{p}' needs its own Python code (config.json has auto_map): set "
                f"{self.options[1]} to run it, after reviewing that code"
            )
        return p

    def _load(self):
        if self._model is not None:
            return
        import torch
        from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer

        p = self._check_path()
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, self.dtype) if self.device != "cpu" else torch.float32
        kw = {"trust_remote_code": self.trust_remote_code, "local_files_only": True}
        self._model = AutoModelForCausalLM.from_pretrained(p, torch_dtype=dtype, **kw).to(self.device).eval()
        self._tok = AutoTokenizer.from_pretrained(p, **kw)
        self._proc = None if hasattr(self._model, "score") else AutoImageProcessor.from_pretrained(p, **kw)
        self._level_ids = [self._tok(w, add_special_tokens=False).input_ids[0] for w in LEVELS]

    def __call__(self, images) -> list[float]:
        import torch

        self._load()
        out: list[float] = []
        for i in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[i : i + self.batch_size]]
            with torch.inference_mode():
                if hasattr(self._model, "score"):  # the checkpoint's own API (remote code)
                    s = self._model.score(batch, task_="quality", input_="image")
                    out += [float(v) for v in torch.as_tensor(s).flatten()]
                    continue
                mean = tuple(int(255 * m) for m in getattr(self._proc, "image_mean", (0.5, 0.5, 0.5)))
                pix = self._proc([_square(im, mean) for im in batch], return_tensors="pt")["pixel_values"]
                ids = self._tok([PROMPT] * len(batch), return_tensors="pt", padding=True).input_ids
                logits = self._model(
                    input_ids=ids.to(self.device), images=pix.to(self.device, self._model.dtype)
                ).logits
                out += expected_level(logits[:, -1, self._level_ids].float().cpu().numpy()).tolist()
        return out
