"""The local web page (optional extra: ``bash scripts/setup.sh webui``, then ``bash webui.sh``).

``models`` finds the checkpoints, ``engine`` runs the pipelines and writes the files (no
gradio), ``pnginfo`` reads settings back from PNGs, ``app`` is the gradio page."""
