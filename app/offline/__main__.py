"""`python -m app.offline build --out DIR` writes the offline tour guide as a static site;
`python -m app.offline serve DIR [--port P]` serves a built one with the headers it needs."""

from __future__ import annotations

import argparse
import contextlib
import sys

from app.offline.serve import serve_folder
from app.offline.site import SiteConfig, build
from core.cli import add_config_flags, config_from_args, fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.offline", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="write the site into a folder (replaced whole)")
    make.add_argument("--out", required=True, help="the folder; publish it on any static host")
    add_config_flags(make, SiteConfig)
    serve = commands.add_parser("serve", help="serve a built site (COOP/COEP headers, .wasm as application/wasm)")
    serve.add_argument("folder")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "build":
            site = build(config_from_args(SiteConfig, args), args.out)
            size = sum(len(s) if isinstance(s, bytes) else s.stat().st_size for s in site.files.values())
            print(f"{len(site.files)} files, {size / 2**20:.1f} MiB -> {args.out}")
            return 0
        server = serve_folder(args.folder, args.host, args.port)
    except (OSError, ValueError) as exc:
        return fail(exc)
    print(f"Offline Tour Guide on http://{args.host}:{args.port}/", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends a preview
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
