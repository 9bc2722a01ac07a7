"""``python -m mind_diffusion.webui`` (what ``webui.sh`` runs): serve the page on 127.0.0.1.

    bash webui.sh                      http://127.0.0.1:7860
    bash webui.sh --port 7861
    bash webui.sh --listen             all interfaces (0.0.0.0), with a warning
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv=None):
    from ..runtime import add_runtime_args

    p = argparse.ArgumentParser(prog="webui.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--listen", action="store_true",
                   help="serve on all network interfaces (0.0.0.0) instead of 127.0.0.1 only")
    p.add_argument("--models_dir", default=str(ROOT / "models"), help="where checkpoints are found")
    p.add_argument("--output_path", default=str(ROOT / "output"),
                   help="output folder (samples/, grids/, ddpm_samples/, glide/ as the scripts)")
    add_runtime_args(p)
    args = p.parse_args(argv)
    if not 1 <= args.port <= 65535:
        p.error(f"--port must be 1..65535, got {args.port}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the web page needs the webui extra: bash scripts/setup.sh webui", file=sys.stderr)
        return 2
    from ..cli import user_error_types
    from ..utils.images import check_output_dir
    from .app import CSS, build_app, theme
    from .engine import Engine

    try:
        out = check_output_dir(args.output_path)
        engine = Engine(ROOT, args.models_dir, out, args.device_target, args.mode, args.precision)
        engine.runtime()
    except user_error_types() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    if args.listen:
        print("warning: --listen serves the page on every network interface: anyone who can reach "
              f"this machine on port {args.port} can generate images and read {out}", file=sys.stderr)
    print(f"models: {sum(len(v) for v in engine.models.values())} found under {engine.models_dir}; "
          f"images go to {out}", flush=True)
    demo = build_app(engine)
    try:
        demo.launch(server_name=host, server_port=args.port, share=False, inbrowser=False,
                    allowed_paths=[str(out)], show_error=True, ssr_mode=False, mcp_server=False,
                    theme=theme(), css=CSS, footer_links=[])
    except OSError as exc:
        print(f"error: cannot serve on {host}:{args.port}: {exc}; pass --port with a free port",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
