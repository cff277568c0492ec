"""guided-heal: choose the layers to delete by how well each candidate heals, not by how little
it hurts before healing.

Healing reshuffles what a search optimised before it: NVIDIA's Minitron saw candidate rankings
change over the first few hundred steps of retraining and picks after a light one; Gromov et al.
and Lu et al. find simple strategies close to the best once healed. So the candidates here are
the guided search's best few sets (by calibration KL), their best swap variants (one removed
layer exchanged for a kept neighbour) and the data-driven and positional baselines' sets (a random
draw aside), without repeats; each heals for a probe of `probe_steps` steps, the first steps of the
very healing the student will get (same batches, same schedule: compress.heal with stop_after),
and the one with the lowest held-out loss on answer tokens wins. Its probe is left as a checkpoint that the full healing continues (heal's
`resume_from`), so the winner's probe steps count in its budget; the losers' probe compute (steps,
training tokens, FLOPs) is reported, as is every candidate's probe loss.

Every probe's result is kept (core.artifacts.KeyedResults, keyed by its inputs): a rerun with the
same settings probes nothing again.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import asdict

from compress.depth import Choice, StrategyInputs, choose
from compress.guided import guided_removal
from compress.heal import answer_loss, heal, validation_set
from compress.layers import delete_layers
from core.artifacts import KeyedResults, corpus_sha, fingerprint, model_fingerprint
from models.load import decoder_layers

PROBES_FILE = "probes.json"


def candidate_sets(inputs: StrategyInputs, remove: int, baselines: list[str]) -> dict[tuple[int, ...], list[str]]:
    """Removal set -> where it came from: the search's best sets, their swap variants, the baselines'."""
    c, calibration = inputs.config, inputs.calibration
    guided, _ = guided_removal(calibration, inputs.analysis, remove, c, inputs.progress)
    found: dict[tuple[int, ...], list[str]] = {}

    def add(removed, source):
        sources = found.setdefault(tuple(sorted(removed)), [])
        if source not in sources:
            sources.append(source)

    add(guided, "guided")
    best = calibration.best_sets(remove, c.probe_sets)
    for rank, removed in enumerate(best):
        add(removed, f"search #{rank + 1}")
    for rank, removed in enumerate(best):
        for variant in calibration.swap_variants(removed, c.probe_swaps):
            add(variant, f"swap of search #{rank + 1}")
    for name in baselines:
        try:
            removed, _ = choose(name, inputs, remove)
        except ValueError:  # e.g. no contiguous captured block, or u-shape at most n - 2
            continue
        add(removed, name)
    return found


def probe(inputs: StrategyInputs, removed: tuple[int, ...]) -> dict:
    """Heal the teacher without `removed` for the probe's steps; its held-out answer loss and compute."""
    p, teacher = inputs.probe, inputs.calibration.model
    keep = [l for l in range(len(decoder_layers(teacher))) if l not in removed]
    # fp32 master weights whatever the teacher was loaded in: AdamW updates vanish in bf16 weights.
    student = delete_layers(copy.deepcopy(teacher), keep).float()
    folder = p.folder / f"r{len(removed)}-{'-'.join(map(str, removed))}-{_inputs_key(inputs, removed)[:8]}"
    healer = teacher if p.heal.uses_teacher else None
    model, report = heal(student, healer, p.tokenizer, p.corpus, p.heal, folder, keep, progress=inputs.progress,
                         curve=p.curve, stop_after=inputs.config.probe_steps)
    model.eval()
    loss = answer_loss(model, validation_set(p.corpus, p.tokenizer, p.heal), p.heal.batch_size)
    params = sum(q.numel() for q in model.parameters() if q.requires_grad)
    # Training FLOPs: 6 per parameter per token; a teacher's forward adds 2 per its parameter.
    flops = 6 * params * report["tokens"] + (2 * sum(q.numel() for q in teacher.parameters()) * report["tokens"]
                                             if healer is not None else 0)
    return {"removed": list(removed), "probe_loss": loss, "steps": report["steps"], "tokens": report["tokens"],
            "flops": float(flops), "folder": str(folder), "finished": report["finished"]}


def _inputs_key(inputs: StrategyInputs, removed) -> str:
    p, teacher = inputs.probe, inputs.calibration.model
    return fingerprint({"removed": list(removed), "heal": asdict(p.heal), "steps": inputs.config.probe_steps,
                        "teacher": model_fingerprint(str(teacher.name_or_path)),
                        "dtype": str(next(teacher.parameters()).dtype),
                        "corpus": corpus_sha(p.corpus, ("train", "val")), "curve": getattr(p.curve, "key", None)})


def probe_choice(inputs: StrategyInputs, remove: int, baselines: list[str]) -> Choice:
    """The candidate set with the lowest held-out answer loss after its probe, and the trace."""
    if inputs.config.probe_steps < 1:
        raise ValueError("guided-heal needs probe_steps of at least 1")
    found = candidate_sets(inputs, remove, baselines)
    results = KeyedResults(inputs.probe.folder / PROBES_FILE)
    candidates = []
    for removed, sources in found.items():
        name = "-".join(map(str, removed))
        done = results.reuse(name, _inputs_key(inputs, removed), lambda removed=removed: probe(inputs, removed))
        candidates.append({**done, "sources": sources, "calibration_kl": inputs.calibration.measure(list(removed))["kl"]})
    winner = min(candidates, key=lambda c: (c["probe_loss"], c["removed"]))
    for c in candidates:
        c["won"] = c is winner
        if not c["won"]:  # only the winner's first steps are continued; the others' checkpoints go
            shutil.rmtree(c["folder"], ignore_errors=True)
    losers = [c for c in candidates if not c["won"]]
    trace = {"config": {k: getattr(inputs.config, k) for k in ("probe_sets", "probe_swaps", "probe_steps")},
             "heal": asdict(inputs.probe.heal), "probe_steps": inputs.config.probe_steps,
             "candidates": candidates, "winner_folder": winner["folder"],
             "losers": {"candidates": len(losers), **{k: sum(c[k] for c in losers) for k in ("steps", "tokens", "flops")}}}
    return winner["removed"], trace
