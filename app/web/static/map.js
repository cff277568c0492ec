// The page's map: Leaflet with an offline basemap (Natural Earth land and borders from world-atlas),
// online tiles only when the server was given a tile URL and it answers, markers for the places the
// model knows, and a pin that the Gradio controls and the map keep in step.
(function () {
  "use strict";
  const LIB = "/web/lib";
  let map = null;
  let pin = null;

  function locationBox() {
    return document.querySelector("#tg-location textarea, #tg-location input");
  }

  // Gradio listens for input events on its own textbox; a value set from script must announce itself.
  function setLocation(text) {
    const box = locationBox();
    if (!box) return;
    box.value = text;
    box.dispatchEvent(new Event("input", { bubbles: true }));
    box.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", bubbles: true }));
  }

  function showPin(lat, lon) {
    if (!map || lat === null || lon === null || isNaN(lat) || isNaN(lon)) return;
    if (!pin) pin = L.marker([lat, lon]).addTo(map);
    pin.setLatLng([lat, lon]);
    if (!map.getBounds().contains([lat, lon])) map.setView([lat, lon], Math.max(map.getZoom(), 13));
  }

  async function addBasemap() {
    const [land, countries] = await Promise.all([
      fetch(LIB + "/world-atlas/land-50m.json").then((r) => r.json()),
      fetch(LIB + "/world-atlas/countries-50m.json").then((r) => r.json()),
    ]);
    L.geoJSON(topojson.feature(land, land.objects.land), {
      style: { color: "#6b8f71", weight: 0.6, fillColor: "#e8efe2", fillOpacity: 1 },
      interactive: false,
    }).addTo(map);
    L.geoJSON(topojson.mesh(countries, countries.objects.countries, (a, b) => a !== b), {
      style: { color: "#8a8a8a", weight: 0.7, dashArray: "3 3" },
      interactive: false,
    }).addTo(map);
  }

  // Tiles from the network only if configured and reachable: offline, no request is made at all.
  function addTiles(url) {
    if (!url) return;
    const probe = new Image();
    const timer = setTimeout(() => (probe.src = ""), 3000);
    probe.onload = () => {
      clearTimeout(timer);
      L.tileLayer(url, { maxZoom: 19, attribution: "&copy; OpenStreetMap contributors" }).addTo(map);
    };
    probe.src = url.replace("{s}", "a").replace("{z}", "1").replace("{x}", "1").replace("{y}", "1");
  }

  async function addKnownPlaces() {
    const places = await fetch("/coverage").then((r) => r.json());
    for (const p of places.places || []) {
      L.circleMarker([p.latitude, p.longitude], { radius: 4, color: "#1f6feb", weight: 1, fillOpacity: 0.7 })
        .bindTooltip(p.name + " (" + p.short_code + " " + p.locality + ")")
        .on("click", () => setLocation(p.latitude.toFixed(6) + ", " + p.longitude.toFixed(6)))
        .addTo(map);
    }
  }

  async function init(element) {
    const config = await fetch("/page-config").then((r) => r.json());
    map = L.map(element, { worldCopyJump: true, attributionControl: true }).setView(config.center, config.zoom);
    map.getContainer().style.background = "#cfe3f3"; // the sea, where the basemap has no land
    await addBasemap();
    addTiles(config.tiles);
    await addKnownPlaces();
    map.on("click", (e) => {
      showPin(e.latlng.lat, e.latlng.lng);
      setLocation(e.latlng.lat.toFixed(6) + ", " + e.latlng.lng.toFixed(6));
    });
    element.dataset.ready = "1";
  }

  window.tgShowPin = showPin;
  // Gradio renders after this script runs: wait for the map's element to exist.
  const watch = setInterval(() => {
    const element = document.getElementById("tg-map");
    if (element && typeof L !== "undefined" && typeof topojson !== "undefined" && !element.dataset.started) {
      element.dataset.started = "1";
      clearInterval(watch);
      init(element).catch((err) => console.error("map:", err));
    }
  }, 100);
})();
