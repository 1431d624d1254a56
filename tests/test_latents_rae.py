"""RAE latent spaces (DINOv2-B with registers, SigLIP-2 So400M/14) with the real timm classes at a tiny
random size; the RAE ViT decoder; the per-(C,H,W) statistics command."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from PIL import Image

from conftest import compose_train
from pid.latents.rae import RAELatent
from pid.latents.rae_decoder import RAEDecoder
from pid.utils.errors import MissingWeightsError

TINY_ENCODER = {"embed_dim": 32, "depth": 1, "num_heads": 2}
TINY_DECODER = {
    "decoder_hidden_size": 32,
    "decoder_num_hidden_layers": 1,
    "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 64,
}
TINY_OVERRIDES = [
    "latent.require_weights=false",
    "latent.dtype=float32",
    "latent.channels=32",
    "latent.stats_path=null",
    "latent.arch_overrides={embed_dim:32,depth:1,num_heads:2}",
    (
        "latent.decoder={decoder_hidden_size:32,decoder_num_hidden_layers:1,"
        "decoder_num_attention_heads:2,decoder_intermediate_size:64}"
    ),
]


def tiny_rae(name: str, *extra: str) -> RAELatent:
    cfg = compose_train([f"latent={name}", "paths.output_dir=/tmp/out", *TINY_OVERRIDES, *extra])
    torch.manual_seed(0)
    return instantiate(cfg.latent)


@pytest.mark.parametrize("name,special,native", [("rae_dinov2", 5, 512), ("rae_siglip2", 0, 256)])
def test_encode_geometry_special_tokens_and_plain_layernorm(name, special, native):
    latent = tiny_rae(name)
    assert latent.down_factor == 16 and latent.native_size == native
    assert latent.encoder.num_prefix_tokens == special
    assert latent.encoder.norm.weight is None and latent.encoder.norm.bias is None  # LayerNorm without affine
    # the paper geometry: 512 → 448 (DINOv2, 32×32 tokens), 256 → 224 (SigLIP-2, 16×16)
    assert latent.encoder_input_size(native, native) == (native // 16 * 14,) * 2
    for sr_scale in (4, 8):  # a 128×256 HQ crop, encoded at ↓sr_scale
        lq = torch.rand(2, 3, 128 // sr_scale, 256 // sr_scale) * 2 - 1
        z = latent.encode(lq)
        assert z.shape == (2, 32, lq.shape[-2] // 16, lq.shape[-1] // 16)
    # the latent is the patch tokens after the special ones, unit-normalised per token
    x = (lq + 1) / 2
    x = torch.nn.functional.interpolate(
        x, size=latent.encoder_input_size(*lq.shape[-2:]), mode="bicubic", antialias=latent.antialias
    )
    tokens = latent.encoder.forward_features((x - latent.image_mean) / latent.image_std)
    assert tokens.shape[1] == special + z.shape[-2] * z.shape[-1]
    torch.testing.assert_close(z.flatten(2).transpose(1, 2), tokens[:, special:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(tokens.shape[:2]), atol=1e-5, rtol=0)


def test_statistics_normalisation_round_trip_and_other_grids():
    latent = tiny_rae("rae_dinov2")
    mean, var = torch.randn(32, 4, 4), torch.rand(32, 4, 4) + 0.5
    latent.set_stats(mean, var)
    lq = torch.rand(1, 3, 64, 64) * 2 - 1
    raw = latent.encode_raw(lq)
    z = latent.encode(lq)
    torch.testing.assert_close(z, (raw - mean) / torch.sqrt(var + 1e-5), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(latent.denormalize(z), raw, atol=1e-5, rtol=1e-5)
    other = torch.rand(1, 3, 96, 64) * 2 - 1  # another grid (bucket): statistics are resampled
    raw = latent.encode_raw(other)
    torch.testing.assert_close(latent.denormalize(latent.normalize(raw)), raw, atol=1e-5, rtol=1e-5)


def _mae_sincos(dim: int, grid: int) -> torch.Tensor:
    """MAE's get_2d_sincos_pos_embed (numpy), written out: first half from the column, second from the row."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=float) / (dim / 4.0))
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

    def emb(pos):
        out = np.einsum("m,d->md", pos.reshape(-1).astype(float), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    table = np.concatenate([emb(cols), emb(rows)], axis=1)
    return torch.from_numpy(np.concatenate([np.zeros((1, dim)), table], axis=0)).float()


def test_rae_decoder_matches_diffusers_port_and_loads_rae_checkpoint_keys(tmp_path):
    from diffusers.models.autoencoders.autoencoder_rae import RAEDecoder as DiffusersRAEDecoder

    torch.manual_seed(0)
    ours = RAEDecoder(hidden_size=32, grid=4, patch_size=16, **TINY_DECODER).eval()
    for p in ours.parameters():
        if p.requires_grad:  # not the fixed sin-cos positions
            p.data.normal_(0, 0.2)
    theirs = DiffusersRAEDecoder(
        hidden_size=32,
        num_patches=16,
        patch_size=16,
        image_size=64,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
    ).eval()
    rename = {
        "attention.attention.query": "attention.to_q",
        "attention.attention.key": "attention.to_k",
        "attention.attention.value": "attention.to_v",
        "attention.output.dense": "attention.to_out.0",
    }
    state = {}
    for k, v in ours.state_dict().items():
        for a, b in rename.items():
            k = k.replace(a, b)
        state[k] = v
    pos = state.pop("decoder_pos_embed")
    torch.testing.assert_close(pos[0], _mae_sincos(32, 4))  # the MAE/RAE sin-cos table (zero CLS row first)
    theirs.decoder_pos_embed.copy_(pos)  # (diffusers rescales positions for grids other than 16)
    theirs.load_state_dict(state, strict=True)
    tokens = torch.randn(2, 32, 4, 4)
    expected = theirs.unpatchify(theirs(tokens.flatten(2).transpose(1, 2)).logits)
    torch.testing.assert_close(ours(tokens), expected, atol=1e-4, rtol=1e-4)

    # a checkpoint with the RAE authors' key names loads strictly through the latent config
    torch.save(ours.state_dict(), tmp_path / "model.pt")
    latent = tiny_rae("rae_dinov2", f"latent.decoder_path={tmp_path}/model.pt", "latent.native_size=64")
    assert latent.decoder is not None
    images = latent.decode(torch.randn(1, 32, 4, 6))  # non-square grid: positions resampled
    assert images.shape == (1, 3, 64, 96)


def test_scale_rae_decoder_14px_tokens_resized_to_the_16px_grid():
    latent = tiny_rae("rae_siglip2", "latent.native_size=64")
    latent.attach_decoder(RAEDecoder(**latent._decoder_kwargs))
    assert latent._decoder_kwargs["patch_size"] == 14
    assert latent.decode(latent.encode(torch.rand(1, 3, 64, 64) * 2 - 1)).shape == (1, 3, 64, 64)


def _write_images(folder, n, size=(40, 56), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def test_statistics_command_on_a_folder_and_a_shard(tmp_path):
    from pid.latents.stats import center_square, iter_source_images, main

    _write_images(tmp_path / "photos", 3)
    _write_images(tmp_path / "shard_src", 2, seed=1)
    with tarfile.open(tmp_path / "shard-000000.tar", "w") as tar:
        for f in sorted((tmp_path / "shard_src").iterdir()):
            tar.add(f, arcname=f"sample{f.stem}.png")
        (tmp_path / "junk.png").write_bytes(b"not an image")
        tar.add(tmp_path / "junk.png", arcname="broken.png")  # skipped with a warning
    out = tmp_path / "stats.safetensors"
    torch.manual_seed(0)  # the command builds the same tiny random encoder as tiny_rae below
    main(
        [
            "--latent",
            "rae_dinov2",
            "--source",
            str(tmp_path / "photos"),
            str(tmp_path / "shard-000000.tar"),
            "--out",
            str(out),
            "--size",
            "32",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "paths.output_dir=/tmp/out",
            *TINY_OVERRIDES,
        ]
    )
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        mean, var, meta = f.get_tensor("mean"), f.get_tensor("var"), f.metadata()
    assert mean.shape == var.shape == (32, 2, 2) and meta["images"] == "5"

    latent = tiny_rae("rae_dinov2")
    images = [img for _, img in iter_source_images([tmp_path / "photos", tmp_path / "shard-000000.tar"])]
    raw = latent.encode_raw(torch.stack([center_square(img, 32) for img in images]))
    torch.testing.assert_close(mean, raw.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(var, raw.var(0, unbiased=False), atol=1e-5, rtol=1e-4)

    # the statistics file then normalises the latent to zero mean / unit variance on the same images
    latent.load_stats(str(out))
    z = latent.normalize(raw)
    torch.testing.assert_close(z.mean(0), torch.zeros_like(mean), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["rae_dinov2", "rae_siglip2"])
def test_missing_weights_name_the_key_and_files(name, tmp_path):
    cfg = compose_train([f"latent={name}", "paths.output_dir=/tmp/out"])
    with pytest.raises(InstantiationException) as err:
        instantiate(cfg.latent)
    cause = err.value.__cause__
    assert isinstance(cause, MissingWeightsError) and cause.config_key == "latent.path"
    assert "latent.path" in str(cause) and "timm" in str(cause)
    # weights present but no statistics yet: the error names latent.stats_path and the command computing them
    cfg = compose_train(
        [
            f"latent={name}",
            "paths.output_dir=/tmp/out",
            *TINY_OVERRIDES[:-3],
            f"latent.stats_path={tmp_path}/none.safetensors",
            "latent.arch_overrides={embed_dim:32,depth:1,num_heads:2}",
        ]
    )
    with pytest.raises(InstantiationException) as err:
        instantiate(cfg.latent)
    cause = err.value.__cause__
    assert isinstance(cause, MissingWeightsError) and cause.config_key == "latent.stats_path"
    assert "python -m pid.latents.stats" in str(cause)


def _timm_to_hf(state: dict, encoder: str) -> dict:
    """timm ViT weights written in the Hugging Face layouts (Dinov2WithRegistersModel / SiglipModel)."""
    out = {}
    if encoder == "dinov2":
        cls_pos = 0.1 * torch.randn_like(state["cls_token"])  # HF adds the CLS position; folded back on load
        out["embeddings.cls_token"] = state["cls_token"] - cls_pos
        out["embeddings.position_embeddings"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
        out["embeddings.register_tokens"] = state["reg_token"]
        out["embeddings.mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
        pre, pe, final = "encoder.layer.", "embeddings.patch_embeddings.projection", "layernorm"
        names = {
            "norm1": "norm1",
            "norm2": "norm2",
            "mlp.fc1": "mlp.fc1",
            "mlp.fc2": "mlp.fc2",
            "attn.proj": "attention.output.dense",
        }
        q, k, v = "attention.attention.query", "attention.attention.key", "attention.attention.value"
    else:
        out["vision_model.embeddings.position_embedding.weight"] = state["pos_embed"][0]
        pre, pe, final = "encoder.layers.", "embeddings.patch_embedding", "post_layernorm"
        names = {
            "norm1": "layer_norm1",
            "norm2": "layer_norm2",
            "mlp.fc1": "mlp.fc1",
            "mlp.fc2": "mlp.fc2",
            "attn.proj": "self_attn.out_proj",
        }
        q, k, v = "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"
    body = {
        f"{pe}.weight": state["patch_embed.proj.weight"],
        f"{pe}.bias": state["patch_embed.proj.bias"],
        f"{final}.weight": state["norm.weight"],
        f"{final}.bias": state["norm.bias"],
    }
    depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
    for i in range(depth):
        for a, b in names.items():
            for s in ("weight", "bias"):
                body[f"{pre}{i}.{b}.{s}"] = state[f"blocks.{i}.{a}.{s}"]
        if encoder == "dinov2":
            body[f"{pre}{i}.layer_scale1.lambda1"] = state[f"blocks.{i}.ls1.gamma"]
            body[f"{pre}{i}.layer_scale2.lambda1"] = state[f"blocks.{i}.ls2.gamma"]
        for s in ("weight", "bias"):
            for name, part in zip((q, k, v), state[f"blocks.{i}.attn.qkv.{s}"].chunk(3)):
                body[f"{pre}{i}.{name}.{s}"] = part
    prefix = "" if encoder == "dinov2" else "vision_model."
    out.update({prefix + key: val for key, val in body.items()})
    if encoder == "siglip2":
        out["text_model.embeddings.token_embedding.weight"] = torch.zeros(4, 8)  # a full SiglipModel file
    return out


@pytest.mark.parametrize("name,encoder", [("rae_dinov2", "dinov2"), ("rae_siglip2", "siglip2")])
def test_local_weights_timm_file_and_hugging_face_folder_give_the_same_latent(name, encoder, tmp_path):
    import timm
    from safetensors.torch import save_file

    arch = {"dinov2": "vit_base_patch14_reg4_dinov2", "siglip2": "vit_so400m_patch14_siglip_224"}[encoder]
    torch.manual_seed(1)
    model = timm.create_model(arch, pretrained=False, num_classes=0, **TINY_ENCODER)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "timm.safetensors"))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    save_file(
        {k: v.contiguous() for k, v in _timm_to_hf(state, encoder).items()},
        str(tmp_path / "hf" / "model.safetensors"),
    )
    lq = torch.rand(1, 3, 32, 48) * 2 - 1
    latents = []
    for path in (tmp_path / "timm.safetensors", tmp_path / "hf"):
        latents.append(tiny_rae(name, f"latent.path={path}", "latent.require_weights=true").encode(lq))
    torch.testing.assert_close(latents[0], latents[1], atol=1e-5, rtol=1e-5)
    # the tokens before the affine-free final norm come from these weights, not from a random init
    assert not torch.allclose(latents[0], tiny_rae(name).encode(lq), atol=1e-3)
