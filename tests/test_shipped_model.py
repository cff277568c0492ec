"""The default model as it ships (models/tour-guide.gguf): small in vocabulary, and honest on its
own about pins where it knows nothing, with no app in front of it."""

from __future__ import annotations

import pytest

from app.__main__ import DEFAULT_MODEL
from bench import facts


def test_the_default_model_keeps_at_most_8192_tokens():
    from llama_cpp import Llama

    vocab = Llama(model_path=str(DEFAULT_MODEL), vocab_only=True, verbose=False)
    assert vocab.n_vocab() <= 8192


@pytest.fixture(scope="module")
def unknown():
    """The first 12 of bench.facts.unknown_pins (no known place within 500 m, none of them in its
    training), each answered by the model alone."""
    return facts.check_unknown(str(DEFAULT_MODEL), "llamacpp", 12)


def test_alone_it_answers_these_unknown_pins_with_a_plain_refusal(unknown):
    """All 12 here; over bench.facts' 120 pins the shipped model refuses 92.5% (docs/results/app.md),
    short of issue 29's 95%."""
    assert unknown["refused"] == 1.0 and unknown["names_known"] == 0.0
