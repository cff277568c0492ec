"""Layer redundancy on a real checkpoint with and without its massive-activation tokens.

    python -m bench.sinks --samples 32 --out docs/results/real-analysis.md

SmolLM2-135M-Instruct (models.pretrained) answers corpus prompts; a stats capture records every
layer; compress.analyze scores the layers twice: over all tokens, and without the tokens whose
residual norm runs far above the rest (attention sinks). The page shows how that changes which
layers look redundant, and Gromov's last-token angle beside the all-token mean.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import real_teacher_and_corpus, reproduce_command, work_folder
from compress.analyze import analyze
from compress.capture import CaptureConfig, Sources, run_capture
from core.artifacts import write_atomic, write_json
from models.load import LoadOptions


def measure(samples: int, work: Path) -> dict:
    model, corpus = real_teacher_and_corpus(work)
    capture = work / "capture"
    run_capture(str(model), capture, Sources(data=str(corpus)),
                CaptureConfig(limit=samples, max_new_tokens=96, batch_size=8, max_length=448),
                LoadOptions(dtype="bfloat16"), progress=False)
    return analyze(capture, work / "analysis", plots=False)


def _bottom(ranking: list[int], k: int) -> str:
    return ", ".join(str(x) for x in sorted(ranking[:k]))


def render(result: dict, command: str, k: int = 8) -> str:
    u = result["unweighted"]
    full = u.get("with_sinks", u)
    lines = [
        "# Layer redundancy of SmolLM2-135M-Instruct, with and without its massive-activation tokens",
        "",
        f"Command: `{command}`. {result['samples']} corpus prompts answered greedily by the base model "
        f"(bf16), {result['tokens']:,} tokens; unweighted statistics. Tokens left out as massive "
        f"activations (norm above 20x the sample's median at some residual state): {u['sink_share']:.1%}.",
        "",
        f"The {k} layers that look least important (the candidates depth pruning removes first):",
        "",
        "| statistics | least important layers |",
        "|---|---|",
        f"| all tokens | {_bottom(full['ranking'], k)} |",
        f"| without massive-activation tokens | {_bottom(u['ranking'], k)} |",
        "",
        "| layer | 1 - cos, all | 1 - cos, no sinks | CKA to next, all | CKA to next, no sinks | "
        "angular, all tokens | angular, last token |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, layer in enumerate(result["layers"]):
        lines.append(f"| {layer} | {full['block_influence'][i]:.4f} | {u['block_influence'][i]:.4f} | "
                     f"{full['cka_next'][i]:.4f} | {u['cka_next'][i]:.4f} | {u['angular_1'][i]:.4f} | "
                     f"{u['angular_last'][i]:.4f} |")
    lines += ["", "Angular distance is arccos(cos(layer input, layer output)) / π: the all-token column averages it "
              "over every token left in, the last-token column is Gromov et al.'s form (the last token of each "
              "sample, averaged over samples)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sinks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--work", help="where the corpus and the capture go (default: a temporary folder)")
    parser.add_argument("--out", default="docs/results/real-analysis.md")
    args = parser.parse_args(argv)
    out = Path(args.out)
    with work_folder(args.work) as work:
        result = measure(args.samples, work)
    keep = ("samples", "tokens", "layers", "unweighted", "weighted")
    write_json(out.with_suffix(".json"), {k: result[k] for k in keep})
    command = reproduce_command("bench.sinks", sys.argv[1:] if argv is None else argv, out, "real-analysis.md")
    write_atomic(out, render(result, command))
    print(json.dumps({"sink_share": result["unweighted"]["sink_share"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
