"""core.cli builds a parser from a config dataclass and the dataclass back from the parsed flags."""

import argparse
from dataclasses import dataclass, field

import pytest

from core.cli import add_config_flags, config_from_args


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    name: str = "a"


@dataclass(frozen=True)
class Outer:
    size: int = field(metadata={"help": "how big"})
    splits: tuple[str, ...] = field(default=("test", "known"),
                                    metadata={"aliases": ("--split",), "choices": ("test", "known", "val")})
    layers: tuple[int, ...] = ()
    texts: list[str] = field(default_factory=list, metadata={"aliases": ("--text",)})
    inner: Inner = field(default_factory=lambda: Inner(name="b"), metadata={
        "help": "inner settings",
        "fields": {"rate": "share of it", "name": {"help": "its name", "choices": ("a", "b")}}})


def parse(*argv):
    parser = add_config_flags(argparse.ArgumentParser(), Outer)
    return config_from_args(Outer, parser.parse_args(list(argv))), parser


def test_defaults_come_from_the_dataclass_and_a_nested_default_instance():
    config, parser = parse("--size", "3")
    assert config == Outer(size=3)
    assert config.inner == Inner(name="b")
    assert "share of it" in parser.format_help() and "inner settings" in parser.format_help()


def test_tuples_take_commas_or_repeats_and_replace_the_default():
    config, _ = parse("--size", "1", "--split", "val", "--splits", "test,known", "--layers", "3,1", "--text", "a, b")
    assert config.splits == ("val", "test", "known") and config.layers == (3, 1) and config.texts == ["a, b"]
    assert parse("--size", "1", "--rate", "0.25", "--name", "a")[0].inner == Inner(0.25, "a")


def test_bad_values_are_refused_by_argparse():
    for argv in (["--size", "1", "--split", "train"], ["--size", "1", "--name", "c"], []):
        with pytest.raises(SystemExit):
            parse(*argv)
