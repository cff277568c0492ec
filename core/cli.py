"""Command lines built from a stage's config dataclass, so a default lives in exactly one place.

A field's flag is `--name-with-dashes` (plus any `metadata["aliases"]`); its type, default and
help come from the dataclass (`field(metadata={"help": ..., "choices": ...})`). `bool` fields
become --x / --no-x, `X | None` fields take an X or are left unset, tuples take comma-separated
values (a repeated flag adds to them), lists are repeatable. A field that is itself a dataclass
gets an argument group of its own fields, whose defaults are the outer default's values and whose
help may come from the outer field's `metadata["fields"]` ({name: help or {"help", "choices"}})
when the inner class is not ours to annotate.

    parser = argparse.ArgumentParser(...)
    add_config_flags(parser, CaptureConfig)
    config = config_from_args(CaptureConfig, parser.parse_args(argv))

`fail(message)` is every CLI's error tail: the message on stderr, exit status 2; `run_command` wraps
a CLI's action in it, and `new_parser` starts a stage's parser.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from dataclasses import MISSING, asdict, fields, is_dataclass, replace


def _unwrap(hint) -> tuple[object, bool]:
    """(the type, whether None is allowed) of `X | None` / Optional[X] / X."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def _comma_list(item_type, choices=None):
    def parse(text: str) -> tuple:
        items = tuple(item_type(part.strip()) for part in text.split(",") if part.strip())
        wrong = [item for item in items if choices is not None and item not in choices]
        if wrong:
            raise argparse.ArgumentTypeError(f"{wrong[0]!r} is not one of {', '.join(map(str, choices))}")
        return items

    parse.__name__ = f"comma-separated {getattr(item_type, '__name__', 'value')}s"
    return parse


class _Accumulate(argparse.Action):
    """A tuple flag: each occurrence adds its comma-separated values to those given before it
    (never to the default, which the first occurrence replaces)."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = vars(namespace).setdefault("_accumulated", set())
        before = getattr(namespace, self.dest) if self.dest in seen else ()
        seen.add(self.dest)
        setattr(namespace, self.dest, tuple(before) + tuple(values))


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(f, defaults):
    if defaults is not None:
        return getattr(defaults, f.name)
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def add_config_flags(parser, cls, skip: tuple[str, ...] = (), required: tuple[str, ...] = (),
                     defaults=None, helps: dict | None = None):
    """One flag per field of dataclass `cls` (except `skip`); `required` fields must be given.
    `defaults` (an instance of `cls`) and `helps` serve nested dataclass fields."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip or not f.init:
            continue
        kind, _ = _unwrap(hints[f.name])
        default = _default(f, defaults)
        extra = (helps or {}).get(f.name, {})
        meta = {**({"help": extra} if isinstance(extra, str) else extra), **f.metadata}
        if is_dataclass(kind):
            # argparse cannot nest groups: deeper dataclasses share their parent's group.
            group = parser.add_argument_group(meta.get("help", f.name)) if isinstance(parser, argparse.ArgumentParser) \
                else parser
            add_config_flags(group, kind, skip, required, None if default is MISSING else default,
                             meta.get("fields"))
            continue
        parser.add_argument(flag_name(f.name), *meta.get("aliases", ()),
                            **_flag_options(f.name, kind, default, meta, f.name in required))
    return parser


def _flag_options(name: str, kind, default, meta: dict, required: bool) -> dict:
    options: dict = {"dest": name, "help": meta.get("help")}
    if required or default is MISSING:
        options["required"] = True
    else:
        options["default"] = default
    origin = typing.get_origin(kind)
    choices = meta.get("choices")
    if kind is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif origin is tuple:
        options.update(type=_comma_list(typing.get_args(kind)[0], choices), action=_Accumulate)
        choices = None  # checked item by item
    elif origin is list:
        options.update(type=typing.get_args(kind)[0], action="append")
        if options.get("default") is not None:
            options["default"] = list(options["default"])
    else:
        options["type"] = kind
    if choices is not None:
        options["choices"] = choices
    if options.get("help") and "default" in options and options["default"] not in (None, (), []):
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else "%(default)s"  # as it is typed
        options["help"] += f" (default: {shown})"
    return options


def config_from_args(cls, args: argparse.Namespace, defaults=None, **overrides):
    """The dataclass `cls` from the parsed flags of `add_config_flags` (fields without a flag
    keep their defaults unless given in `overrides`)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if not f.init or f.name in overrides:
            continue
        kind, _ = _unwrap(hints[f.name])
        if is_dataclass(kind):
            inner = _default(f, defaults)
            values[f.name] = config_from_args(kind, args, None if inner is MISSING else inner)
        elif hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) and typing.get_origin(kind) is tuple else value
    values.update(overrides)
    return replace(defaults, **values) if defaults is not None else cls(**values)


def fail(message: object) -> int:
    """The one way a CLI reports a bad input or a failed step: `error: ...` on stderr, status 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def new_parser(prog: str, description: str, example: str | None = None) -> argparse.ArgumentParser:
    """A stage CLI's parser: `python -m PACKAGE.MODULE`, what it does, one example command."""
    return argparse.ArgumentParser(prog=prog, description=description,
                                   epilog=f"Example: {example}" if example else None)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None, action,
                errors: tuple[type[BaseException], ...] = (ValueError, OSError)) -> int:
    """Parse `argv` and return `action(args)`'s exit status; an error of the kinds in `errors` (what
    the user can fix: a bad input, a missing file) is reported by `fail` instead of a traceback."""
    args = parser.parse_args(argv)
    try:
        return action(args)
    except errors as exc:
        return fail(exc)


def print_report(report, as_json: bool) -> int:
    """A report dataclass on stdout, as JSON or as its `summary()`; the exit status of success."""
    print(json.dumps(asdict(report), indent=2) if as_json else report.summary())
    return 0
