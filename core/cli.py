"""Command lines built from a stage's config dataclass, so a default lives in exactly one place.

A field's flag is `--name-with-dashes`; its type, default and help come from the dataclass
(`field(metadata={"help": ..., "choices": ...})`). `bool` fields become --x / --no-x, `X | None`
fields take an X or are left unset, tuples take comma-separated values, lists are repeatable.

    parser = argparse.ArgumentParser(...)
    add_config_flags(parser, CaptureConfig)
    config = config_from_args(CaptureConfig, parser.parse_args(argv))

`fail(message)` is every CLI's error tail: the message on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from dataclasses import MISSING, fields


def _unwrap(hint) -> tuple[object, bool]:
    """(the type, whether None is allowed) of `X | None` / Optional[X] / X."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def _comma_list(item_type):
    def parse(text: str) -> tuple:
        return tuple(item_type(part.strip()) for part in text.split(",") if part.strip())

    parse.__name__ = f"comma-separated {getattr(item_type, '__name__', 'value')}s"
    return parse


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (),
                     required: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """One flag per field of dataclass `cls` (except `skip`); `required` fields must be given."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip or not f.init:
            continue
        kind, _ = _unwrap(hints[f.name])
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        options: dict = {"dest": f.name, "help": f.metadata.get("help")}
        if f.name in required or (f.default is MISSING and f.default_factory is MISSING):
            options["required"] = True
        else:
            options["default"] = default
        origin = typing.get_origin(kind)
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif origin is tuple:
            options["type"] = _comma_list(typing.get_args(kind)[0])
        elif origin is list:
            options.update(type=typing.get_args(kind)[0], action="append")
            if options.get("default") is not None:
                options["default"] = list(options["default"])
        else:
            options["type"] = kind
        if "choices" in f.metadata:
            options["choices"] = f.metadata["choices"]
        if options.get("help") and "default" in options and options["default"] not in (None, (), []):
            options["help"] += " (default: %(default)s)"
        parser.add_argument(flag_name(f.name), **options)
    return parser


def config_from_args(cls, args: argparse.Namespace, **overrides):
    """The dataclass `cls` from the parsed flags of `add_config_flags` (fields without a flag
    keep their defaults unless given in `overrides`)."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if f.init and hasattr(args, f.name)}
    for name, value in values.items():
        if isinstance(value, list) and typing.get_origin(_unwrap(typing.get_type_hints(cls)[name])[0]) is tuple:
            values[name] = tuple(value)
    values.update(overrides)
    return cls(**values)


def fail(message: object) -> int:
    """The one way a CLI reports a bad input or a failed step: `error: ...` on stderr, status 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2
