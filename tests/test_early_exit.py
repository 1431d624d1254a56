"""Early exit: scheduler loops stopped after K of N steps hand PiD (1−σ_K)z + σ_K ε with the scheduler's σ_K;
Euler/VE-frame states convert exactly to the VP frame; the decode API and CLI take such states."""

from __future__ import annotations

import math

import pytest
import torch

from pid.diffusion.noising import noise_latent, ve_to_vp, vp_to_ve
from pid.early_exit import ExitState, StepCapture, run_pipeline_to_step, run_scheduler_loop, scheduler_frame


def _z_eps(shape=(2, 16, 4, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(
        shape, generator=g, dtype=torch.float64
    )


@pytest.mark.parametrize("shift,k,n", [(1.0, 6, 10), (3.0, 24, 28), (3.0, 28, 28)])
def test_flow_matching_loop_with_oracle_velocity_gives_the_interpolant_at_sigma_k(shift, k, n):
    from diffusers import FlowMatchEulerDiscreteScheduler

    z, eps = _z_eps()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    state = run_scheduler_loop(scheduler, lambda x, t: eps - z, eps.clone(), n, exit_after=k)
    sigma_k = float(scheduler.sigmas[k])
    assert scheduler_frame(scheduler) == "flow" and state.frame == "flow"
    assert state.sigma == pytest.approx(sigma_k) and (state.step, state.num_steps) == (k, n)
    assert float(scheduler.sigmas[0]) == pytest.approx(1.0)  # the loop starts from pure noise
    torch.testing.assert_close(state.latent, (1 - sigma_k) * z + sigma_k * eps, atol=1e-5, rtol=1e-5)
    # the same state as PiD's latent noising at σ_K
    torch.testing.assert_close(state.latent, noise_latent(z, sigma_k, eps, form="flow"), atol=1e-5, rtol=1e-5)
    if shift != 1.0 and k < n:  # σ_K includes the LDM's own shift
        assert sigma_k > 1 - k / n + 1e-3


def test_euler_ve_loop_converts_exactly_to_the_vp_frame():
    from diffusers import EulerDiscreteScheduler

    z, eps = _z_eps()
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        timestep_spacing="leading",
        steps_offset=1,
    )  # SDXL's
    scheduler.set_timesteps(10)
    start = z + float(scheduler.sigmas[0]) * eps  # VE-frame state at σ_0
    state = run_scheduler_loop(scheduler, lambda x, t: eps, start, 10, exit_after=7)
    s_ve = float(scheduler.sigmas[7])
    assert state.frame == "ve" and state.raw_sigma == pytest.approx(s_ve) and s_ve > 0.1
    s_vp = s_ve / math.sqrt(s_ve**2 + 1)
    assert state.sigma == pytest.approx(s_vp)
    expected = math.sqrt(1 - s_vp**2) * z + s_vp * eps  # exactly the VP noising PiD's SDXL decoder saw
    torch.testing.assert_close(state.latent, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(state.latent, noise_latent(z, s_vp, eps, form="vp"), atol=1e-6, rtol=1e-6)


def test_ve_vp_conversion_is_exact_and_invertible():
    z, eps = _z_eps((3, 4, 5, 5))
    sigma_ve = torch.tensor([0.05, 1.7, 14.6], dtype=torch.float64)
    x_ve = z + sigma_ve.view(-1, 1, 1, 1) * eps
    x_vp, sigma_vp = ve_to_vp(x_ve, sigma_ve)
    torch.testing.assert_close(sigma_vp, sigma_ve / torch.sqrt(sigma_ve**2 + 1))
    torch.testing.assert_close(x_vp, noise_latent(z, sigma_vp, eps, form="vp"))
    back, back_sigma = vp_to_ve(x_vp, sigma_vp)
    torch.testing.assert_close(back, x_ve)
    torch.testing.assert_close(back_sigma, sigma_ve)


class _TinyPipeline:
    """The protocol of a diffusers pipeline's denoising loop (interrupt flag, callback_on_step_end), with an
    oracle velocity and FLUX.1-style packed (B, N, 64) latents."""

    vae_scale_factor = 8
    default_sample_size = 4

    def __init__(self, z, eps, scheduler):
        self.z, self.eps, self.scheduler, self._interrupt = z, eps, scheduler, False
        self.model_calls = 0

    @staticmethod
    def _pack(x):  # (B, 16, h, w) → (B, h/2·w/2, 64), as FluxPipeline._pack_latents
        b, c, h, w = x.shape
        return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h // 2 * w // 2, c * 4)

    @staticmethod
    def _unpack_latents(latents, height, width, vae_scale_factor):  # FluxPipeline._unpack_latents
        b, _, ch = latents.shape
        h, w = 2 * (int(height) // (vae_scale_factor * 2)), 2 * (int(width) // (vae_scale_factor * 2))
        latents = latents.view(b, h // 2, w // 2, ch // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return latents.reshape(b, ch // 4, h, w)

    def __call__(
        self,
        num_inference_steps,
        callback_on_step_end,
        callback_on_step_end_tensor_inputs,
        output_type,
        height,
        width,
    ):
        self._interrupt = False
        self.scheduler.set_timesteps(num_inference_steps)
        latents = self._pack(self.eps.clone())
        v = self._pack(self.eps - self.z)
        for i, t in enumerate(self.scheduler.timesteps):
            if self._interrupt:
                continue
            self.model_calls += 1
            latents = self.scheduler.step(v, t, latents, return_dict=False)[0]
            callback_on_step_end(self, i, t, {"latents": latents})
        return latents


def test_pipeline_helper_stops_after_k_steps_and_unpacks():
    from diffusers import FlowMatchEulerDiscreteScheduler

    z, eps = _z_eps((1, 16, 4, 6))
    pipe = _TinyPipeline(z, eps, FlowMatchEulerDiscreteScheduler(shift=3.0))
    state = run_pipeline_to_step(pipe, exit_after=24, num_inference_steps=28, height=32, width=48)
    assert pipe.model_calls == 24  # the last 4 LDM steps are left to PiD
    sigma_k = float(pipe.scheduler.sigmas[24])
    assert isinstance(state, ExitState) and state.sigma == pytest.approx(sigma_k)
    expected = ((1 - sigma_k) * z + sigma_k * eps).float()  # the capture hands PiD float32
    torch.testing.assert_close(state.latent, expected, atol=1e-5, rtol=1e-5)

    capture = StepCapture([10, 20], stop=False, unpack=lambda x: pipe._unpack_latents(x, 32, 48, 8))
    pipe(
        num_inference_steps=28,
        callback_on_step_end=capture,
        callback_on_step_end_tensor_inputs=["latents"],
        output_type="latent",
        height=32,
        width=48,
    )
    assert sorted(capture.states) == [10, 20] and pipe.model_calls == 24 + 28


def test_decode_api_converts_ve_states(monkeypatch):
    import pid.sampling
    from pid.api import PiDDecoder
    from pid.latents.geometry import LatentGeometry

    seen = {}

    def fake_decode_latent(net, latent, sigma, **kwargs):
        seen["latent"], seen["sigma"] = latent, sigma
        return torch.zeros(1)

    monkeypatch.setattr(pid.sampling, "decode_latent", fake_decode_latent)
    decoder = PiDDecoder(torch.nn.Linear(1, 1), LatentGeometry(4, 8, "vp"), sr_scale=4,
                         sampling={"sampler": "euler", "num_steps": 2})
    z_ve = torch.randn(1, 4, 2, 2)
    decoder.decode(z_ve, 2.0, frame="ve")
    torch.testing.assert_close(seen["latent"], z_ve / math.sqrt(5.0))
    assert float(seen["sigma"]) == pytest.approx(2.0 / math.sqrt(5.0))
    decoder.decode(z_ve, 0.3)
    torch.testing.assert_close(seen["latent"], z_ve)
    with pytest.raises(ValueError, match="frame"):
        decoder.decode(z_ve, 0.3, frame="karras")


def _tiny_flux_pipeline():
    """A real diffusers FluxPipeline: FLUX.1's transformer, VAE, CLIP and T5 encoders at a tiny random size,
    with word-level tokenizers built in memory (no files, no hub)."""
    transformers = pytest.importorskip("transformers")
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    words = ["<pad>", "<unk>", "a", "photo", "of", "red", "cat", "text", "page"]

    def tokenizer(max_length):
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                                    unk_token="<unk>", model_max_length=max_length)

    clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(words), hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, pad_token_id=0, bos_token_id=0, eos_token_id=0))
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(words), d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2, pad_token_id=0))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8))
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, norm_num_groups=4,
                        layers_per_block=1)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    for module in (clip, t5, transformer, vae):
        module.eval()  # as from_pretrained leaves them (T5's dropout would make runs differ)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tokenizer(77),
                        text_encoder_2=t5, tokenizer_2=tokenizer(16), transformer=transformer)


