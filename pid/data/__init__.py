"""Data: the offline sample image set, crop datasets and the image-folder DataModule."""
