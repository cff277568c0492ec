"""The one prompt format every backend sees: ChatML, as Qwen3 uses it.

A query (short Plus Code + locality, interests, style) becomes a system message and a user
message. The corpus stores these messages; training, evaluation, the app and every backend render
them the same way, so a model never meets a prompt shape it was not trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2.sandbox import ImmutableSandboxedEnvironment

from data.vocab import check_interests, check_style

SYSTEM_PROMPT = (
    "You are an offline tour guide. From the visitor's location, given as a Plus Code, describe "
    "what is there for their interests, in the requested style. Use only what you know about "
    "that exact place; if you know nothing there, say so."
)

# ChatML exactly as Qwen3 renders a conversation without tool calls, for the tokenizers we train
# for proxy models. Real Qwen3 checkpoints keep their own template; `enable_thinking=False` is
# passed to it so that Qwen3 answers without a reasoning block, and this template ignores it.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"


@dataclass(frozen=True)
class TourQuery:
    """What a visitor asks: a place, what they care about, and how much they want to read."""

    plus_code: str  # the full code; used when no locality makes a short code
    short_code: str | None
    locality: str | None
    interests: tuple[str, ...]
    style: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "interests", check_interests(self.interests))
        check_style(self.style)

    @property
    def location(self) -> str:
        if self.short_code and self.locality:
            return f"{self.short_code} {self.locality}"
        return self.plus_code


def user_message(query: TourQuery) -> str:
    return (
        f"Location: {query.location}\n"
        f"Interests: {', '.join(query.interests)}\n"
        f"Style: {query.style}"
    )


def build_messages(query: TourQuery, system_prompt: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": user_message(query)},
    ]


def render_chatml(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """What CHAT_TEMPLATE renders, without jinja: for backends that take raw text."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def render_prompt(messages: list[dict[str, str]], tokenizer=None) -> str:
    """The prompt text for generation: the tokenizer's own template when it has one (a real
    Qwen3), else our ChatML."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
    return render_chatml(messages)


def render_template(template: str | None, messages: list[dict[str, str]]) -> str:
    """A chat template carried by an exported model (GGUF metadata, the ONNX folder's
    chat_template.jinja) rendered as transformers renders it, for runtimes without transformers.
    No template: our ChatML."""
    if not template:
        return render_chatml(messages)
    def raise_exception(message: str):
        raise ValueError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, enable_thinking=False, tools=None
    )
