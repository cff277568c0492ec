// The offline page's map: Leaflet over shapes this site serves itself (Natural Earth land and borders
// from world-atlas; over the model's region the shorelines the set-up command clipped), the places
// the model knows, the pin, and a ring of the radius around it. No tile server: nothing is fetched
// from another host.
import { drawBasemap, drawKnownPlaces } from "./basemap.js";

export class TourMap {
  constructor(element, config, onPick) {
    this.radius = config.geo.around_m;
    this.map = L.map(element, { worldCopyJump: true }).setView(config.map.center, config.map.zoom);
    this.map.on("click", (e) => onPick(e.latlng.lat, e.latlng.lng));
    this.pin = null;
    this.around = null;
    this.ready = drawBasemap(this.map, "lib", config.map.basemap)
      .then(() => drawKnownPlaces(this.map, config.places || [], (p) => onPick(p.latitude, p.longitude), "label"));
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
