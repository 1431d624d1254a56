"""CLIP score through open_clip: a tiny random-initialised model, and "not configured" without weights."""

import pytest
import torch

from pid.eval.clip_score import build_clip_scorer

TINY = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=16),
            text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))


def test_clip_score_runs_with_a_tiny_random_open_clip_model():
    torch.manual_seed(0)
    scorer = build_clip_scorer(model_cfg=TINY)
    images = torch.rand(3, 3, 40, 56) * 2 - 1
    caps = ["a cat on a sofa", "a page of text", "green grass"]
    s = scorer.scores(images, caps)
    assert s.shape == (3,) and torch.isfinite(s).all() and (s >= 0).all() and (s <= 100).all()
    assert torch.equal(s, scorer.scores(images, caps))  # deterministic
    assert scorer.preprocess(images).shape == (3, 3, 32, 32)
    # The definition: 100 · max(cos, 0) of the normalised embeddings.
    with torch.no_grad():
        e_i = torch.nn.functional.normalize(scorer.model.encode_image(scorer.preprocess(images)), dim=-1)
        e_t = torch.nn.functional.normalize(scorer.model.encode_text(scorer.tokenizer(caps)), dim=-1)
    assert torch.allclose(s.float(), (100 * (e_i * e_t).sum(-1)).clamp_min(0), atol=1e-4)
    with pytest.raises(ValueError):
        scorer.scores(images, caps[:2])


def test_clip_not_configured_and_missing_file(tmp_path):
    assert build_clip_scorer() is None
    assert build_clip_scorer(model_name="ViT-B-32") is None  # no weights: nothing downloaded
    with pytest.raises(FileNotFoundError, match="clip.pretrained"):
        build_clip_scorer(model_name="ViT-B-32", pretrained=str(tmp_path / "missing.bin"))
