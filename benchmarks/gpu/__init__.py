"""The one-shot GPU run of the pipeline benchmark: ``benchmarks/gpu/run.sh`` and the summary
it ends with (:mod:`benchmarks.gpu.summary`)."""
