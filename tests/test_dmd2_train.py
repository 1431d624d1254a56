"""DMD2 distillation end to end at tiny size: backward simulation draws one step for all ranks, exact resume
(all networks, every optimiser and scheduler, EMA), student export loaded by the public API, clear error
when no teacher exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import skimage.data
import torch
from PIL import Image

from conftest import compose_train

# A smaller PiDNet than `tiny` (same classes) so a distillation iteration costs well under a second on CPU.
NET = ["model.net.hidden_size=64", "model.net.patch_depth=2", "model.net.pixel_attn_hidden_size=32",
       "model.net.txt_embed_dim=32", "model.net.adapter.width=32"]


def data_overrides(root: Path, out: Path) -> list[str]:
    return ["data=sample_images", f"data.root={root}", "data.crop_size=32", "data.batch_size=2",
            "data.num_workers=0", "data.train_repeats=2", "data.val_crops_per_image=1",
            f"latent.path={out}/latent.safetensors", f"paths.log_dir={out}/logs", "logger=csv",
            "~callbacks.progress", *NET]


def make_teacher(root: Path, out: Path) -> Path:
    """A tiny randomly initialised teacher, exported like `pid.train` does (also fits the latent)."""
    from pid.api import export_decoder
    from pid.train import build

    path = out / "teacher" / "pid_decoder.safetensors"
    if not path.is_file():
        cfg = compose_train(["experiment=quickstart", *data_overrides(root, out),
                             f"paths.output_dir={out}/teacher", "model.sampling.num_steps=3"])
        _, module, _ = build(cfg)
        export_decoder(module, path)
    return path


def distill_overrides(root: Path, out: Path, run: str, teacher: Path, *extra: str) -> list[str]:
    return ["experiment=quickstart_dmd2", *data_overrides(root, out), f"paths.output_dir={out}/{run}",
            f"model.teacher_ckpt={teacher}", "model.student_every=2", "model.gan.warmup_steps=2",
            "model.warmup_steps.student=2", "callbacks.image_grid.every_n_steps=0", "callbacks.ema.decay=0.5",
            "compare=false", *extra]


@pytest.fixture(scope="module")
def setup(tiny_image_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("dmd2")
    return tiny_image_root, out, make_teacher(tiny_image_root, out)


def test_backward_simulation_step_is_the_same_on_every_rank(setup):
    from pid.diffusion import dmd
    from pid.train import build

    root, out, teacher = setup
    cfg = compose_train(distill_overrides(root, out, "bs", teacher,
                                          "model.student_input=backward_simulation"))
    _, module, _ = build(cfg)
    calls = []
    module.net.register_forward_hook(lambda m, args, output: calls.append(float(args[1][0])))
    hq = torch.rand(2, 3, 32, 32) * 2 - 1
    z = torch.randn(2, 16, 1, 1)
    cond = {"latent": z, "sigma": torch.zeros(2), "y": None, "y_mask": None}
    steps_seen = set()
    for iteration in range(12):
        per_rank = []
        for rank in (0, 1):
            calls.clear()
            x0, t = module.student_x0(hq, cond, dmd.step_generator(0, iteration, rank),
                                      dmd.step_generator(0, iteration), with_grad=False)
            per_rank.append((list(calls), float(t[0])))
        assert per_rank[0][0] == per_rank[1][0], "both ranks run the same rollout length and times"
        assert per_rank[0][1] == per_rank[1][1]
        steps_seen.add(len(per_rank[0][0]))
        assert per_rank[0][0] == pytest.approx(module.t_list[:len(per_rank[0][0])])
    assert len(steps_seen) > 1, "the step varies across iterations"


def test_euler_student_rolls_out_and_decodes_deterministically(setup):
    from pid.diffusion import dmd
    from pid.train import build
    from pid.utils.errors import PiDConfigError

    root, out, teacher = setup
    cfg = compose_train(distill_overrides(root, out, "euler", teacher,
                                          "model.student_input=backward_simulation",
                                          "model.sampling.sampler=euler"))
    _, module, _ = build(cfg)
    inputs = []
    module.net.register_forward_hook(lambda m, args, output: inputs.append(args[0].detach().clone()))
    hq = torch.rand(2, 3, 32, 32) * 2 - 1
    cond = {"latent": torch.randn(2, 16, 1, 1), "sigma": torch.zeros(2), "y": None, "y_mask": None}
    iteration = next(i for i in range(50)
                     if int(torch.randint(0, 4, (1,), generator=dmd.step_generator(0, i))) == 2)
    inputs.clear()
    module.student_x0(hq, cond, dmd.step_generator(0, iteration, 0), dmd.step_generator(0, iteration),
                      with_grad=False)
    # The graded input at step 2 is the Euler ODE state from the same noise: x ← x + (t_{i+1} − t_i)·v̂.
    x = torch.randn(hq.shape, generator=dmd.step_generator(0, iteration, 0))
    with torch.no_grad():
        for i in range(2):
            t, t_next = module.t_list[i], module.t_list[i + 1]
            x = x + (t_next - t) * module.net(x, torch.full((2,), t), **cond)
    torch.testing.assert_close(inputs[2], x, rtol=1e-5, atol=1e-5)
    # The export decodes with the same sampler on the student times, as the module does.
    from pid.api import export_decoder, load_decoder

    z = torch.randn(2, 16, 1, 1)
    expected = module.decode(z, 0.0, generator=torch.Generator().manual_seed(1))
    decoder = load_decoder(export_decoder(module, out / "euler_student.safetensors"))
    assert decoder.sampling["sampler"] == "euler"
    got = decoder.decode(z, 0.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(Exception, match="model.sampling.sampler='heun'") as err:
        build(compose_train(distill_overrides(root, out, "heun", teacher, "model.sampling.sampler=heun")))
    assert isinstance(err.value.__cause__ or err.value, PiDConfigError)  # pid.train exits 2 with this message


def _student_inputs(iteration: int):
    """A real crop, a clean-latent condition and the iteration's (rank, shared) generator factory."""
    from pid.diffusion import dmd

    hq = torch.rand(2, 3, 32, 32) * 2 - 1
    cond = {"latent": torch.randn(2, 16, 1, 1), "sigma": torch.zeros(2), "y": None, "y_mask": None}
    return hq, cond, lambda: (dmd.step_generator(0, iteration, 0), dmd.step_generator(0, iteration))


