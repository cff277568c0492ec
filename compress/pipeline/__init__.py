"""The whole compression as one resumable pipeline.

    python -m compress.run --config configs/micro.toml            # run, or continue, runs/micro/
    python -m compress.run --config configs/demo.toml --from heal  # redo heal and what follows
    python -m compress.run --config configs/qwen3-32b.toml --dry-run

Stages: data -> teacher -> capture -> analyze -> depth -> width -> heal -> evaluate -> vocab ->
prior -> export, each writing into runs/<run_id>/<stage>/ (vocab trims the healed student's
vocabulary to what the corpus needs when [vocab] says `trim = true`; prior shifts its refusal logit
when [prior] says `calibrate = true`). runs/<run_id>/manifest.json records the config, package
versions, git commit, dataset snapshot hashes and, per stage, its status, timings, a fingerprint of
its settings and of the outputs of the stages it reads, and the checksums of its own outputs. A
stage whose fingerprint is unchanged and whose outputs are intact is skipped; a stage that was
killed reruns, and the long ones (teacher training, capture, healing, evaluation) continue from
their own checkpoints. At the end of every invocation runs/<run_id>/report.md gathers the stage
table, the model sizes and every metric (`python -m compress.pipeline.report` renders it again).

--dry-run needs no weights: it builds every pruned shape from the teacher's config (read from the
model directory or hub, or from the config file's [teacher.architecture] when offline) and prints
the parameter counts and a memory plan.

config.py: the TOML schema, whose sections are the stages' own config dataclasses. manifest.py:
the run folder, its manifest and fingerprints. stages.py: each stage's declaration (what it reads,
which section sets it, what it leaves) and its glue. driver.py: the loop and the command line.
plan.py: --dry-run. report.py: report.md.
"""
