"""QA metrics between two checkpoints on held-out samples, logged per run.

    python -m compress.transport.qa --config configs/qa.toml

Teacher-forced on the reference answers of held-out corpus rows (answer tokens only):
- `logit_kl`: KL(reference || candidate) of the next-token distributions, nats per token;
- `surprisal`: the candidate's negative log-likelihood of the reference tokens, nats per token
  (the reference's own, for scale, next to it);
- `hidden_state_cosine`: per candidate layer, mean cosine of its output with the output of the
  reference layer it came from (the pruning plan's `keep`), on the kept hidden channels when the
  widths differ (the width plan's `kept`), else channel by channel;
- `residual_rms`: per layer, the RMS of each model's residual stream.

All states are layer outputs before the final norm. One JSON line per evaluation is appended to runs/<run_id>/logs/metrics.jsonl, which the
pipeline's report draws.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from compress.calibration import encode_rows, pad_batch, split_rows
from compress.depth import kept_layers
from core.cli import fail
from core.config import from_table
from models.load import LoadOptions, decoder_layers, load_model

METRICS = ("logit_kl", "surprisal", "hidden_state_cosine", "residual_rms")
LOG = Path("logs") / "metrics.jsonl"


class QAConfigError(ValueError):
    pass


@dataclass(frozen=True)
class QAConfig:
    reference: str  # checkpoint directory (the teacher)
    candidate: str  # checkpoint directory (the student)
    data: str  # corpus directory
    run_id: str = "qa"
    runs_dir: str = "runs"
    split: str = "test"
    samples: int = 32
    max_length: int = 512
    batch_size: int = 8
    metrics: tuple[str, ...] = METRICS
    plan: str | None = None  # pruning_plan.json: which reference layer each candidate layer came from
    width_plan: str | None = None  # width_plan.json: the reference's hidden channels the candidate kept
    label: str | None = None  # how the report names the candidate

    def __post_init__(self) -> None:
        unknown = set(self.metrics) - set(METRICS)
        if unknown:
            raise QAConfigError(f"unknown metric(s) {sorted(unknown)}; choose from {list(METRICS)}")
        if self.samples < 1 or self.batch_size < 1:
            raise QAConfigError("samples and batch_size must be positive")

    @classmethod
    def from_file(cls, path: str | Path) -> QAConfig:
        """A [qa] table of a TOML file, or a JSON object."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            raw = tomllib.loads(text).get("qa", {}) if path.suffix == ".toml" else json.loads(text)
        except (OSError, ValueError) as exc:
            raise QAConfigError(f"cannot read {path}: {exc}") from None
        return from_table(cls, raw, "qa")


@torch.no_grad()
def _states(model, ids: torch.Tensor, mask: torch.Tensor):
    """Logits and every layer's output, all before the final norm: transformers hands back the
    last layer's output after the model's final norm, so that one is taken by a hook instead."""
    last = {}
    hook = decoder_layers(model)[-1].register_forward_hook(
        lambda module, args, output: last.__setitem__("out", output[0] if isinstance(output, tuple) else output))
    try:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    finally:
        hook.remove()
    states = [h.float() for h in out.hidden_states[1:-1]] + [last["out"].float()]
    return out.logits.float(), states


@torch.no_grad()
def measure(config: QAConfig, progress: bool = False) -> dict:
    reference, tokenizer = load_model(config.reference, LoadOptions(dtype="float32"))
    candidate, _ = load_model(config.candidate, LoadOptions(dtype="float32"))
    rows = split_rows(config.data, config.split, config.samples)
    sequences = encode_rows(rows, tokenizer, config.max_length)
    n_ref, n_cand = reference.config.num_hidden_layers, candidate.config.num_hidden_layers
    keep = kept_layers(config.plan, required=True) if config.plan else list(range(n_cand))
    if len(keep) != n_cand:
        raise QAConfigError(f"the plan keeps {len(keep)} layers, the candidate has {n_cand}")
    channels = None
    if reference.config.hidden_size != candidate.config.hidden_size:
        if not config.width_plan:
            raise QAConfigError("the widths differ: give width_plan (the kept hidden channels) for hidden_state_cosine")
        channels = torch.tensor(sorted(json.loads(Path(config.width_plan).read_text())["kept"]["hidden"]))
    tokens, kl, nll_c, nll_r = 0, 0.0, 0.0, 0.0
    cos = torch.zeros(n_cand, dtype=torch.float64)
    rms_c = torch.zeros(n_cand, dtype=torch.float64)
    rms_r = torch.zeros(n_ref, dtype=torch.float64)
    for start in range(0, len(sequences), config.batch_size):
        chunk = sequences[start:start + config.batch_size]
        ids, mask = pad_batch(chunk)
        answer = torch.zeros(ids.shape, dtype=torch.bool)  # positions predicting an answer token
        targets = torch.zeros(ids.shape, dtype=torch.long)
        for row, seq in enumerate(chunk):
            answer[row, seq.answer_start - 1:len(seq.ids) - 1] = True
            targets[row, :len(seq.ids) - 1] = torch.tensor(seq.ids[1:])
        logits_r, states_r = _states(reference, ids, mask)
        logits_c, states_c = _states(candidate, ids, mask)
        log_r = torch.log_softmax(logits_r[answer], -1)
        log_c = torch.log_softmax(logits_c[answer], -1)
        picked = targets[answer][:, None]
        tokens += int(answer.sum())
        kl += float((log_r.exp() * (log_r - log_c)).sum())
        nll_c -= float(log_c.gather(1, picked).sum())
        nll_r -= float(log_r.gather(1, picked).sum())
        for i, t_layer in enumerate(keep):
            s, t = states_c[i][answer], states_r[t_layer][answer]
            if channels is not None:
                t = t[:, channels]
            cos[i] += torch.nn.functional.cosine_similarity(s.double(), t.double(), dim=-1).sum()
            rms_c[i] += s.double().pow(2).mean(-1).sum()
        for j in range(n_ref):
            rms_r[j] += states_r[j][answer].double().pow(2).mean(-1).sum()
    out: dict = {"tokens": tokens, "samples": len(sequences), "keep": keep}
    if "logit_kl" in config.metrics:
        out["logit_kl"] = kl / tokens
    if "surprisal" in config.metrics:
        out["surprisal"] = nll_c / tokens
        out["surprisal_reference"] = nll_r / tokens
    if "hidden_state_cosine" in config.metrics:
        out["hidden_state_cosine"] = [round(float(v / tokens), 6) for v in cos]
    if "residual_rms" in config.metrics:
        out["residual_rms"] = [round(math.sqrt(v / tokens), 6) for v in rms_c.tolist()]
        out["residual_rms_reference"] = [round(math.sqrt(v / tokens), 6) for v in rms_r.tolist()]
    return out


def log_metrics(config: QAConfig, metrics: dict) -> Path:
    path = Path(config.runs_dir) / config.run_id / LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "label": config.label or Path(config.candidate).name,
           "config": asdict(config), **metrics}
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    return path


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compress.transport.qa", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="TOML ([qa] table) or JSON")
    args = parser.parse_args(argv)
    try:
        config = QAConfig.from_file(args.config)
        metrics = measure(config)
    except (QAConfigError, OSError, ValueError) as exc:
        return fail(exc)
    path = log_metrics(config, metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "keep"}))
    print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
