"""data_prep: command-line tools that turn image folders, file lists, the MultiAspect-4K-1M layout
and PDFs into quality-scored WebDataset shards for ``pid.data``.

Stages (each re-runnable, each reading and writing JSON-lines files in one work directory)::

    python -m data_prep ingest       --work W --folder DIR [--list FILE] [--multiaspect ROOT]
    python -m data_prep render-pdfs  --work W PDF_OR_DIR ... [--dpi 150] [--caption TEXT]
    python -m data_prep score        --work W [--scorer niqe|sharpness|qalign]
    python -m data_prep filter       --work W [--buckets single --base-size 2048] [--min-score ...]
    python -m data_prep write-shards --work W --out SHARDS [--shard-bytes 256MB]
    python -m data_prep build        --work W --out SHARDS --folder DIR --pdf DIR   (all of the above)
    python -m data_prep sample       [--out data/sample_shards]   (the offline embedded data set; make data)
    python -m data_prep.sample_set   OUT_DIR                      (its image folders only: train/, val/)

Every dropped input is written to ``W/<stage>.dropped.jsonl`` with a reason; ``write-shards``
collects them into ``SHARDS/report.{json,md}`` with PNG histograms. Quality scorers (NIQE, BRISQUE,
Q-Align) come from ``pid.eval``; data_prep imports pid, never the reverse.
"""
