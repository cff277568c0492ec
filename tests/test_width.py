"""Width pruning keeps exactly the heads, neurons and channels it is told to, in a standard config."""

import pytest
import torch

from compress.width import keep_by_score, keep_heads_in_groups, prune_ffn, prune_heads, prune_hidden, prune_kv_groups
from compress.width import main as width_main
from models.load import LoadOptions, decoder_layers, load_model

TEXT = "The Queen Victoria Building fills a block of George Street."


@pytest.fixture
def loaded(micro_teacher):
    model, tok = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    return model, torch.tensor([tok(TEXT)["input_ids"]]), tok


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_keeping_everything_changes_nothing(loaded):
    model, ids, _ = loaded
    before = logits(model, ids)
    n, c = len(decoder_layers(model)), model.config
    prune_ffn(model, [torch.arange(c.intermediate_size)] * n)
    prune_heads(model, [torch.arange(c.num_attention_heads)] * n)
    prune_kv_groups(model, [torch.arange(c.num_key_value_heads)] * n)
    prune_hidden(model, torch.arange(c.hidden_size))
    assert torch.allclose(logits(model, ids), before, atol=1e-6)


def test_removing_neurons_and_heads_equals_silencing_them_in_the_original(loaded, micro_teacher):
    model, ids, _ = loaded
    reference, _ = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    n, hd = len(decoder_layers(model)), model.config.head_dim
    neurons = [torch.randperm(192, generator=torch.Generator().manual_seed(i))[:96] for i in range(n)]
    heads = [torch.tensor([0, 3]), torch.tensor([1, 2]), torch.tensor([1, 3]), torch.tensor([0, 2])]  # one per KV group
    with torch.no_grad():
        for i, layer in enumerate(decoder_layers(reference)):
            silent = torch.ones(192, dtype=torch.bool)
            silent[neurons[i]] = False
            layer.mlp.down_proj.weight[:, silent] = 0
            for h in set(range(4)) - set(heads[i].tolist()):
                layer.self_attn.o_proj.weight[:, h * hd:(h + 1) * hd] = 0
    prune_ffn(model, neurons)
    prune_heads(model, heads)
    assert model.config.intermediate_size == 96 and model.config.num_attention_heads == 2
    assert torch.allclose(logits(model, ids), logits(reference, ids), atol=1e-5)


def test_removing_a_kv_group_removes_its_query_heads_too(loaded, micro_teacher):
    model, ids, _ = loaded
    reference, _ = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    hd = model.config.head_dim
    with torch.no_grad():
        for layer in decoder_layers(reference):  # group 0 = query heads 0 and 1
            layer.self_attn.o_proj.weight[:, : 2 * hd] = 0
    prune_kv_groups(model, [torch.tensor([1])] * 4)
    assert (model.config.num_key_value_heads, model.config.num_attention_heads) == (1, 2)
    assert decoder_layers(model)[0].self_attn.k_proj.weight.shape == (hd, 64)
    assert torch.allclose(logits(model, ids), logits(reference, ids), atol=1e-5)


