"""Evaluation runs that sit at the pipeline level (they drive the families' pipelines):

- ``fid_compare``: FID comparison runs (generate N images per configured generator, FID against
  a reference set, Markdown / CSV / bar-chart report with the report's numbers as context), the
  orchestration of: ``compare_config`` (the YAML schema, loading, validation), ``generators``
  (the DDPM / LDM / GLIDE adapters and built-in fallbacks) and ``report`` (rows, report files).
- ``references``: reference image sets (one CIFAR-10 class, real digits of a class, rendered
  shapes-world scenes for a prompt).

``mind_diffusion.metrics`` holds the metric itself and never imports a family; this package
imports the families' pipelines lazily, inside its generator adapters.
"""
