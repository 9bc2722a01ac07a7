"""The command-line scripts, installed as the package ``mind_diffusion_scripts`` (see
pyproject.toml): each defines ``main(argv=None)`` behind a console command (``md-txt2img`` …)
and still runs as ``python scripts/<name>.py``."""
