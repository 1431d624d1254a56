"""The frozen Hugging Face text encoder from a local folder.

PixelDiT-T2I's Gemma-2, at a tiny random size.
"""

import pytest
import torch


def _tiny_gemma2_folder(path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<unk>", "a", "photo", "of", "red", "cat", "on", "page"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                                     unk_token="<unk>")
    tokenizer.save_pretrained(path)
    config = transformers.Gemma2Config(vocab_size=len(words), hidden_size=32, intermediate_size=37,
                                       head_dim=8, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, pad_token_id=0)
    torch.manual_seed(0)
    transformers.Gemma2Model(config).save_pretrained(path)
    return path


def test_hf_text_encoder_loads_a_local_folder_and_masks_padding(tmp_path):
    from pid.text.hf_encoder import HFTextEncoder

    folder = _tiny_gemma2_folder(tmp_path / "gemma2")
    enc = HFTextEncoder(str(folder), max_length=6, dtype="float32")
    assert enc.dim == 32 and not any(p.requires_grad for p in enc.parameters())
    hidden, mask = enc(["a red cat", "a photo of a red cat on page"])
    assert hidden.shape == (2, 6, 32) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [3, 6]  # padded to max_length, the long caption truncated
    again, _ = enc(["a red cat"])
    torch.testing.assert_close(again[0, :3], hidden[0, :3])  # deterministic (eval mode)


def test_hf_text_encoder_missing_folder_names_the_config_key(tmp_path):
    from pid.text.hf_encoder import HFTextEncoder
    from pid.utils.errors import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="text.path"):
        HFTextEncoder(str(tmp_path / "nowhere"))