def test_real_flux_pipeline_exits_after_k_steps_with_the_scheduler_sigma():
    pipe = _tiny_flux_pipeline()
    calls = []
    pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    kwargs = dict(prompt="a photo of a red cat", height=32, width=48, guidance_scale=3.5,
                  max_sequence_length=16)

    full = StepCapture([6], stop=False,
                       unpack=lambda x: pipe._unpack_latents(x, 32, 48, pipe.vae_scale_factor))
    pipe(num_inference_steps=8, callback_on_step_end=full, callback_on_step_end_tensor_inputs=["latents"],
         output_type="latent", generator=torch.Generator().manual_seed(3), **kwargs)
    assert len(calls) == 8
    calls.clear()

    state = run_pipeline_to_step(pipe, exit_after=6, num_inference_steps=8,
                                 generator=torch.Generator().manual_seed(3), **kwargs)
    assert len(calls) == 6  # the pipeline stopped: the last 2 steps are PiD's
    assert state.latent.shape == (1, 16, 4, 6)  # FLUX.1's packed tokens unpacked to the latent grid
    assert state.frame == "flow" and state.step == 6 and state.num_steps == 8
    assert state.sigma == pytest.approx(float(pipe.scheduler.sigmas[6])) and 0 < state.sigma < 1
    torch.testing.assert_close(state.latent, full.states[6].latent)  # same state as the uninterrupted run


