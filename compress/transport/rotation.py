"""Rotation diagnostics: how far a student's hidden space is from its teacher's, up to a rotation.

    python -m compress.transport.rotation --student out/cap-student --teacher out/cap-teacher \
        --layer 8 --plan runs/demo/depth/pruning_plan.json --ledger out/transport.jsonl --out out/rotations

Both captures are raw (`--format pt` or `h5`) over the same texts (`--text-file`), so their tokens
match one for one; every shard is checked against its SHA-256 as it is read. For each requested
student layer and the teacher layer it came from (the pruning plan's `keep`, or `S:T` given):

1. PCA of the teacher's layer outputs down to the student's width k (the top k eigenvectors P of
   their centred covariance), so both live in k dimensions;
2. the orthogonal Procrustes rotation R maximising sum <s R, t P> over all tokens (SVD of S^T T P);
3. cosine similarity of every token's student state with its teacher state (projected), before
   (s against tP) and after (sR against tP), and the singular values of S^T T P.

The data stream through twice (sums for PCA and Procrustes, then the cosines), so no more than one
sample's activations is in memory. One JSON line per layer goes to the ledger; P and R are saved
as safetensors (`rotation` k x k, `pca` d_teacher x k).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from compress.depth import kept_layers
from compress.shards import CaptureReader, ShardError
from core.artifacts import atomic_path
from core.cli import fail

STATE = "output"  # the residual stream after the layer


def procrustes_from_cross(cross: torch.Tensor) -> torch.Tensor:
    """The map with orthonormal rows maximising tr(R^T cross), i.e. minimising ||S R - T|| when
    cross = S^T T (U V^T of its SVD)."""
    u, _, vt = torch.linalg.svd(cross.double(), full_matrices=False)
    return u @ vt


def procrustes(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The map W [hs, ht] with orthonormal rows minimising ||student @ W - teacher|| (rows are tokens)."""
    return procrustes_from_cross(student.double().T @ teacher.double()).float()


class TransportError(RuntimeError):
    pass


@dataclass
class LayerSums:
    """Streaming sums of one (student layer, teacher layer) pair, in float64."""

    teacher_dim: int
    student_dim: int
    tokens: int = 0

    def __post_init__(self) -> None:
        self.t_sum = torch.zeros(self.teacher_dim, dtype=torch.float64)
        self.t_gram = torch.zeros(self.teacher_dim, self.teacher_dim, dtype=torch.float64)
        self.cross = torch.zeros(self.student_dim, self.teacher_dim, dtype=torch.float64)

    def add(self, s: torch.Tensor, t: torch.Tensor) -> None:
        s, t = s.double(), t.double()
        self.tokens += len(t)
        self.t_sum += t.sum(0)
        self.t_gram += t.T @ t
        self.cross += s.T @ t

    def pca(self) -> tuple[torch.Tensor, float]:
        """(P: the top student_dim principal directions of the teacher states, explained share)."""
        mean = self.t_sum / self.tokens
        cov = self.t_gram / self.tokens - torch.outer(mean, mean)
        values, vectors = torch.linalg.eigh(cov)
        order = torch.argsort(values, descending=True)
        k = self.student_dim
        top = vectors[:, order[:k]]
        explained = float(values[order[:k]].clamp(min=0).sum() / values.clamp(min=0).sum())
        return top, explained


def _pairs(student: CaptureReader, teacher: CaptureReader, verify: bool = True):
    """Rows of both captures, matched by id, tokens checked equal, shards verified (once: the
    second pass over the same files does not hash them again)."""
    by_id = {row["id"]: row for row in teacher.rows}
    for row in student.rows:
        other = by_id.get(row["id"])
        if other is None:
            raise TransportError(f"sample {row['id']} is in the student's capture but not the teacher's")
        if row["input_tokens"] + row["output_tokens"] != other["input_tokens"] + other["output_tokens"]:
            raise TransportError(f"sample {row['id']}: the captures saw different tokens; capture both on the same "
                                 "texts (--text-file) with the same tokenizer")
        s, t = student.load(row), teacher.load(other)
        if verify:
            student.verify_row(row, s)
            teacher.verify_row(other, t)
        yield s, t


def layer_map(layers: list[str], plan: str | None) -> list[tuple[int, int]]:
    keep = kept_layers(plan, required=True) if plan else None
    pairs = []
    for spec in layers:
        s, _, t = str(spec).partition(":")
        student = int(s)
        if t:
            teacher = int(t)
        elif keep is not None:
            if not 0 <= student < len(keep):
                raise TransportError(f"--layer {student}: the plan keeps {len(keep)} layers")
            teacher = keep[student]
        else:
            teacher = student
        pairs.append((student, teacher))
    return pairs


