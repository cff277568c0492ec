"""Serve the tour guide: `python -m app [--backend B] [--model M] [--host H] [--port P]`.

Today this serves the HTTP API (app/api.py) on the shipped default model; the Gradio page is
mounted on the same server by the app issue's next step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.backends import KINDS, BackendError, open_backend

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "tour-guide-demo.gguf"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=KINDS, default=None, help="default: from the model reference")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a .gguf, an ONNX folder, a checkpoint dir or hub id")
    parser.add_argument("--base-url", default=None, help="openai backend: the server")
    parser.add_argument("--device", default=None, help="torch backend: cpu, cuda, auto")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    return parser


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from app.api import create_api
    from app.service import TourGuide

    args = build_parser().parse_args(argv)
    options = {k: v for k, v in (("base_url", args.base_url), ("device", args.device)) if v}
    try:
        backend = open_backend(args.backend, args.model, **options)
    except BackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    guide = TourGuide(backend, TourGuide.coverage_for(args.model))
    uvicorn.run(create_api(guide), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
