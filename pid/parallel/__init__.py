"""Parallelism beyond data parallel: context parallelism (:mod:`pid.parallel.context`)."""
