// What both pages' maps draw alike: the offline basemap (Natural Earth land and borders from
// world-atlas for the world, and over the model's region the street-zoom shorelines the set-up
// command clipped) and the places the model knows, labelled from street zoom. The server's page
// (app/web/static/map.js) and the offline page (app/offline/static/map.js) import it; the offline
// site serves it beside its own sources (app.offline.site).
export const SEA = "#cfe3f3";
const LAND = { color: "#6b8f71", weight: 0.6, fillColor: "#e8efe2", fillOpacity: 1 };
const LABEL_ZOOM = 15; // street zoom: the names of the known places are drawn from here in

async function json(path) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// `lib` is where the page serves the npm packages; `detailPath` the clipped shorelines, if any. The
// clipped box is painted as sea first, so Natural Earth's coarse land under a harbour is hidden.
export async function drawBasemap(map, lib, detailPath) {
  map.getContainer().style.background = SEA; // the sea, where the basemap has no land
  const [land, countries] = await Promise.all([json(`${lib}/world-atlas/land-50m.json`),
                                               json(`${lib}/world-atlas/countries-50m.json`)]);
  L.geoJSON(topojson.feature(land, land.objects.land), { style: LAND, interactive: false }).addTo(map);
  map.attributionControl.addAttribution("Natural Earth");
  if (detailPath) {
    const detail = await json(detailPath);
    const [west, south, east, north] = detail.bbox;
    L.rectangle([[south, west], [north, east]], { stroke: false, fillColor: SEA, fillOpacity: 1, interactive: false })
      .addTo(map);
    L.geoJSON(detail, { interactive: false,
                        style: (f) => (f.properties.kind === "lake" ? { stroke: false, fillColor: SEA, fillOpacity: 1 }
                          : LAND) }).addTo(map);
    map.attributionControl.addAttribution("shorelines: GSHHG (Wessel &amp; Smith)");
  }
  L.geoJSON(topojson.mesh(countries, countries.objects.countries, (a, b) => a !== b),
            { style: { color: "#8a8a8a", weight: 0.7, dashArray: "3 3" }, interactive: false }).addTo(map);
}

// A dot for each known place (a click on it picks the place, not the point under it), and its name
// as a label of class `labelClass` from LABEL_ZOOM in.
export function drawKnownPlaces(map, places, onPick, labelClass) {
  const labels = L.layerGroup();
  for (const p of places) {
    L.circleMarker([p.latitude, p.longitude], { radius: 4, color: "#1f6feb", weight: 1, fillOpacity: 0.7 })
      .bindTooltip(`${p.name} (${p.short_code} ${p.locality})`)
      .on("click", (e) => { L.DomEvent.stopPropagation(e); onPick(p); })
      .addTo(map);
    L.marker([p.latitude, p.longitude], { interactive: false, keyboard: false,
                                          icon: L.divIcon({ className: labelClass, html: p.name, iconSize: null,
                                                            iconAnchor: [-6, 7] }) }).addTo(labels);
  }
  const toggle = () => (map.getZoom() >= LABEL_ZOOM ? labels.addTo(map) : labels.remove());
  map.on("zoomend", toggle);
  toggle();
}
