"""Captions with released models: the official text preprocessing (instruction prefix, BOS + the last L − 1
states), the null caption of text CFG, and ``decode(caption=...)`` through a local (tiny, random) Gemma-2."""

from __future__ import annotations

import pytest
import torch

from test_official_release import OFFICIAL, pytestmark, tiny_preset  # noqa: F401 (skip without shared/)
from test_text_encoder import _tiny_gemma2_folder


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    return _tiny_gemma2_folder(tmp_path_factory.mktemp("gemma2"))


def test_prefix_selection_keeps_bos_and_the_last_states(gemma):
    from pid.text.hf_encoder import HFTextEncoder

    enc = HFTextEncoder(str(gemma), max_length=4, dtype="float32", prefix="a photo of", null_caption="page")
    assert enc.num_prefix_tokens == 3
    states, mask = enc(["red cat", "cat"])
    assert states.shape == (2, 4, 32) and mask.shape == (2, 4)
    # by hand: the prefix + caption tokenised to 3 + 4 - 2 = 5 tokens, states 0 and 2..4 kept
    tokens = enc.tokenizer(["a photo of" + "red cat"], padding="max_length", truncation=True, max_length=5,
                           return_tensors="pt")
    full = enc.model(tokens["input_ids"], tokens["attention_mask"]).last_hidden_state.float()
    torch.testing.assert_close(states[:1], full[:, [0, 2, 3, 4]])
    assert torch.equal(enc.null_states(), enc(["page"])[0])


def test_decode_with_a_caption_through_the_release_text_encoder(tmp_path, gemma):
    from pid.api import load_decoder
    from pid.text.hf_encoder import HFTextEncoder
    from pid.utils.errors import PiDConfigError

    preset = tiny_preset(tmp_path, "v1_5_student")
    ckpt = OFFICIAL / "tiny" / "v1_5_student_release.pth"
    z = torch.randn(2, 16, 2, 1, generator=torch.Generator().manual_seed(0))
    plain = load_decoder(ckpt, release=preset)
    with pytest.raises(PiDConfigError, match="text_encoder="):
        plain.decode(z, caption="a red cat")
    # the tiny nets take 24-d text states (txt_max_length 12): a tiny Gemma-2 of that width
    import transformers

    cfg = transformers.Gemma2Config.from_pretrained(gemma)
    cfg.hidden_size = 24
    torch.manual_seed(1)
    transformers.Gemma2Model(cfg).save_pretrained(tmp_path / "gemma24")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (gemma / f).is_file():
            (tmp_path / "gemma24" / f).write_bytes((gemma / f).read_bytes())
    encoder = HFTextEncoder(str(tmp_path / "gemma24"), max_length=12, dtype="float32", prefix="a photo of")
    decoder = load_decoder(ckpt, release=preset, text_encoder=encoder)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = decoder.decode(z, caption=["a red cat", "a page"], generator=gen())
    b = decoder.decode(z, caption=["a red cat", "a page"], generator=gen())
    c = decoder.decode(z, caption="a page", generator=gen())
    none = decoder.decode(z, generator=gen())  # no caption: the encoded empty caption
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, none)
    assert torch.equal(a[1], c[1])
