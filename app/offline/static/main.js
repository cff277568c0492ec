// The offline tour guide's page: a pin (the map, "Use my location", or ?lat=&lon=), the places the
// model knows around it, interests and a style, and the answer written by the model inside this
// browser. The page's state is document.body.dataset.state: loading, ready, answering, done or error.
// URL parameters lat, lon, interests (comma-separated) and style fill the form; ask=1 asks at once;
// threads=N sets the WebAssembly threads (for measuring).
import { Geo } from "./geo.js";
import { TourMap } from "./map.js";
import { buildMessages, checkInterests, renderPrompt } from "./prompt.js";
import { pyRoundTens } from "./python.js";
import { Refusal } from "./refusal.js";
import { Runtime } from "./runtime.js";

const $ = (id) => document.getElementById(id);
const timings = {}; // milliseconds since the navigation started, for the benchmark (bench/offline.py)

function setState(state, message) {
  document.body.dataset.state = state;
  if (message !== undefined) $("status").textContent = message;
}

async function fetchJson(path) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// The service worker keeps every file for offline use. On the first visit the page waits until it
// has them all and has taken the page over, so the model is downloaded once, into its cache.
async function keepOffline(onProgress) {
  if (!("serviceWorker" in navigator)) return "no offline copy: this browser keeps one only over https or localhost";
  const container = navigator.serviceWorker;
  container.addEventListener("message", (event) => onProgress(event.data));
  const registration = await container.register("sw.js");
  if (container.controller) return null;
  const worker = registration.installing || registration.waiting;
  if (!worker) return "no offline copy this time (the page was loaded past its service worker)";
  return new Promise((resolve) => {
    container.addEventListener("controllerchange", () => resolve(null), { once: true });
    worker.addEventListener("statechange", () => {
      if (worker.state === "redundant") resolve("the offline copy failed; answering from the network");
    });
  });
}

function choices(container, name, values, type, checked) {
  container.querySelectorAll("label").forEach((l) => l.remove());
  for (const value of values) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    Object.assign(input, { type, name, value, checked: checked.includes(value) });
    label.append(input, ` ${value}`);
    container.append(label);
  }
}

const selected = (name) => Array.from(document.querySelectorAll(`input[name=${name}]:checked`)).map((i) => i.value);

class TourGuide {
  constructor(config) {
    this.config = config;
    this.place = null;
    this.geo = null;
    this.runtime = null;
    this.refusal = new Refusal(config.refusal);
  }

  // What a request becomes before the model runs: the header (as the server's API has it) and the prompt.
  request({ latitude, longitude, interests, style, poi_id = null }) {
    const place = this.geo.encode(latitude, longitude);
    const { header, asked } = this.geo.plan(place, poi_id);
    const vocabulary = this.config.vocab;
    if (!vocabulary.styles.includes(style)) throw new Error(`style: unknown style '${style}'`);
    const query = { plus_code: asked.plus_code, short_code: asked.short_code, locality: asked.locality,
                    interests: checkInterests(interests, vocabulary.interests), style };
    const prompt = renderPrompt(this.config.model.chat_template, buildMessages(query, this.config.prompt.system));
    return { header, query, prompt };
  }

  // Far from every known place the server holds the answer until it is whole and shows it only if it
  // is a plain refusal (app.service.TourGuide.stream); so does the page.
  held(header) {
    return header.notice !== null && !this.config.refusal.show_unbacked;
  }

  async answer(request, onText = () => {}) {
    const planned = this.request(request);
    const hold = this.held(planned.header);
    const result = await this.runtime.complete(planned.prompt, hold ? () => {} : onText);
    let description = result.text, withheld = null;
    if (hold && this.refusal.problems(description).length) [description, withheld] = ["", this.config.wording.withheld];
    return { ...planned, description, withheld, stats: result.stats };
  }
}

class Page {
  constructor(guide) {
    this.guide = guide;
    this.map = new TourMap($("map"), guide.config, (lat, lon) => this.pick(lat, lon));
    const vocab = guide.config.vocab;
    choices($("interests"), "interest", vocab.interests, "checkbox", ["architecture", "history"]);
    choices($("styles"), "style", vocab.styles, "radio", [vocab.styles[0]]);
    $("ask").addEventListener("click", () => this.ask());
    $("locate").addEventListener("click", () => this.locate());
    $("interests").addEventListener("change", () => this.share());
    $("styles").addEventListener("change", () => this.share());
  }

  // A pin: its codes, and the known places around it to choose from (the nearest is chosen).
  pick(lat, lon) {
    try {
      const place = this.guide.geo.encode(lat, lon);
      const { header } = this.guide.geo.plan(place);
      this.place = place;
      $("place").textContent = `${place.plus_code}` + (place.short_code ? ` · ${place.short_code} ${place.locality}` : "");
      const list = $("nearby-list");
      list.replaceChildren();
      header.nearby.forEach((n, i) => {
        const label = document.createElement("label");
        const input = Object.assign(document.createElement("input"),
                                    { type: "radio", name: "poi", value: n.poi_id, checked: i === 0 });
        input.addEventListener("change", () => this.ask());
        const where = n.distance_m >= 20 ? `${pyRoundTens(n.distance_m)} m ${n.direction}` : "here";
        label.append(input, ` ${n.name} · ${where}`);
        list.append(label);
      });
      $("nearby").hidden = !header.nearby.length;
      $("far").hidden = !header.notice;
      $("far").textContent = header.notice || "";
      this.map.showPin(lat, lon, header.nearby);
      this.share();
      if (document.body.dataset.state === "error" && this.guide.runtime) setState("ready", "Ready.");
    } catch (err) {
      setState("error", String(err.message || err));
    }
  }

