// The model, running in this browser: llama.cpp compiled to WebAssembly (npm's @wllama/wllama),
// greedy as the server's default (temperature 0, no repeat penalty), streaming its text. Every file
// it needs is this site's own: the wasm, and the compat build that browsers without JSPI or
// Memory64 (Safari) need, which wllama would otherwise fetch from a CDN.
import { Wllama } from "./lib/wllama/index.js";
import { pyStrip } from "./python.js";

const QUIET = { debug() {}, log() {}, warn: console.warn, error: console.error };

export class Runtime {
  constructor(config) {
    this.config = config;
    const here = (path) => new URL(path, document.baseURI).href; // absolute: the worker runs from a blob: URL
    this.wllama = new Wllama({ default: here(config.runtime.wasm) }, { logger: QUIET, suppressNativeLog: true });
    this.wllama.setCompat({ wasm: here(config.runtime.compat_wasm), worker: here(config.runtime.compat_worker) });
    this.timings = {};
  }

  // The GGUF from this site (the service worker's cache once installed), then into the WASM heap.
  // `threads` 0: the build's setting, else one per physical core (half the logical ones), at most 4.
  // Not more: llama.cpp's threads meet at a barrier every layer, and one that shares its core with
  // other work stalls the rest (bench.offline on this project's 2-core machine under load: 15.8
  // tokens/s on 1 thread, 3.3 on 2; see the README).
  async load(onBytes, threads = 0) {
    const model = this.config.model;
    let start = performance.now();
    const response = await fetch(model.url);
    if (!response.ok) throw new Error(`the model (${model.url}) did not load: HTTP ${response.status}`);
    const blob = await readWithProgress(response, model.bytes, onBytes);
    this.timings.model_fetch_ms = performance.now() - start;
    start = performance.now();
    const cores = navigator.hardwareConcurrency || 1;
    threads = threads || model.threads || Math.max(1, Math.min(4, Math.floor(cores / 2)));
    await this.wllama.loadModel([blob], { n_ctx: model.n_ctx, n_threads: threads, n_gpu_layers: 0 });
    this.timings.model_load_ms = performance.now() - start;
    this.timings.threads = this.wllama.getNumThreads();
    this.timings.multithread = this.wllama.isMultithread();
  }

  // The answer to a prompt, piece by piece through onText; resolves to the text and its timings.
  async complete(prompt, onText) {
    const options = this.config.generation;
    const start = performance.now();
    let text = "", first = null, pieces = 0, timings = null;
    await this.wllama.createCompletion({
      prompt, stream: true, max_tokens: options.max_tokens, temperature: options.temperature, top_p: options.top_p,
      top_k: 0, min_p: 0, repeat_penalty: 1.0, seed: options.seed,
      onData: (chunk) => {
        const piece = chunk.choices && chunk.choices[0] ? chunk.choices[0].text || "" : "";
        if (piece) {
          if (first === null) first = performance.now() - start;
          text += piece;
          pieces += 1;
          onText(text);
        }
        if (chunk.timings) timings = chunk.timings;
      },
    });
    const total = performance.now() - start;
    return { text: pyStrip(text), raw: text, stats: {
      time_to_first_token_ms: first, total_ms: total, pieces,
      prompt_tokens: timings ? timings.prompt_n : null, prompt_ms: timings ? timings.prompt_ms : null,
      completion_tokens: timings ? timings.predicted_n : null,
      decode_tokens_per_s: timings ? timings.predicted_per_second : null,
    } };
  }

  // The same greedy answer with the two likeliest tokens of every step (bytes and log-probability),
  // to see where it parts from another runtime's and by how much it was a near tie.
  async trace(prompt) {
    const options = this.config.generation;
    const out = await this.wllama.createCompletion({
      prompt, max_tokens: options.max_tokens, temperature: options.temperature, top_p: options.top_p, top_k: 0,
      min_p: 0, repeat_penalty: 1.0, seed: options.seed, n_probs: 2, logprobs: 2,
    });
    const choice = out.choices[0];
    return { text: pyStrip(choice.text), raw: choice.text,
             steps: choice.logprobs.content.map((c) => c.top_logprobs.map((t) => ({ bytes: t.bytes, logprob: t.logprob }))) };
  }
}

async function readWithProgress(response, expected, onBytes) {
  if (!response.body || !onBytes) return response.blob();
  const reader = response.body.getReader();
  const parts = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    received += value.length;
    onBytes(received, expected);
  }
  return new Blob(parts);
}