def _record_latents(store: dict, unpack=None):
    """A plain ``callback_on_step_end`` that keeps every step's latents and the scheduler's σ index."""

    def callback(pipe, i, t, kwargs):
        latents = kwargs["latents"]
        store[i + 1] = (unpack(latents) if unpack else latents).float().clone()
        return kwargs

    return callback


def test_flux_img2img_exit_reads_sigma_at_the_schedulers_own_index():
    """Issue 15 item 8: FLUX.1 img2img, strength 0.6 of 10 steps, starts at schedule index 4; after 2 steps
    the state is at σ = sigmas[6] = 0.4 (unshifted schedule), and the loop has 6 steps."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline, FluxPipeline

    components = _tiny_flux_pipeline().components
    components["scheduler"] = FlowMatchEulerDiscreteScheduler()  # shift 1: sigmas 1.0, 0.9, …, 0.1, 0
    components["vae"] = AutoencoderKL(  # img2img encodes the image: FLUX.1's shift/scale in the VAE config
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, norm_num_groups=4, layers_per_block=1,
        shift_factor=0.1159, scaling_factor=0.3611).eval()
    pipe = FluxImg2ImgPipeline(**components)
    calls = []
    pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    image = torch.rand(1, 3, 32, 48)
    kwargs = dict(prompt="a photo of a red cat", image=image, strength=0.6, height=32, width=48,
                  guidance_scale=3.5, max_sequence_length=16)

    seen = {}
    unpack = lambda x: pipe._unpack_latents(x, 32, 48, pipe.vae_scale_factor)  # noqa: E731
    pipe(num_inference_steps=10, callback_on_step_end=_record_latents(seen, unpack),
         callback_on_step_end_tensor_inputs=["latents"], output_type="latent",
         generator=torch.Generator().manual_seed(3), **kwargs)
    assert sorted(seen) == [1, 2, 3, 4, 5, 6]  # the loop: 6 of the 10 scheduled steps
    calls.clear()

    state = run_pipeline_to_step(pipe, exit_after=2, num_inference_steps=10,
                                 generator=torch.Generator().manual_seed(3), **kwargs)
    assert len(calls) == 2
    assert state.sigma == pytest.approx(0.4) and state.raw_sigma == pytest.approx(0.4)
    assert (state.step, state.num_steps, state.start) == (2, 6, 4)
    torch.testing.assert_close(state.latent, seen[2])

    # the same pipeline's last step exits at σ = 0 after 6 steps; asking for more than ran is an error
    last = run_pipeline_to_step(pipe, exit_after=6, num_inference_steps=10,
                                generator=torch.Generator().manual_seed(3), **kwargs)
    assert last.sigma == pytest.approx(0.0) and (last.step, last.num_steps) == (6, 6)
    with pytest.raises(RuntimeError, match=r"ran 6 denoising steps.*exit_after <= 6"):
        run_pipeline_to_step(pipe, exit_after=7, num_inference_steps=10, **kwargs)
    # a text-to-image run on the same scheduler afterwards starts at index 0 again
    t2i = run_pipeline_to_step(FluxPipeline(**components), exit_after=2, num_inference_steps=10,
                               prompt="a photo", height=32, width=48, max_sequence_length=16)
    assert t2i.sigma == pytest.approx(0.8) and (t2i.step, t2i.num_steps, t2i.start) == (2, 10, 0)


def _tiny_sd3_img2img_pipeline(shift: float):
    """A real diffusers StableDiffusion3Img2ImgPipeline at a tiny random size; prompts are given as
    embeddings, so no text encoder is built."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Img2ImgPipeline)

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        caption_projection_dim=16, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4).eval()
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, shift_factor=0.0609, scaling_factor=1.5305).eval()
    return StableDiffusion3Img2ImgPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=vae,
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
        tokenizer_3=None)