  locate() {
    if (!navigator.geolocation) return setState("error", "this browser gives no location: tap the map instead");
    navigator.geolocation.getCurrentPosition((p) => this.pick(p.coords.latitude, p.coords.longitude),
                                             (err) => setState("error", `no location: ${err.message}`),
                                             { enableHighAccuracy: true, timeout: 20000 });
  }

  // The link that opens this page with this pin, these interests and this style, and asks at once.
  share() {
    if (!this.place) return;
    const params = new URLSearchParams({ lat: this.place.latitude.toFixed(6), lon: this.place.longitude.toFixed(6),
                                         interests: selected("interest").join(","), style: selected("style")[0] || "",
                                         ask: "1" });
    $("share").href = `?${params}`;
    $("share").hidden = false;
  }

  async ask() {
    const state = document.body.dataset.state;
    if (!this.guide.runtime || state === "answering" || state === "loading") return;
    if (!this.place) return setState("error", "drop a pin first: tap the map, or use your location");
    $("lead").textContent = "";
    $("answer").textContent = "";
    $("stats").textContent = "";
    const request = { latitude: this.place.latitude, longitude: this.place.longitude,
                      interests: selected("interest"), style: selected("style")[0], poi_id: selected("poi")[0] || null };
    let header;
    try {
      header = this.guide.request(request).header;
    } catch (err) {
      return setState("error", String(err.message || err));
    }
    $("lead").textContent = header.lead || "";
    $("far").hidden = !header.notice;
    $("far").textContent = header.notice || "";
    $("withheld").hidden = true;
    $("reply").scrollIntoView({ behavior: "smooth", block: "nearest" }); // on a phone the answer is below the form
    const hold = this.guide.held(header);
    setState("answering", hold ? "Writing… (shown when whole: nothing the guide knows is near)" : "Writing…");
    try {
      const result = await this.guide.answer(request, (text) => { $("answer").textContent = text; });
      $("answer").textContent = result.description;
      $("withheld").hidden = !result.withheld;
      $("withheld").textContent = result.withheld || "";
      const s = result.stats;
      $("stats").textContent = `first token after ${Math.round(s.time_to_first_token_ms)} ms · ` +
        `${s.decode_tokens_per_s ? s.decode_tokens_per_s.toFixed(0) : "–"} tokens/s · ${s.completion_tokens} tokens`;
      this.last = result;
      setState("done", "Done. Tap the map for another place.");
    } catch (err) {
      setState("error", `the model failed: ${err.message || err}`);
    }
  }

  // ?lat=&lon=&interests=&style=&ask=1
  fromAddress() {
    const params = new URLSearchParams(location.search);
    if (params.has("interests")) {
      const wanted = params.get("interests").split(",").map((s) => s.trim()).filter(Boolean);
      checkInterests(wanted, this.guide.config.vocab.interests); // an unknown interest is an error, as in the API
      document.querySelectorAll("input[name=interest]").forEach((i) => { i.checked = wanted.includes(i.value); });
    }
    if (params.has("style")) {
      const style = params.get("style");
      if (!this.guide.config.vocab.styles.includes(style)) throw new Error(`style: unknown style '${style}'`);
      document.querySelectorAll("input[name=style]").forEach((i) => { i.checked = i.value === style; });
    }
    if (params.has("lat") || params.has("lon")) {
      const lat = Number(params.get("lat")), lon = Number(params.get("lon"));
      if (!params.get("lat") || !params.get("lon")) throw new Error("give both lat and lon");
      this.pick(lat, lon);
      if (document.body.dataset.state === "error") return false;
    }
    return params.get("ask") === "1";
  }
}

async function main() {
  setState("loading", "Loading…");
  const config = await fetchJson("config.json");
  const guide = new TourGuide(config);
  window.tourGuide = Object.assign(guide, { timings }); // for the tests and the benchmark
  const page = new Page(guide);
  const problem = await keepOffline((message) => {
    if (message.kind !== "cached") return;
    const saving = `${message.done} of ${message.total} files`;
    // A new build arriving while this one runs is saved beside it, for the next time the app opens.
    if (document.body.dataset.state === "loading") $("status").textContent = `Saving for offline use: ${saving}…`;
    else $("offline").textContent = message.done < message.total ? `Saving an update: ${saving}…` :
      "An update is saved: it opens next time.";
  });
  timings.offline_ready_ms = performance.now();
  if (problem) $("offline").textContent = problem;
  guide.geo = new Geo(config.geo, config.wording, config.places, await fetchJson(config.gazetteer));
  let ask = false;
  try {
    ask = page.fromAddress();
  } catch (err) {
    setState("error", String(err.message || err));
  }
  const runtime = new Runtime(config);
  const threads = Number(new URLSearchParams(location.search).get("threads")) || 0; // ?threads=N, for measuring
  await runtime.load((received, total) => {
    $("status").textContent = `Loading the model: ${Math.round(received / 2 ** 20)} of ${Math.round(total / 2 ** 20)} MiB…`;
  }, threads);
  guide.runtime = runtime;
  Object.assign(timings, runtime.timings, { ready_ms: performance.now() });
  await page.map.ready;
  if (document.body.dataset.state === "loading") setState("ready", "Ready: the guide runs on this device.");
  if (ask && document.body.dataset.state === "ready") await page.ask();
}

main().catch((err) => {
  console.error(err);
  setState("error", `could not start: ${err.message || err}`);
});
