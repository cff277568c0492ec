// data.refusal.refusal_problems: whether the model's answer for a pin far from every known place is a
// plain refusal (shown) or something it made up (withheld, as the server does). The patterns, the
// abbreviations, the word limit and the places' name patterns are the Python's own, exported by the
// build into config.json; this file holds only the steps, which tests/test_offline.py checks
// against the Python on the same texts.
import { pyRegex, pySplit, pyStrip } from "./python.js";

export class Refusal {
  constructor(rules) {
    const compile = (p, extra = "") => pyRegex(p.source, p.flags + extra);
    const whole = (p) => pyRegex(`^(?:${p.source})$`, p.flags);
    this.maxWords = rules.max_words;
    this.notKnowing = compile(rules.not_knowing);
    this.capitalised = compile(rules.capitalised, "g");
    this.firstPerson = whole(rules.first_person);
    this.word = compile(rules.word, "g");
    this.sentenceEnd = compile(rules.sentence_end, "g");
    this.initial = whole(rules.initial);
    this.abbreviations = new Set(rules.abbreviations);
    this.names = rules.names.map((n) => [n.name, compile(n)]);
  }

  // data.vocab.split_sentences: initials ("J. F.") and abbreviations ("St.") end no sentence.
  sentences(text) {
    const stripped = pySplit(text).join(" ");
    const sentences = [];
    let start = 0;
    for (const m of stripped.matchAll(this.sentenceEnd)) {
      const segment = stripped.slice(start, m.index);
      const before = pyStrip(segment) ? pySplit(segment).at(-1) : "";
      if (m[0].startsWith(".") && (this.initial.test(before) || this.abbreviations.has(before.toLowerCase()))) continue;
      sentences.push(pyStrip(stripped.slice(start, m.index + m[0].length)));
      start = m.index + m[0].length;
    }
    const rest = pyStrip(stripped.slice(start));
    return sentences.filter(Boolean).concat(rest ? [rest] : []);
  }

  // Why `text` is not a plain refusal, each 'category: detail'; none when it is one.
  problems(text) {
    text = pyStrip(text);
    if (!text) return ["empty: no text"];
    const problems = [];
    const sentences = this.sentences(text);
    if (sentences.length !== 1) problems.push(`sentences: ${sentences.length}, a refusal is one`);
    const words = (text.match(this.word) || []).length;
    if (words > this.maxWords) problems.push(`length: ${words} words, a refusal has at most ${this.maxWords}`);
    if (!this.notKnowing.test(text)) problems.push("no refusal: does not say it knows nothing here");
    const named = this.names.filter(([, pattern]) => pattern.test(text)).map(([name]) => name);
    if (named.length) problems.push(`wrong place: names ${[...new Set(named)].sort().join(", ")}`);
    const proper = sentences.flatMap((s) => [...s.matchAll(this.capitalised)])
      .filter((m) => m.index > 0 && !this.firstPerson.test(m[0])).map((m) => m[0]);
    if (proper.length) problems.push(`proper noun: ${proper.join(", ")}`);
    return problems;
  }
}
