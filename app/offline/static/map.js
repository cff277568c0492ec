// The offline page's map: Leaflet over shapes this site serves itself (Natural Earth land and borders
// from world-atlas; over the model's region the shorelines the set-up command clipped), the places
// the model knows, the pin, and a ring of the radius around it. No tile server: nothing is fetched
// from another host.
const SEA = "#cfe3f3";
const LAND = { color: "#6b8f71", weight: 0.6, fillColor: "#e8efe2", fillOpacity: 1 };
const LABEL_ZOOM = 15;

async function json(path) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

async function drawLand(map, detailPath) {
  const [land, countries] = await Promise.all([json("lib/world-atlas/land-50m.json"),
                                               json("lib/world-atlas/countries-50m.json")]);
  L.geoJSON(topojson.feature(land, land.objects.land), { style: LAND, interactive: false }).addTo(map);
  map.attributionControl.addAttribution("Natural Earth");
  if (detailPath) {
    // The clipped region is painted as sea first, so Natural Earth's coarse land under a harbour is hidden.
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

export class TourMap {
  constructor(element, config, onPick) {
    this.radius = config.geo.around_m;
    this.map = L.map(element, { worldCopyJump: true }).setView(config.map.center, config.map.zoom);
    this.map.getContainer().style.background = SEA;
    this.map.on("click", (e) => onPick(e.latlng.lat, e.latlng.lng));
    this.pin = null;
    this.around = null;
    this.ready = drawLand(this.map, config.map.basemap).then(() => this.drawPlaces(config.places || [], onPick));
  }

  drawPlaces(places, onPick) {
    const labels = L.layerGroup();
    for (const p of places) {
      L.circleMarker([p.latitude, p.longitude], { radius: 4, color: "#1f6feb", weight: 1, fillOpacity: 0.7 })
        .bindTooltip(`${p.name} (${p.short_code} ${p.locality})`)
        .on("click", (e) => { L.DomEvent.stopPropagation(e); onPick(p.latitude, p.longitude); })
        .addTo(this.map);
      L.marker([p.latitude, p.longitude], { interactive: false, keyboard: false,
                                            icon: L.divIcon({ className: "label", html: p.name, iconSize: null,
                                                              iconAnchor: [-6, 7] }) }).addTo(labels);
    }
    const toggle = () => (this.map.getZoom() >= LABEL_ZOOM ? labels.addTo(this.map) : labels.remove());
    this.map.on("zoomend", toggle);
    toggle();
  }

  showPin(lat, lon, nearby) {
    if (!this.pin) this.pin = L.marker([lat, lon]).addTo(this.map);
    this.pin.setLatLng([lat, lon]);
    if (this.around) this.around.remove();
    this.around = L.layerGroup().addTo(this.map);
    L.circle([lat, lon], { radius: this.radius, color: "#b45309", weight: 1, dashArray: "4 4", fill: false,
                           interactive: false }).addTo(this.around);
    for (const n of nearby) {
      L.circleMarker([n.latitude, n.longitude], { radius: 7, color: "#b45309", weight: 2, fillColor: "#f59e0b",
                                                  fillOpacity: 0.8, interactive: false }).addTo(this.around);
    }
    if (!this.map.getBounds().contains([lat, lon])) this.map.setView([lat, lon], Math.max(this.map.getZoom(), 14));
  }
}
