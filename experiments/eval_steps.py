"""Teacher-vs-student steps table (docs/method.md §1: 4-step student vs 50-step teacher on NIQE and the rest):
the teacher at 1, 2, 4, 8, 25, 50 Euler steps and the DMD2 student at 1, 2, 4 steps, with latency.

    python experiments/eval_steps.py ckpt=TEACHER student_ckpt=STUDENT [eval=quickstart] [...]
"""

from _eval_common import run_study

if __name__ == "__main__":
    run_study("steps", [
        "methods.teacher_steps=[1,2,4,8,25,50]", "methods.student.num_steps=[1,2,4]",
        "methods.early_exit.enabled=false", "methods.native_lanczos=false",
        "methods.sr_cascade.enabled=false",
    ])
