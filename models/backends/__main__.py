"""Ask a tour-guide model one question from the command line, through any backend.

    python -m models.backends --model out/student-q8_0.gguf --where "46V8+84 Sydney" \
        --interests architecture,history --style brief
"""

from __future__ import annotations

import argparse
import json
import sys

from core.cli import fail
from data.geo import GeoError, parse
from data.prompt import TourQuery
from data.vocab import INTERESTS, STYLES
from models.backends import KINDS, BackendError, GenerationOptions, open_backend


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models.backends", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint dir / hub id, .gguf file, ONNX folder, or served model name")
    parser.add_argument("--backend", choices=KINDS, default=None, help="default: from the model reference")
    parser.add_argument("--where", required=True, help="'lat, lon' or a Plus Code, e.g. '46V8+84 Sydney'")
    parser.add_argument("--interests", default="history", help=f"comma-separated, from {', '.join(INTERESTS)}")
    parser.add_argument("--style", default="brief", choices=list(STYLES))
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch: cpu, cuda, auto")
    parser.add_argument("--base-url", default=None, help="openai: the server, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--extra-body", default=None, metavar="JSON",
                        help='openai: server-specific fields, e.g. \'{"repeat_penalty": 1.0}\' for llama.cpp\'s server')
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = {}
    if args.device:
        options["device"] = args.device
    if args.base_url:
        options["base_url"] = args.base_url
    if args.extra_body:
        try:
            options["extra_body"] = json.loads(args.extra_body)
        except ValueError as exc:
            return fail(f"--extra-body is not JSON: {exc}")
    try:
        place = parse(args.where)
        query = TourQuery(place.plus_code, place.short_code, place.locality,
                          tuple(i.strip() for i in args.interests.split(",") if i.strip()), args.style)
        generation = GenerationOptions(args.temperature, args.top_p, args.max_tokens, tuple(args.stop), args.seed)
        backend = open_backend(args.backend, args.model, **options)
    except (GeoError, ValueError, BackendError) as exc:
        return fail(exc)
    with backend:
        try:
            if args.json:
                done = backend.complete(query, generation)
                print(json.dumps({"location": query.location, "text": done.text, **backend.describe(),
                                  "stats": done.stats.to_dict()}))
                return 0
            print(f"[{query.location}]", file=sys.stderr)
            for chunk in backend.stream(query, generation):
                print(chunk.text, end="", flush=True)
        except BackendError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return 1
    stats = chunk.stats
    rate = f"{stats.tokens_per_s:.1f} tok/s" if stats.tokens_per_s else "-"
    print(f"\n[{stats.completion_tokens} tokens, first after {stats.time_to_first_token_s or 0:.3f} s, {rate}, "
          f"peak RSS {stats.peak_rss_bytes / 2**20:.0f} MiB, {stats.finish_reason}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
