// The service worker: after one visit the page, the runtime, the map and the model answer from this
// cache, with no server and no network. The build writes VERSION (a hash of every file of the site),
// PRECACHE (what to fetch at install) and ON_DEMAND (what to keep when first fetched) above this line.
// A new build is a new worker with a new cache; the old cache goes when the new worker takes over.
"use strict";

// Cross-origin isolation (WASM threads need it) also for hosts that cannot send these headers.
const ISOLATION = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
  "Cross-Origin-Resource-Policy": "same-origin",
};

async function tell(message) {
  for (const client of await self.clients.matchAll({ includeUncontrolled: true })) client.postMessage(message);
}

// All or nothing: one failed file fails the install, and the page loads from the network instead.
async function precache() {
  const cache = await caches.open(VERSION);
  let done = 0;
  try {
    for (const path of PRECACHE) {
      const response = await fetch(new Request(path, { cache: "reload" }));
      if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
      await cache.put(path, response);
      done += 1;
      await tell({ kind: "cached", done, total: PRECACHE.length, path });
    }
  } catch (err) {
    await caches.delete(VERSION);
    await tell({ kind: "cache-failed", error: String(err) });
    throw err;
  }
}

self.addEventListener("install", (event) => event.waitUntil(precache()));

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith("tour-guide-") && name !== VERSION) await caches.delete(name);
    }
    await self.clients.claim(); // the first visit's page is served from here from now on
  })());
});

function isolated(response) {
  if (response.type === "opaque" || response.headers.get("Cross-Origin-Embedder-Policy")) return response;
  const headers = new Headers(response.headers);
  for (const [name, value] of Object.entries(ISOLATION)) headers.set(name, value);
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}

async function answer(request) {
  const cache = await caches.open(VERSION);
  const scope = self.registration.scope;
  // The page under any query (?lat=..&ask=1) is the one cached page.
  const key = request.mode === "navigate" ? scope : request;
  const cached = await cache.match(key, { ignoreSearch: request.mode === "navigate" });
  if (cached) return isolated(cached);
  const response = await fetch(request);
  const path = request.url.startsWith(scope) ? request.url.slice(scope.length) : "";
  if (response.ok && ON_DEMAND.some((prefix) => path.startsWith(prefix))) await cache.put(request, response.clone());
  return isolated(response);
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET" || !request.url.startsWith(self.registration.scope)) return;
  event.respondWith(answer(request));
});
