"""Evaluation: offline FID Inception, paired detail measures (PSNR, feature distance, patch-FID)."""