def test_latent_consistency_term_joins_the_student_loss(setup):
    from pid.diffusion import losses
    from pid.train import build

    root, out, teacher = setup
    overrides = distill_overrides(root, out, "lc", teacher, "model.gan.gen_weight=0",
                                  "model.loss_weights.consistency=0", "model.loss_weights.regression=0",
                                  "model.consistency_pool=null")
    _, module, _ = build(compose_train(overrides))
    assert module.loss.consistency_pool == 32  # null: one latent cell, sr_scale × down factor = 32 px here
    hq, cond, gen = _student_inputs(0)

    base, logs = module.student_losses(hq, cond, *gen(), iteration=0)
    assert "consistency" not in logs  # weight 0: the paper's recipe
    module.loss.consistency = 2.0
    loss, logs = module.student_losses(hq, cond, *gen(), iteration=0)
    x0, _ = module.student_x0(hq, cond, *gen(), with_grad=False)
    want = losses.latent_consistency_loss(x0, hq, 32, cond["sigma"])
    assert logs["consistency"].item() == pytest.approx(want.item(), rel=1e-5)
    assert loss.item() == pytest.approx(base.item() + 2.0 * logs["consistency"].item(), rel=1e-5)


def test_regression_term_holds_the_student_to_the_guided_teacher_at_its_own_input(setup):
    from pid.train import build

    root, out, teacher = setup
    overrides = distill_overrides(root, out, "reg", teacher, "model.gan.gen_weight=0",
                                  "model.teacher_cfg.latent=3", "model.loss_weights.regression=0",
                                  "model.student_input=backward_simulation", "model.sampling.sampler=euler")
    _, module, _ = build(compose_train(overrides))
    with torch.no_grad():  # a student that differs from the teacher
        for p in module.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hq, cond, gen = _student_inputs(3)

    base, logs = module.student_losses(hq, cond, *gen(), iteration=3)
    assert "regression" not in logs  # weight 0: the paper's recipe
    module.loss.regression = 5.0
    loss, logs = module.student_losses(hq, cond, *gen(), iteration=3)
    x0, t, x = module.student_x0(hq, cond, *gen(), with_grad=False, with_input=True)
    with torch.no_grad():
        target = module.teacher_x0(x, t, cond)  # latent guidance 3 baked in
    want = torch.mean((x0 - target) ** 2)
    assert want.item() > 0
    assert logs["regression"].item() == pytest.approx(want.item(), rel=1e-5)
    assert loss.item() == pytest.approx(base.item() + 5.0 * want.item(), rel=1e-5)


def _states(module, trainer):
    from pid.lit.ema import find_ema

    nets = {k: v.detach().clone() for k, v in module.state_dict().items() if not k.startswith("latent.")}
    opts = [o.optimizer.state_dict() if hasattr(o, "optimizer") else o.state_dict()
            for o in trainer.optimizers]
    scheds = [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs]
    ema = find_ema(trainer)
    return nets, opts, scheds, {k: v.clone() for k, v in ema.shadow.items()}, ema.num_updates