def test_a_pruned_checkpoint_is_a_standard_config_that_round_trips(loaded, tmp_path):
    model, ids, tok = loaded
    prune_ffn(model, [torch.arange(0, 192, 2)] * 4)
    prune_heads(model, [torch.tensor([0, 2])] * 4)
    prune_hidden(model, keep_by_score(torch.arange(64.0), 48))
    c = model.config
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (48, 96, 2, 2, 16)
    for name, tensor in model.state_dict().items():
        if "embed_tokens" in name or "lm_head" in name:
            assert tensor.shape[1] == 48
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, _ = load_model(str(tmp_path), LoadOptions(dtype="float32"))
    assert torch.allclose(logits(again, ids), logits(model, ids), atol=1e-5)
    with torch.no_grad():
        cached = again.generate(ids[:, :5], max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=tok.pad_token_id)
        plain = again.generate(ids[:, :5], max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(cached, plain)


def test_uneven_choices_are_refused(loaded):
    model, _, _ = loaded
    with pytest.raises(ValueError, match="each KV group must keep 1"):
        prune_heads(model, [torch.tensor([0, 1])] * 4)  # both from group 0
    with pytest.raises(ValueError, match="same number of FFN neurons"):
        prune_ffn(model, [torch.arange(96)] * 3 + [torch.arange(90)])
    with pytest.raises(ValueError, match="spread evenly"):
        prune_heads(model, [torch.tensor([0, 1, 2])] * 4)


def test_importance_picks_the_highest_scores_inside_each_group():
    assert keep_by_score(torch.tensor([0.1, 0.9, 0.5, 0.7]), 2).tolist() == [1, 3]
    assert keep_heads_in_groups(torch.tensor([0.1, 0.9, 0.8, 0.2]), kv_heads=2, per_group=1).tolist() == [1, 2]


@pytest.mark.parametrize("source", ["activation", "magnitude", "random"])
def test_targets_become_a_smaller_standard_model_from_each_importance_source(micro_teacher, micro_analysis, source, tmp_path):
    from compress.width import importance_scores, prune_width

    model, tok = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    scores = importance_scores(model, source, str(micro_analysis / "importance.safetensors"), seed=1)
    assert scores["neuron"].shape == (4, 192) and scores["head"].shape == (4, 4) and scores["channel"].shape == (64,)
    kept = prune_width(model, scores, kv_heads=1, heads=1, ffn=64, hidden=32)
    c = model.config
    assert (c.num_key_value_heads, c.num_attention_heads, c.intermediate_size, c.hidden_size) == (1, 1, 64, 32)
    assert len(kept["kv_groups"]) == 4 and all(len(k) == 64 for k in kept["ffn"])
    if source == "activation":  # the best-scored neurons of layer 0 are the ones kept
        best = torch.argsort(scores["neuron"][0], descending=True)[:64].sort().values
        assert torch.equal(kept["ffn"][0], best)
    model.save_pretrained(tmp_path)
    again, _ = load_model(str(tmp_path), LoadOptions(dtype="float32"))
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    assert torch.allclose(logits(again, ids), logits(model, ids), atol=1e-5)


def test_activation_importance_needs_every_layer_captured(micro_teacher):
    from compress.width import importance_scores

    model, _ = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    with pytest.raises(ValueError, match="importance.safetensors"):
        importance_scores(model, "activation")
    with pytest.raises(ValueError, match="unknown importance source"):
        importance_scores(model, "oracle")


def test_the_cli_writes_a_loadable_checkpoint_and_its_plan(micro_teacher, micro_analysis, tmp_path):
    import json

    from compress.width import main

    assert main(["--model", str(micro_teacher), "--importance", str(micro_analysis), "--ffn", "96", "--heads", "2",
                 "--out", str(tmp_path / "w")]) == 0
    plan = json.loads((tmp_path / "w" / "width_plan.json").read_text())
    assert plan["sizes"] == {"kv_heads": 2, "heads": 2, "ffn": 96, "hidden": 64}
    assert plan["parameters"]["after"] < plan["parameters"]["before"] and len(plan["kept"]["ffn"]) == 4
    model, _ = load_model(str(tmp_path / "w"), LoadOptions(dtype="float32"))
    assert model.config.intermediate_size == 96
    assert main(["--model", str(micro_teacher), "--importance", str(tmp_path / "none"), "--ffn", "8",
                 "--out", str(tmp_path / "x")]) == 2


def test_parameter_count_from_the_config_alone_matches_the_weights(loaded, micro_teacher, tmp_path):
    from transformers import Qwen3Config

    from models.shapes import parameter_count

    model, _, tok = loaded
    assert parameter_count(model.config) == sum(p.numel() for p in model.parameters())
    prune_ffn(model, [torch.arange(100)] * 4)
    prune_hidden(model, torch.arange(40))
    assert parameter_count(model.config) == sum(p.numel() for p in model.parameters())
    for kind in ("qwen2", "llama"):
        from test_teacher import save_tiny

        other, _ = load_model(str(save_tiny(kind, tmp_path / kind, tok)), LoadOptions(dtype="float32"))
        assert parameter_count(other.config) == sum(p.numel() for p in other.parameters())
    # Qwen3-32B's published shape: 64 layers, hidden 5120, 64 query / 8 KV heads of 128, FFN 25600.
    big = Qwen3Config(vocab_size=151936, hidden_size=5120, intermediate_size=25600, num_hidden_layers=64,
                      num_attention_heads=64, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False)
    assert 32.7e9 < parameter_count(big) < 32.9e9


def qwen3_32b():
    from transformers import Qwen3Config

    return Qwen3Config(vocab_size=151936, hidden_size=5120, intermediate_size=25600, num_hidden_layers=64,
                       num_attention_heads=64, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False)


def test_a_parameter_budget_becomes_aligned_sizes_that_fit_it():
    from models.shapes import parameter_count, shrunk_config, solve_budget

    config = shrunk_config(qwen3_32b(), {"layers": 28})
    plan = solve_budget(config, 3_000_000_000)
    assert plan["params"] <= 3e9 and plan["params"] == parameter_count(shrunk_config(config, plan["sizes"]))
    assert plan["sizes"]["hidden"] % 256 == 0 and plan["sizes"]["ffn"] % 256 == 0  # llama.cpp k-quant rows
    bigger = {k: v + 256 for k, v in plan["sizes"].items()}
    assert parameter_count(shrunk_config(config, bigger)) > 3e9  # the largest aligned sizes that fit
    heads = solve_budget(config, 3_000_000_000, ("hidden", "ffn", "heads"))["sizes"]["heads"]
    assert heads % 8 == 0 and heads < 64
    with pytest.raises(ValueError, match="cannot be reached"):
        solve_budget(config, 10_000_000)
    with pytest.raises(ValueError, match="budget axes"):
        solve_budget(config, 3_000_000_000, ("depth",))


def test_parameter_counts_read_as_people_write_them():
    from models.shapes import parse_count

    assert [parse_count(t) for t in ("3e9", "3B", "3.02B", "800M", "150k", 1200)] == [
        3_000_000_000, 3_000_000_000, 3_020_000_000, 800_000_000, 150_000, 1200]
    with pytest.raises(ValueError, match="not a parameter count"):
        parse_count("lots")


def test_the_cli_prunes_to_a_budget_and_refuses_a_budget_with_sizes(micro_teacher, micro_analysis, tmp_path, capsys):
    import json

    from compress.width import main

    assert main(["--model", str(micro_teacher), "--importance", str(micro_analysis), "--params", "200k",
                 "--out", str(tmp_path / "b")]) == 0
    plan = json.loads((tmp_path / "b" / "width_plan.json").read_text())
    assert plan["parameters"]["after"] <= 200_000 < plan["parameters"]["before"]
    assert main(["--model", str(micro_teacher), "--params", "200k", "--ffn", "64", "--source", "magnitude",
                 "--out", str(tmp_path / "c")]) == 2
    assert "not both" in capsys.readouterr().err


def test_a_depth_pruned_student_is_scored_by_the_layers_it_kept(micro_teacher, micro_analysis):
    from safetensors.torch import load_file

    from compress.depth import delete_layers
    from compress.width import importance_scores

    model, _ = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    delete_layers(model, [0, 1, 3])
    scores = importance_scores(model, "activation", str(micro_analysis / "importance.safetensors"),
                               source_layers=[0, 1, 3])
    captured = load_file(str(micro_analysis / "importance.safetensors"))["weighted.neuron_importance"]
    assert torch.equal(scores["neuron"], captured[[0, 1, 3]])
    with pytest.raises(ValueError, match="3 layers but 2"):
        importance_scores(model, "activation", str(micro_analysis / "importance.safetensors"), source_layers=[0, 1])


def test_the_cli_and_the_pipeline_prune_a_depth_pruned_student_alike(micro_teacher, micro_analysis, tmp_path):
    """The width CLI scores a depth-pruned student with the teacher layers it kept, read from its
    pruning_plan.json (or --depth-plan), as the pipeline's width stage does."""
    import copy
    import json
    import shutil

    from compress.depth import DepthConfig, PruningPlan, kept_layers, prune_to_dir
    from compress.pipeline.config import PipelineConfig, RunSection, TeacherSection
    from compress.pipeline.manifest import Run
    from compress.pipeline.stages import BY_NAME
    from compress.width import WidthConfig, importance_scores, main, prune_width

    run_dir = tmp_path / "runs" / "w"
    shutil.copytree(micro_analysis, run_dir / "analyze")
    model, tok = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    prune_to_dir(model, tok, PruningPlan("random", 4, [0, 2, 3], [1]), run_dir / "depth")  # layer 1 is the teacher's 2
    assert kept_layers(run_dir / "depth") == [0, 2, 3]

    config = PipelineConfig(run=RunSection("w"), teacher=TeacherSection(proxy="micro"), depth=DepthConfig(keep=3),
                            width=WidthConfig(ffn=96, hidden=48))
    BY_NAME["width"].run(Run(config, tmp_path / "runs", touch=False))
    piped = json.loads((run_dir / "width" / "width_plan.json").read_text())
    assert main(["--model", str(run_dir / "depth"), "--importance", str(micro_analysis), "--ffn", "96",
                 "--hidden", "48", "--out", str(tmp_path / "cli")]) == 0
    cli = json.loads((tmp_path / "cli" / "width_plan.json").read_text())
    assert cli["sizes"] == piped["sizes"] == {"kv_heads": 2, "heads": 4, "ffn": 96, "hidden": 48}
    assert cli["kept"] == piped["kept"]

    # A plan named on the command line serves a student folder that has none.
    bare = tmp_path / "bare"
    shutil.copytree(run_dir / "depth", bare)
    (bare / "pruning_plan.json").unlink()
    assert main(["--model", str(bare), "--importance", str(micro_analysis), "--ffn", "96", "--hidden", "48",
                 "--depth-plan", str(run_dir / "depth" / "pruning_plan.json"), "--out", str(tmp_path / "named")]) == 0
    assert json.loads((tmp_path / "named" / "width_plan.json").read_text())["kept"] == piped["kept"]

    # Scored as if it had kept the teacher's layers 0..2 (the CLI's old behaviour), it would keep other channels.
    student, _ = load_model(str(run_dir / "depth"), LoadOptions(dtype="float32"))
    blind = importance_scores(student, "activation", str(micro_analysis / "importance.safetensors"))
    kept = prune_width(copy.deepcopy(student), blind, ffn=96, hidden=48)
    assert [k.tolist() for k in kept["ffn"]][1:] != piped["kept"]["ffn"][1:]
    assert kept["hidden"].tolist() != piped["kept"]["hidden"]


def test_a_llama_pruned_to_an_impossible_shape_is_refused_before_surgery(tiny_llama_dir, tmp_path, capsys):
    """9 query heads: hidden 128 is no multiple of them, which a Llama config refuses. The CLI says so,
    exits 2 and leaves no folder; a valid budget writes a model that loads."""
    out = tmp_path / "pruned"
    assert width_main(["--model", str(tiny_llama_dir), "--out", str(out), "--source", "magnitude",
                       "--hidden", "128"]) == 2
    assert "not a multiple of the 9 query heads" in capsys.readouterr().err and not out.exists()
    assert width_main(["--model", str(tiny_llama_dir), "--out", str(out), "--source", "magnitude",
                       "--params", "100k", "--budget-axes", "hidden,ffn,heads"]) == 0
    model, _ = load_model(str(out))
    assert model.config.hidden_size % model.config.num_attention_heads == 0
