// The prompt, exactly as the server's llama.cpp backend builds it: data/prompt.py's system and user
// messages, rendered with the GGUF's own chat template the way data.prompt.render_template renders it
// (Jinja with trim_blocks and lstrip_blocks, add_generation_prompt, no thinking, no tools), or
// data/prompt.py's ChatML when the model ships no template. tests/test_offline.py compares the text.
import { Template } from "./lib/jinja/index.js";

const IM_START = "<|im_start|>", IM_END = "<|im_end|>";

// data.vocab.check_interests: known ones only, without repeats, in the vocabulary's order.
export function checkInterests(interests, vocabulary) {
  if (!interests.length) throw new Error("interests: choose at least one interest");
  const unknown = interests.filter((i) => !vocabulary.includes(i));
  if (unknown.length) throw new Error(`interests: unknown interest(s) ${unknown.join(", ")}`);
  return vocabulary.filter((i) => interests.includes(i));
}

// data.prompt.TourQuery.location
export function location(query) {
  return query.short_code && query.locality ? `${query.short_code} ${query.locality}` : query.plus_code;
}

// data.prompt.user_message and build_messages
export function buildMessages(query, systemPrompt) {
  const user = `Location: ${location(query)}\nInterests: ${query.interests.join(", ")}\nStyle: ${query.style}`;
  return [{ role: "system", content: systemPrompt }, { role: "user", content: user }];
}

// data.prompt.render_chatml
export function renderChatml(messages) {
  return messages.map((m) => `${IM_START}${m.role}\n${m.content}${IM_END}\n`).join("") + `${IM_START}assistant\n`;
}

const compiled = new Map();

// data.prompt.render_template
export function renderPrompt(template, messages) {
  if (!template) return renderChatml(messages);
  if (!compiled.has(template)) compiled.set(template, new Template(template));
  return compiled.get(template).render({ messages, add_generation_prompt: true, enable_thinking: false, tools: null });
}