def _assert_same(a, b):
    nets_a, opts_a, scheds_a, ema_a, n_a = a
    nets_b, opts_b, scheds_b, ema_b, n_b = b
    assert nets_a.keys() == nets_b.keys()
    for k in nets_a:
        torch.testing.assert_close(nets_a[k], nets_b[k], rtol=0, atol=0, msg=k)
    for oa, ob in zip(opts_a, opts_b, strict=True):
        for pid_, sa in oa["state"].items():
            for name, value in sa.items():
                torch.testing.assert_close(value, ob["state"][pid_][name], rtol=0, atol=0)
    for sa, sb in zip(scheds_a, scheds_b, strict=True):
        assert sa["last_epoch"] == sb["last_epoch"] and sa["_last_lr"] == sb["_last_lr"]
    assert n_a == n_b
    for k in ema_a:
        torch.testing.assert_close(ema_a[k], ema_b[k], rtol=0, atol=0)


@pytest.mark.slow
def test_resume_is_exact_and_the_student_exports_as_a_plain_decoder(setup):
    from pid.api import export_decoder, load_decoder
    from pid.lit.ema import find_ema
    from pid.train import build

    _, out, teacher = setup
    # One training image of exactly the crop size, no flips: every batch is the same whatever the data order,
    # so the comparison isolates the module's state and its per-iteration seeded randomness.
    root = out / "single"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(skimage.data.astronaut()[100:132, 200:232]).save(root / split / "a.png")
    ckpt = ["callbacks.model_checkpoint.every_n_train_steps=2", "+data.hflip=false", "data.train_repeats=4"]
    # A: 4 iterations in one go (student, critic, student, critic)
    cfg = compose_train(distill_overrides(root, out, "a", teacher, "trainer.max_steps=4", *ckpt))
    dm, module_a, trainer_a = build(cfg)
    trainer_a.fit(module_a, datamodule=dm)
    assert trainer_a.global_step == 4
    logged = trainer_a.callback_metrics
    for key in ("vsd", "dsm", "gan_g", "gan_d", "r1", "grad_norm/student", "grad_norm/fake_score",
                "grad_norm/discriminator"):
        assert torch.isfinite(logged[f"train/{key}"]), key
    assert logged["train/student_updates"] == 2

    # B: resume A's checkpoint after 2 iterations and run to 4
    mid = out / "a" / "checkpoints" / "step_0000002.ckpt"
    saved = torch.load(mid, map_location="cpu", weights_only=True)
    prefixes = {k.split(".")[0] for k in saved["state_dict"]}
    assert {"net", "fake_score", "teacher", "discriminator"} <= prefixes
    assert len(saved["optimizer_states"]) == 3 and len(saved["lr_schedulers"]) == 3 and "ema" in saved
    cfg = compose_train(distill_overrides(root, out, "b", teacher, "trainer.max_steps=4", *ckpt,
                                          f"ckpt_path={mid}"))
    dm, module_c, trainer_c = build(cfg)
    trainer_c.fit(module_c, datamodule=dm, ckpt_path=cfg.ckpt_path)
    assert trainer_c.global_step == 4
    _assert_same(_states(module_a, trainer_a), _states(module_c, trainer_c))

    # The student is a plain PiD decoder: the API loads it and decodes with the student's 4-step sampler.
    ema = find_ema(trainer_a)
    export = export_decoder(module_a, out / "student.safetensors", ema=ema)
    z = torch.randn(2, 16, 1, 1)
    with ema.averaged(module_a):
        expected = module_a.decode(z, 0.3, generator=torch.Generator().manual_seed(5))
    for path in (export, out / "a" / "checkpoints" / "last.ckpt"):
        decoder = load_decoder(path)
        got = decoder.decode(z, 0.3, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    from pid.diffusion.schedules import student_timesteps

    explicit = decoder.decode(z, 0.3, sampler="euler", timesteps=student_timesteps(),
                              generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(explicit, expected, rtol=0, atol=0)

    # Exported in NVIDIA's released layout (model_ema_bf16.pth + its preset), the student loads as an
    # official release file and decodes identically (float32: exact; bfloat16 as the releases: the same
    # rounded weights).
    from pid.weights import load_weights, read_weights
    from pid.weights.export import main as export_release_cli

    for dtype in ("float32", "bfloat16"):
        released = export_release_cli([str(export), str(out / dtype / "model_ema_bf16.pth"),
                                       "--dtype", dtype, "--target", "pid"])  # EDM output: pid's target
        raw = torch.load(released, weights_only=True)
        assert all(k.startswith("net.") for k in raw)
        assert raw["net.lq_proj.gate_modules.0.log_alpha"].ndim == 0
        official = load_decoder(released, release=released.with_suffix(".yaml"))
        assert read_weights(released).layout == "official-release"
        if dtype == "float32":
            got = official.decode(z, 0.3, generator=torch.Generator().manual_seed(5))
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
        else:
            ours = {k: v.to(torch.bfloat16).float() for k, v in load_decoder(export).net.state_dict().items()}
            assert all(torch.equal(ours[k], v) for k, v in official.net.state_dict().items())
            report = load_weights(official.net, released)
            assert report.num_left_at_init == 0 and not report.skipped

    # The held-out report runs (a stand-in feature extractor keeps it fast) and says who wins.
    from pid.lit.distill_compare import compare_student_teacher

    class Features(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x.float(), 8).flatten(1)

    metrics = compare_student_teacher(module_a, dm, ema=ema, out_dir=out / "cmp", teacher_steps=3,
                                      max_crops=2, extractor=Features())
    for name in ("student_4step", "teacher_4step", "teacher_3step", "teacher_4step_euler", "baseline"):
        assert metrics[f"heldout/{name}_inception_dist"] >= 0
    assert (out / "cmp" / "distill_comparison.json").is_file()
    summary = json.loads((out / "cmp" / "distill_comparison.json").read_text())["summary"]
    assert "not ranked with 1 crop" in summary and " ahead (" not in summary  # 1 crop decides nothing


def test_missing_teacher_names_the_config_key(setup, tmp_path):
    from pid.train import build
    from pid.utils.errors import MissingWeightsError

    root, out, _ = setup
    cfg = compose_train(["experiment=quickstart_dmd2", *data_overrides(root, out),
                         f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}/no_runs"])
    with pytest.raises(Exception) as err:
        build(cfg)
    cause = err.value if isinstance(err.value, MissingWeightsError) else err.value.__cause__
    assert isinstance(cause, MissingWeightsError), err.value  # pid.train exits 2 with this message
    assert "model.teacher_ckpt" in str(cause) and "make train exp=quickstart" in str(cause)


def test_the_log_names_the_teacher_file_a_glob_chose(setup, caplog):
    import logging
    import shutil

    from pid.train import build

    root, out, teacher = setup
    runs = out / "glob_runs"
    for name in ("a", "b"):
        (runs / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(teacher, runs / name / "pid_decoder.safetensors")
    newest = runs / "b" / "pid_decoder.safetensors"
    newest.touch()
    pattern = f"{runs}/*/pid_decoder.safetensors"
    with caplog.at_level(logging.INFO, logger="pid"):
        build(compose_train(distill_overrides(root, out, "glob", Path(pattern))))
    messages = [r.getMessage() for r in caplog.records]
    assert f"model.teacher_ckpt={pattern}: {newest}, the newest compatible one of 2 matches" in messages
    assert f"teacher: {newest}" in messages


def test_teacher_of_another_latent_geometry_or_a_run_folder(setup, tmp_path):
    """A teacher written before fingerprints whose run config names another latent geometry is refused
    before any weight is loaded, naming both identities and the overrides that fit it; a run folder stands
    for its export; a text file is named as such."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from pid.train import build
    from pid.utils.errors import PiDConfigError

    root, out, teacher = setup
    with safe_open(str(teacher), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["config"])
    config["latent"]["down_factor"] = 4
    other = tmp_path / "other" / "pid_decoder.safetensors"
    other.parent.mkdir()
    old_meta = {k: v for k, v in meta.items() if k != "identity"}  # a file written before fingerprints
    save_file(tensors, str(other), metadata={**old_meta, "config": json.dumps(config)})
    with pytest.raises(Exception) as err:
        build(compose_train(distill_overrides(root, out, "geom", other)))
    cause = err.value if isinstance(err.value, PiDConfigError) else err.value.__cause__
    assert isinstance(cause, PiDConfigError), err.value
    assert "latent down factor 4 vs 8" in str(cause) and "written before fingerprints" in str(cause)
    assert "`latent=patch_pca latent.down_factor=4" in str(cause)

    _, module, _ = build(compose_train(distill_overrides(root, out, "folder", teacher.parent)))
    assert module.teacher_path == teacher

    (tmp_path / "notes.txt").write_text("a text file")
    with pytest.raises(Exception) as err:
        build(compose_train(distill_overrides(root, out, "txt", tmp_path / "notes.txt")))
    cause = err.value if isinstance(err.value, PiDConfigError) else err.value.__cause__
    assert "is not a weights file" in str(cause) and "b'a text f" in str(cause)