def test_sd3_img2img_exit_reads_the_shifted_sigma_after_the_skipped_steps():
    """Second instance of the same kind: SD3 img2img (shift 3), strength 0.5 of 8 steps starts at index 4."""
    pipe = _tiny_sd3_img2img_pipeline(shift=3.0)
    g = torch.Generator().manual_seed(1)
    kwargs = dict(image=torch.rand(1, 3, 32, 32), strength=0.5, guidance_scale=1.0,
                  prompt_embeds=torch.randn(1, 5, 32, generator=g),
                  pooled_prompt_embeds=torch.randn(1, 64, generator=g))
    seen = {}
    pipe(num_inference_steps=8, callback_on_step_end=_record_latents(seen),
         callback_on_step_end_tensor_inputs=["latents"], output_type="latent",
         generator=torch.Generator().manual_seed(3), **kwargs)
    assert sorted(seen) == [1, 2, 3, 4]
    sigmas = pipe.scheduler.sigmas  # the full 8-step shifted schedule (+ the final 0)
    state = run_pipeline_to_step(pipe, exit_after=2, num_inference_steps=8,
                                 generator=torch.Generator().manual_seed(3), **kwargs)
    start = 8 - int(8 * 0.5)  # diffusers' get_timesteps: the first N − int(N·strength) steps are skipped
    assert (state.step, state.num_steps, state.start) == (2, 4, start)

    def shifted(u):  # SD3's time shift 3
        return 3 * u / (1 + 2 * u)

    # FlowMatchEulerDiscreteScheduler: unshifted σ evenly spaced from 1 to the shifted σ_min = shift(1/1000)
    u = 1 + (start + 2) * (shifted(1 / 1000) - 1) / 7
    assert state.sigma == pytest.approx(shifted(u), abs=1e-5)
    assert state.sigma == pytest.approx(0.3380, abs=1e-4)
    assert state.sigma == pytest.approx(float(sigmas[start + 2]))
    assert state.sigma != pytest.approx(float(sigmas[2]))
    torch.testing.assert_close(state.latent, seen[2])


def test_sdxl_img2img_euler_exit_converts_the_sigma_it_really_stopped_at():
    """The same kind with a VE-frame sampler: SDXL img2img with Euler, strength 0.5 of 10 steps, starts at
    index 5; after 2 steps the state is at the Euler σ_ve = sigmas[7], converted to σ_vp = σ_ve/√(σ_ve²+1)."""
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline,
                           UNet2DConditionModel)

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,  # 6 size/crop ids × 8 + the 32-d pooled prompt
        cross_attention_dim=16, norm_num_groups=4).eval()
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, scaling_factor=0.13025).eval()
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       timestep_spacing="leading", steps_offset=1)  # SDXL's
    pipe = StableDiffusionXLImg2ImgPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                            tokenizer_2=None, unet=unet, scheduler=scheduler,
                                            requires_aesthetics_score=False)
    g = torch.Generator().manual_seed(1)
    kwargs = dict(image=torch.rand(1, 3, 32, 32), strength=0.5, guidance_scale=1.0,
                  prompt_embeds=torch.randn(1, 5, 16, generator=g),
                  pooled_prompt_embeds=torch.randn(1, 32, generator=g))
    seen = {}
    pipe(num_inference_steps=10, callback_on_step_end=_record_latents(seen),
         callback_on_step_end_tensor_inputs=["latents"], output_type="latent",
         generator=torch.Generator().manual_seed(3), **kwargs)
    assert sorted(seen) == [1, 2, 3, 4, 5]
    state = run_pipeline_to_step(pipe, exit_after=2, num_inference_steps=10,
                                 generator=torch.Generator().manual_seed(3), **kwargs)
    assert (state.step, state.num_steps, state.start, state.frame) == (2, 5, 5, "ve")
    s_ve = float(pipe.scheduler.sigmas[5 + 2])
    assert state.raw_sigma == pytest.approx(s_ve)
    assert state.raw_sigma != pytest.approx(float(pipe.scheduler.sigmas[2]))
    assert state.sigma == pytest.approx(s_ve / math.sqrt(s_ve**2 + 1))
    torch.testing.assert_close(state.latent, seen[2] / math.sqrt(s_ve**2 + 1))