def analyse(student_dir: str | Path, teacher_dir: str | Path, layers: list[tuple[int, int]], out_dir: str | Path,
            ledger: str | Path | None = None, channels: list[int] | None = None) -> list[dict]:
    """One ledger row per layer pair. `channels`: the teacher's hidden channels the student kept
    (width_plan.json), for a third cosine: the student's states against those channels as they
    are, the correspondence pruning made before healing moved anything."""
    student, teacher = CaptureReader(student_dir), CaptureReader(teacher_dir)
    if not student.rows or not teacher.rows:
        raise TransportError("an empty capture: nothing to compare")
    first_s, first_t = student.rows[0]["shapes"], teacher.rows[0]["shapes"]
    sums = {}
    for s_layer, t_layer in layers:
        for shapes, key, who in ((first_s, f"{STATE}.{s_layer}", "student"), (first_t, f"{STATE}.{t_layer}", "teacher")):
            if key not in shapes:
                raise TransportError(f"the {who} capture has no '{key}' (layers captured: "
                                     f"{sorted({k.split('.')[1] for k in shapes if k.startswith(STATE)}, key=int)})")
        sums[(s_layer, t_layer)] = LayerSums(first_t[f"{STATE}.{t_layer}"][1], first_s[f"{STATE}.{s_layer}"][1])
    try:
        for s, t in _pairs(student, teacher):  # pass 1: sums
            for (s_layer, t_layer), acc in sums.items():
                acc.add(s[f"{STATE}.{s_layer}"], t[f"{STATE}.{t_layer}"])
        maps = {}
        for key, acc in sums.items():
            pca, explained = acc.pca()
            cross = acc.cross @ pca
            rotation = procrustes_from_cross(cross)
            maps[key] = (pca, rotation, explained, torch.linalg.svdvals(cross))
        cos = {key: [0.0, 0.0, 0.0] for key in sums}
        kept = torch.as_tensor(sorted(channels)) if channels is not None else None
        for s, t in _pairs(student, teacher, verify=False):  # pass 2: per-token cosines
            for (s_layer, t_layer), (pca, rotation, _, _) in maps.items():
                sv, tv = s[f"{STATE}.{s_layer}"].double(), t[f"{STATE}.{t_layer}"].double() @ pca
                cos[(s_layer, t_layer)][0] += torch.nn.functional.cosine_similarity(sv, tv, dim=-1).sum().item()
                cos[(s_layer, t_layer)][1] += torch.nn.functional.cosine_similarity(sv @ rotation, tv, dim=-1).sum().item()
                if kept is not None:
                    selected = t[f"{STATE}.{t_layer}"].double()[:, kept]
                    cos[(s_layer, t_layer)][2] += torch.nn.functional.cosine_similarity(sv, selected, dim=-1).sum().item()
    except ShardError as exc:
        raise TransportError(str(exc)) from exc
    finally:
        student.close()
        teacher.close()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for (s_layer, t_layer), (pca, rotation, explained, singular) in maps.items():
        n = sums[(s_layer, t_layer)].tokens
        path = out / f"rotation_s{s_layer}_t{t_layer}.safetensors"
        with atomic_path(path) as tmp:
            save_file({"rotation": rotation.float().contiguous(), "pca": pca.float().contiguous()}, str(tmp))
        results.append({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "student": str(student_dir), "teacher": str(teacher_dir),
            "student_layer": s_layer, "teacher_layer": t_layer, "tokens": n, "state": STATE,
            "student_width": pca.shape[1], "teacher_width": pca.shape[0], "pca_explained": round(explained, 6),
            "cosine_before": cos[(s_layer, t_layer)][0] / n, "cosine_after": cos[(s_layer, t_layer)][1] / n,
            "cosine_kept_channels": cos[(s_layer, t_layer)][2] / n if kept is not None else None,
            "singular_values": [round(float(v), 6) for v in singular], "rotation_file": str(path),
        })
    if ledger:
        ledger = Path(ledger)
        ledger.parent.mkdir(parents=True, exist_ok=True)
        with open(ledger, "a") as handle:
            for row in results:
                handle.write(json.dumps(row) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compress.transport.rotation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", required=True, help="the student's raw capture directory")
    parser.add_argument("--teacher", required=True, help="the teacher's raw capture directory (same texts)")
    parser.add_argument("--layer", action="append", required=True, help="student layer, or S:T (repeatable)")
    parser.add_argument("--plan", default=None, help="pruning_plan.json mapping student layers to teacher layers")
    parser.add_argument("--ledger", default=None, help="JSONL file to append one line per layer to")
    parser.add_argument("--width-plan", default=None, help="width_plan.json: also compare with the kept channels as is")
    parser.add_argument("--out", required=True, help="directory for the rotation safetensors")
    args = parser.parse_args(argv)
    try:
        channels = json.loads(Path(args.width_plan).read_text())["kept"]["hidden"] if args.width_plan else None
        results = analyse(args.student, args.teacher, layer_map(args.layer, args.plan), args.out, args.ledger, channels)
    except (TransportError, OSError, ValueError, KeyError) as exc:
        return fail(exc)
    print(f"{'layer':>9} {'tokens':>7} {'widths':>9} {'PCA kept':>9} {'cos before':>11} {'cos after':>10}")
    for r in results:
        print(f"{r['student_layer']:>4}<-{r['teacher_layer']:<3} {r['tokens']:>7} "
              f"{r['student_width']:>4}/{r['teacher_width']:<4} {r['pca_explained']:>9.3f} "
              f"{r['cosine_before']:>11.4f} {r['cosine_after']:>10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
