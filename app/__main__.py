"""Serve the tour guide: `python -m app [--backend B] [--model M ...] [--host H] [--port P] [--share]`.

The page (a map, interests, style, the model, streaming text) is at /, the HTTP API at
/tour-guide, /tour-guide/stream and /health. Without --model it loads the shipped default,
models/tour-guide.gguf (the compressed SmolLM2 student), through llama.cpp: no network needed.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import signal
import sys
import threading
import time
from pathlib import Path

import uvicorn
from gradio.networking import setup_tunnel

from app.jobs import ServingConfig
from app.page import Guides
from app.server import create_app
from core.cli import add_config_flags, config_from_args, fail
from models.backends import KINDS, BackendError, detect_kind

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "tour-guide.gguf"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=KINDS, default=None, help="for every --model (default: from the reference)")
    parser.add_argument("--model", action="append", default=None,
                        help="a .gguf, an ONNX folder, a checkpoint dir or hub id, optionally KIND:MODEL "
                             "(torch:runs/demo/heal/student); repeatable: the page offers each")
    parser.add_argument("--base-url", default=None, help="openai backend: the server")
    parser.add_argument("--device", default=None, help="torch backend: cpu, cuda, auto")
    parser.add_argument("--tiles", default=None, help="online map tiles URL template, used when reachable")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also a public gradio.live link (needs internet)")
    parser.add_argument("--parallel", type=int, default=None,
                        help="llamacpp backend: contexts (answers at once); default: one per free core")
    add_config_flags(parser, ServingConfig)
    return parser


def guides_from(args):
    offered = {}
    for spec in args.model or [str(DEFAULT_MODEL)]:
        kind, _, model = spec.partition(":") if spec.split(":", 1)[0] in KINDS else (args.backend, "", spec)
        kind = kind or detect_kind(model)
        options = {}
        if kind == "torch" and args.device:
            options["device"] = args.device
        if kind == "openai" and args.base_url:
            options["base_url"] = args.base_url
        if kind == "llamacpp" and args.parallel:
            options["parallel"] = args.parallel
        offered[f"{Path(model).name} ({kind})"] = (kind, model, options)
    return Guides(offered, serving=config_from_args(ServingConfig, args))


class Server(uvicorn.Server):
    """uvicorn, but SIGTERM and Ctrl-C first end the answers in flight: uvicorn alone waits for
    every open connection, and a stream runs until its answer ends."""

    def __init__(self, config: uvicorn.Config, guides: Guides):
        super().__init__(config)
        self.guides = guides

    def handle_exit(self, sig, frame) -> None:
        # In a signal handler: take no lock here, let a thread do it.
        threading.Thread(target=self.guides.shutdown, daemon=True).start()
        super().handle_exit(sig, frame)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        guides = guides_from(args)
        app = create_app(guides, tiles=args.tiles)
    except (BackendError, FileNotFoundError, ValueError) as exc:
        return fail(exc)
    print(f"Offline Tour Guide on http://{args.host}:{args.port}/", flush=True)
    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                   timeout_graceful_shutdown=guides.serving.shutdown_grace_s), guides)
    if args.share:
        threading.Thread(target=share, args=(server, args.port), daemon=True).start()
    # uvicorn raises the signal again once it has shut down (for an outer handler); here nobody is
    # outside, so a SIGTERM that was answered is a clean exit, not death by signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, once uvicorn has shut down
        server.run()
    print("Offline Tour Guide stopped", flush=True)
    return 0


def share(server, port: int) -> None:
    """A public gradio.live link to this server through Gradio's tunnel, as `launch(share=True)`
    makes one (the page is mounted, not launched, so the tunnel is opened here). Needs internet."""
    while not server.started:
        time.sleep(0.1)
    try:
        url = setup_tunnel("127.0.0.1", port, secrets.token_urlsafe(32), None, None)
    except Exception as exc:  # offline, or the share server refused: the local server goes on
        print(f"--share: no public link ({type(exc).__name__}: {exc}); serving locally only", file=sys.stderr, flush=True)
        return
    print(f"Public link (72 hours): {url}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
