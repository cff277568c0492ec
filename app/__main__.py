"""Serve the tour guide: `python -m app [--backend B] [--model M ...] [--host H] [--port P] [--share]`.

The page (a map, interests, style, the model, streaming text) is at /, the HTTP API at
/tour-guide, /tour-guide/stream and /health. Without --model it loads the shipped default,
models/tour-guide-demo.gguf, through llama.cpp: no network needed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from models.backends import KINDS, BackendError

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "tour-guide-demo.gguf"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=KINDS, default=None, help="for every --model (default: from the reference)")
    parser.add_argument("--model", action="append", default=None,
                        help="a .gguf, an ONNX folder, a checkpoint dir or hub id (repeatable: the page offers each)")
    parser.add_argument("--base-url", default=None, help="openai backend: the server")
    parser.add_argument("--device", default=None, help="torch backend: cpu, cuda, auto")
    parser.add_argument("--tiles", default=None, help="online map tiles URL template, used when reachable")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also a public gradio.live link (needs internet)")
    return parser


def guides_from(args):
    from app.page import Guides

    options = {k: v for k, v in (("base_url", args.base_url), ("device", args.device)) if v}
    models = args.model or [str(DEFAULT_MODEL)]
    return Guides({f"{Path(m).name} ({args.backend or 'auto'})": (args.backend, m, options) for m in models})


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from an offline app
    import uvicorn

    from app.server import create_app

    args = build_parser().parse_args(argv)
    try:
        app = create_app(guides_from(args), tiles=args.tiles)
    except (BackendError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.share:
        print("--share: a public link needs Gradio's tunnel and internet; serving locally only", file=sys.stderr)
    print(f"Offline Tour Guide on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
