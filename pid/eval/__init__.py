"""Evaluation of decoders (`make eval`, pid/evaluate.py).

    images.py      the one input convention of every metric (as_metric_images) and the crop helpers
    registry.py    Metric / Column / EvalContext and the MetricSuite that runs the configured metrics
    metrics.py     the metrics of the report, one class each (configured under metrics: in conf/eval.yaml)
    functional.py  metric functions: PSNR, SSIM, LPIPS, Inception features, FID/KID, patch-FID
    noref.py       no-reference scores of image batches; niqe.py, brisque.py, qalign.py: the scorers
    inception.py, frechet.py, clip_score.py   the FID Inception (offline), Fréchet distance, CLIP score
    inputs.py      checkpoints, device, the evaluation set and its groups
    baselines.py   the decode methods compared (cascades, PiD teacher/student, early exit)
    latency.py     latency and peak memory probes
    report.py      results.md/.csv/.json, plots, compare.html, W&B, driven by the registry's columns
    heldout.py     the held-out comparison printed after training
"""
