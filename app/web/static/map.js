// The page's map: Leaflet with the offline basemap and the places the model knows (basemap.js, shared
// with the offline page), online tiles only when the server was given a tile URL and it answers, the
// places around the pin, and a pin that the Gradio controls and the map keep in step.
import { drawBasemap, drawKnownPlaces } from "./basemap.js";

{
  const LIB = "/web/lib";
  const AROUND_M = 500; // app.coverage.AROUND_M: the ring drawn around the pin
  let map = null;
  let pin = null;
  let around = null; // the ring and the highlighted places around the pin

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
    drawKnownPlaces(map, places.places || [],
                    (p) => setLocation(p.latitude.toFixed(6) + ", " + p.longitude.toFixed(6)), "tg-label");
  }

  async function init(element) {
    const config = await fetch("/page-config").then((r) => r.json());
    map = L.map(element, { worldCopyJump: true, attributionControl: true }).setView(config.center, config.zoom);
    await drawBasemap(map, LIB, config.basemap);
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
}
