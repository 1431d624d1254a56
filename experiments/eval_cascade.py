"""Cascade comparison: PiD (student at 4 steps, teacher at N) vs native decode + bicubic / Lanczos /
diffusion SR (same backbone class, same steps) / external upscalers, on FID, patch-FID, patch-KID, fidelity,
no-reference quality, CLIP score, latency and memory. Writes results.md/.csv, plots and compare.html.

    python experiments/eval_cascade.py ckpt=PATH sr_cascade_ckpt=PATH [student_ckpt=PATH] \
        [eval=quickstart] [...]
"""

from _eval_common import run_study

if __name__ == "__main__":
    run_study("cascade", ["methods.early_exit.enabled=false"])
