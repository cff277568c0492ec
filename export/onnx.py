"""ONNX export with a KV cache for onnxruntime-genai, through its own model builder.

    python -m export.onnx --model runs/demo/heal/student --out out/student-onnx-int4 --precision int4

onnxruntime-genai's builder knows Qwen3 (QK-norm, GQA, rope) and reads transformers 5
checkpoints; optimum-onnx pins transformers < 4.58 and cannot share an environment with the rest
of this project. The builder is driven through its documented command line in a child process
(its Python entry point wants internal option preparation), its chatter goes to `build.log`, and
the folder appears under its final name only once the build has succeeded.

Precisions: fp32 (the parity reference), int8 and int4 (weight-only, block-wise
MatMulNBits; embeddings and norms stay fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.artifacts import atomic_dir
from core.cli import fail, new_parser, print_report, run_command

PRECISIONS = ("fp32", "int8", "int4")


class OnnxExportError(RuntimeError):
    pass


@dataclass
class OnnxReport:
    out: str
    precision: str
    bytes: int  # every file of the folder: graph, external weights, tokenizer, config
    weight_bytes: int  # model.onnx + its external data
    seconds: float
    log: str

    def summary(self) -> str:
        return (f"{self.out}: {self.weight_bytes / 2**20:.2f} MiB of weights ({self.bytes / 2**20:.2f} MiB folder), "
                f"{self.precision}, built in {self.seconds:.1f} s; builder log {self.log}")


def export_onnx(model_dir: str | Path, out: str | Path, precision: str = "fp32", extra_options: dict | None = None,
                cache_dir: str | Path | None = None) -> OnnxReport:
    """Build an onnxruntime-genai folder (model.onnx + weights + genai_config.json + tokenizer)."""
    if precision not in PRECISIONS:
        raise OnnxExportError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    model_dir, out = Path(model_dir).resolve(), Path(out)
    if not (model_dir / "config.json").is_file():
        raise OnnxExportError(f"no config.json in {model_dir}: not a checkpoint directory")
    with atomic_dir(out) as partial:
        seconds = _build(model_dir, partial, precision, extra_options, cache_dir, out.with_name(out.name + ".build.log"))
        _write_card(partial, model_dir, precision)
    files = [p for p in out.iterdir() if p.is_file()]
    weights = [p for p in files if p.name.startswith("model.onnx")]
    return OnnxReport(str(out), precision, sum(p.stat().st_size for p in files),
                      sum(p.stat().st_size for p in weights), seconds, str(out / "build.log"))


def _build(model_dir: Path, partial: Path, precision: str, extra_options: dict | None, cache_dir, failed_log: Path) -> float:
    """The builder in a child process (it calls sys.exit and leaks memory), its log in the folder;
    a failed build's log is kept at `failed_log`, since the folder does not survive."""
    log_path = partial / "build.log"
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir), "-o", str(partial),
               "-p", precision, "-e", "cpu", "-c", str(cache_dir or partial / ".cache")]
    if extra_options:
        command += ["--extra_options", *(f"{k}={v}" for k, v in extra_options.items())]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    if done.returncode != 0 or not (partial / "genai_config.json").is_file():
        shutil.copyfile(log_path, failed_log)
        tail = log_path.read_text(errors="replace").splitlines()[-5:]
        raise OnnxExportError(f"the onnxruntime-genai builder failed (exit {done.returncode}); "
                              f"see {failed_log}: {' | '.join(tail)}")
    shutil.rmtree(partial / ".cache", ignore_errors=True)
    return seconds


def _write_card(folder: Path, source: Path, precision: str) -> None:
    """Where the folder came from, for whoever finds it later."""
    (folder / "export.json").write_text(json.dumps({"source": str(source), "precision": precision,
                                                    "builder": "onnxruntime_genai.models.builder"}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m export.onnx", __doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json, tokenizer, safetensors)")
    parser.add_argument("--out", required=True, help="folder to create")
    parser.add_argument("--precision", default="int4", choices=PRECISIONS)
    parser.add_argument("--extra-option", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to the builder's --extra_options, e.g. int4_block_size=32")
    parser.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _export, (OnnxExportError, OSError))


def _export(args) -> int:
    if any("=" not in item for item in args.extra_option):
        return fail("--extra-option takes KEY=VALUE")
    extra = dict(item.split("=", 1) for item in args.extra_option)
    return print_report(export_onnx(args.model, args.out, args.precision, extra), args.json)


if __name__ == "__main__":
    sys.exit(main())
