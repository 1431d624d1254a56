"""Early-exit curve (docs/method.md §5): decode latents noised to σ (an LDM's state after K of N steps is
(1−σ)z + σε) with PiD at the student's 4 steps (teacher when no student), next to native decode +
bicubic of the same noisy latents; writes quality_vs_sigma.png and the table.

    python experiments/eval_early_exit.py ckpt=TEACHER [student_ckpt=STUDENT] [eval=quickstart] [...]
"""

from _eval_common import run_study

if __name__ == "__main__":
    run_study("early_exit", [
        "methods.early_exit.sigmas=[0.0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]", "methods.teacher_steps=[]",
        "methods.native_lanczos=false", "methods.sr_cascade.enabled=false", "latency.enabled=false",
    ])
