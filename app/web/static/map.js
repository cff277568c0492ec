// The page's map: Leaflet with an offline basemap (Natural Earth land and borders from world-atlas for
// the world, and the street-zoom shorelines the set-up command clipped to the model's region), online
// tiles only when the server was given a tile URL and it answers, markers for the places the model
// knows (labelled from zoom 15), the places around the pin, and a pin that the Gradio controls and
// the map keep in step.
(function () {
  "use strict";
  const LIB = "/web/lib";
  const SEA = "#cfe3f3";
  const LAND = { color: "#6b8f71", weight: 0.6, fillColor: "#e8efe2", fillOpacity: 1 };
  const LABEL_ZOOM = 15; // street zoom: the names of the known places are drawn from here in
  const AROUND_M = 500; // app.coverage.AROUND_M: the ring drawn around the pin
  let map = null;
  let pin = null;
  let around = null; // the ring and the highlighted places around the pin
  let labels = null;

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

  // A place around the pin, chosen on the map, is chosen in the page's list (which answers for it).
  function choose(name) {
    const labels = document.querySelectorAll("#tg-nearby label");
    const label = Array.from(labels).find((l) => l.textContent.trim().startsWith(name + " · "));
    if (label) label.click();
  }

  function showAround(lat, lon, nearby) {
    if (around) around.remove();
    around = L.layerGroup().addTo(map);
    L.circle([lat, lon], { radius: AROUND_M, color: "#b45309", weight: 1, dashArray: "4 4", fill: false,
                           interactive: false }).addTo(around);
    for (const n of nearby || []) {
      L.circleMarker([n.latitude, n.longitude], { radius: 8, color: "#b45309", weight: 2, fillColor: "#f59e0b",
                                                  fillOpacity: 0.8, className: "tg-nearby-mark" })
        .bindTooltip(n.name + " · " + Math.round(n.distance_m) + " m " + n.direction)
        .on("click", (e) => { L.DomEvent.stopPropagation(e); choose(n.name); })
        .addTo(around);
    }
  }

  function showPin(lat, lon, nearby) {
    if (!map || lat === null || lon === null || isNaN(lat) || isNaN(lon)) return;
    if (!pin) pin = L.marker([lat, lon]).addTo(map);
    pin.setLatLng([lat, lon]);
    showAround(lat, lon, nearby);
    if (!map.getBounds().contains([lat, lon])) map.setView([lat, lon], Math.max(map.getZoom(), 13));
  }

  // Natural Earth for the world, then the clipped shorelines over their own box: the box is painted as
  // sea first, so the coarse Natural Earth land under the harbour does not show through.
  async function addBasemap(detail) {
    const [land, countries] = await Promise.all([
      fetch(LIB + "/world-atlas/land-50m.json").then((r) => r.json()),
      fetch(LIB + "/world-atlas/countries-50m.json").then((r) => r.json()),
    ]);
    L.geoJSON(topojson.feature(land, land.objects.land), { style: LAND, interactive: false }).addTo(map);
    map.attributionControl.addAttribution("Natural Earth");
    if (detail) {
      const local = await fetch(detail).then((r) => r.json());
      const [west, south, east, north] = local.bbox;
      L.rectangle([[south, west], [north, east]], { stroke: false, fillColor: SEA, fillOpacity: 1, interactive: false })
        .addTo(map);
      L.geoJSON(local, {
        style: (f) => (f.properties.kind === "lake" ? { stroke: false, fillColor: SEA, fillOpacity: 1 } : LAND),
        interactive: false,
      }).addTo(map);
      map.attributionControl.addAttribution("shorelines: GSHHG (Wessel &amp; Smith)");
    }
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
    labels = L.layerGroup();
    for (const p of places.places || []) {
      L.circleMarker([p.latitude, p.longitude], { radius: 4, color: "#1f6feb", weight: 1, fillOpacity: 0.7 })
        .bindTooltip(p.name + " (" + p.short_code + " " + p.locality + ")")
        .on("click", () => setLocation(p.latitude.toFixed(6) + ", " + p.longitude.toFixed(6)))
        .addTo(map);
      const label = L.divIcon({ className: "tg-label", html: p.name, iconSize: null, iconAnchor: [-6, 7] });
      L.marker([p.latitude, p.longitude], { icon: label, interactive: false, keyboard: false }).addTo(labels);
    }
    const toggle = () => (map.getZoom() >= LABEL_ZOOM ? labels.addTo(map) : labels.remove());
    map.on("zoomend", toggle);
    toggle();
  }

  async function init(element) {
    const config = await fetch("/page-config").then((r) => r.json());
    map = L.map(element, { worldCopyJump: true, attributionControl: true }).setView(config.center, config.zoom);
    map.getContainer().style.background = SEA; // the sea, where the basemap has no land
    await addBasemap(config.basemap);
    addTiles(config.tiles);
    await addKnownPlaces();
    map.on("click", (e) => {
      showPin(e.latlng.lat, e.latlng.lng, []);
      setLocation(e.latlng.lat.toFixed(6) + ", " + e.latlng.lng.toFixed(6));
    });
    element.dataset.ready = "1";
  }

  window.tgShowPin = showPin;
  window.tgMap = () => map; // for the browser test: where the map is and how far in
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
