// Where the visitor is, as the server app computes it: the Plus Code and its short form with a
// locality (data/geo.py), the known places within 500 m with distance and direction
// (app/coverage.py), and the line or notice that leads the answer (app/service.py). The constants
// come from config.json, which the build writes from the Python; tests/test_offline.py checks this
// file against the Python on the same inputs, so a change on either side that is not made on the
// other fails the suite. The wording of the lead line and the notice is the Python's own: the build
// writes it into config.json with placeholders ({name}, {distance}, {direction}, {how_far}).
//
// Plus Codes: npm's open-location-code (1.0.3, the newest on npm) recovers a short code's full code
// as Python's openlocationcode does, but it encodes with floating-point division, which puts a point
// on a cell's edge (any latitude given to three decimals is one) into the neighbouring cell, and it
// decodes centres a little off. Encoding and decoding are therefore Python's integer arithmetic, below.
import OLC from "./lib/open-location-code/openlocationcode.js";
import { pyFixed1, pyMod, pyRound, pyRound1, pyRoundTens, pyThousands } from "./python.js";

const ALPHABET = "23456789CFGHJMPQRVWX";
const PAIR_PRECISION = 8000; // 20 ** 3
const FINAL_LAT_PRECISION = 25000000, FINAL_LNG_PRECISION = 8192000;

const DEG_TO_RAD = Math.PI / 180; // CPython's math.radians / math.degrees factors
const RAD_TO_DEG = 180 / Math.PI;

// openlocationcode.encode(lat, lon, 10): the point as whole multiples of the finest grid, then digits.
export function plusCode(latitude, longitude) {
  latitude = Math.min(90, Math.max(-90, latitude));
  while (longitude < -180) longitude += 360;
  while (longitude >= 180) longitude -= 360;
  if (latitude === 90) latitude -= Math.pow(20, -3);
  // int(round(v, 6)): the rounding to 6 decimals cannot move the integer part differently from Python's
  let lat = Math.trunc(Number(((latitude + 90) * FINAL_LAT_PRECISION).toFixed(6)));
  let lng = Math.trunc(Number(((longitude + 180) * FINAL_LNG_PRECISION).toFixed(6)));
  lat = Math.floor(lat / 3125); // 5 ** 5 grid rows
  lng = Math.floor(lng / 1024); // 4 ** 5 grid columns
  let code = "";
  for (let i = 0; i < 5; i++) {
    code = ALPHABET[lat % 20] + ALPHABET[lng % 20] + code;
    lat = Math.floor(lat / 20);
    lng = Math.floor(lng / 20);
  }
  return `${code.slice(0, 8)}+${code.slice(8)}`;
}

// openlocationcode.decode(code) of a 10-digit code: its cell's centre, rounded to 14 decimals as there.
export function cellCentre(code) {
  const digits = code.replace(/[+0]/g, "").toUpperCase();
  let lat = -90 * PAIR_PRECISION, lng = -180 * PAIR_PRECISION, place = 160000; // 20 ** 4
  for (let i = 0; i < 10; i += 2) {
    lat += ALPHABET.indexOf(digits[i]) * place;
    lng += ALPHABET.indexOf(digits[i + 1]) * place;
    if (i < 8) place = Math.floor(place / 20);
  }
  const size = place / PAIR_PRECISION, round14 = (x) => Number(x.toFixed(14));
  const [south, west] = [round14(lat / PAIR_PRECISION), round14(lng / PAIR_PRECISION)];
  const [north, east] = [round14(lat / PAIR_PRECISION + size), round14(lng / PAIR_PRECISION + size)];
  return [Math.min(south + (north - south) / 2, 90), Math.min(west + (east - west) / 2, 180)];
}

export class Geo {
  constructor(constants, wording, places, gazetteerRows) {
    this.c = constants;
    this.wording = wording;
    this.places = places; // null: the model ships no list of known places
    this.gazetteer = gazetteerRows ? new Gazetteer(gazetteerRows, constants.search_degrees) : null;
  }

  // data.geo.distance_m: great-circle metres (haversine), longitudes wrapped.
  distance(lat1, lon1, lat2, lon2) {
    const phi1 = lat1 * DEG_TO_RAD, phi2 = lat2 * DEG_TO_RAD;
    const dphi = phi2 - phi1;
    const dlam = (pyMod(lon2 - lon1 + 180, 360) - 180) * DEG_TO_RAD;
    const a = Math.sin(dphi / 2), b = Math.sin(dlam / 2);
    const h = a * a + Math.cos(phi1) * Math.cos(phi2) * b * b;
    return 2 * this.c.earth_radius_m * Math.asin(Math.min(1.0, Math.sqrt(h)));
  }

  // data.geo.bearing_deg: the initial great-circle bearing, degrees clockwise from north in [0, 360).
  bearing(lat1, lon1, lat2, lon2) {
    const phi1 = lat1 * DEG_TO_RAD, phi2 = lat2 * DEG_TO_RAD;
    const dlam = (pyMod(lon2 - lon1 + 180, 360) - 180) * DEG_TO_RAD;
    const y = Math.sin(dlam) * Math.cos(phi2);
    const x = Math.cos(phi1) * Math.sin(phi2) - Math.sin(phi1) * Math.cos(phi2) * Math.cos(dlam);
    return pyMod(Math.atan2(y, x) * RAD_TO_DEG, 360);
  }

  // data.geo.compass
  compass(bearing) {
    return this.c.compass_points[pyMod(pyRound(pyMod(bearing, 360) / 45), 8)];
  }

  // data.geo.check_coordinates, with its messages.
  checkCoordinates(lat, lon) {
    for (const [what, value, limit] of [["latitude", lat, 90], ["longitude", lon, 180]]) {
      if (typeof value !== "number" || Number.isNaN(value)) throw new Error(`${what} is not a number`);
      if (!Number.isFinite(value)) throw new Error(`${what} is infinite`);
      if (value < -limit || value > limit) throw new Error(`${what} ${value} is outside -${limit}..${limit}`);
    }
  }

  // data.geo.encode: the pin's Place (its own coordinates, the 10-digit code, the short code and locality).
  encode(lat, lon) {
    this.checkCoordinates(lat, lon);
    const code = plusCode(lat, lon);
    const [shortCode, locality] = this.shorten(code);
    return { latitude: lat, longitude: lon, plus_code: code, short_code: shortCode, locality };
  }

  // data.geo.shorten: the most populous locality near the cell from which the short code recovers it.
  shorten(fullCode) {
    if (!this.gazetteer) return [null, null];
    const short = fullCode.slice(this.c.short_drop);
    for (const [label, lat, lon] of this.gazetteer.near(...cellCentre(fullCode))) {
      if (OLC.recoverNearest(short, lat, lon) === fullCode) return [short, label];
    }
    return [null, null];
  }

  // app.coverage.Coverage.seen_from and Nearby.to_json
  seenFrom(place, known) {
    const distance = this.distance(place.latitude, place.longitude, known.latitude, known.longitude);
    const bearing = this.bearing(place.latitude, place.longitude, known.latitude, known.longitude);
    return { place: known, distance, bearing, direction: this.compass(bearing) };
  }

  static json(nearby) {
    return { ...nearby.place, distance_m: pyRound1(nearby.distance), bearing_deg: pyMod(pyRound(nearby.bearing), 360),
             direction: nearby.direction };
  }

  static order(a, b) {
    return a.distance - b.distance || (a.place.poi_id < b.place.poi_id ? -1 : a.place.poi_id > b.place.poi_id ? 1 : 0);
  }

  // app.coverage.Coverage.around: the known places within the radius, nearest first (ties by id).
  around(place) {
    const seen = this.places.map((known) => this.seenFrom(place, known));
    return seen.filter((n) => n.distance <= this.c.around_m).sort(Geo.order);
  }

  // app.coverage.Coverage.nearest
  nearest(place) {
    const seen = this.places.map((known) => this.seenFrom(place, known)).sort(Geo.order);
    return seen.length ? seen[0] : null;
  }

  // app.service.lead_line
  leadLine(chosen) {
    const w = this.wording;
    if (chosen.distance < 20) return fill(w.lead_here, { name: chosen.place.name });
    return fill(w.lead_away, { name: chosen.place.name, distance: pyRoundTens(chosen.distance),
                               direction: chosen.direction });
  }

  // app.service._how_far
  howFar(metres) {
    if (metres >= 100000) return `${pyThousands(metres / 1000)} km`;
    return metres >= 1000 ? `${pyFixed1(metres / 1000)} km` : `${pyRoundTens(metres)} m`;
  }

  // app.service.far_notice
  farNotice(nearest) {
    const w = this.wording;
    if (!nearest) return w.far_none;
    return fill(w.far_nearest, { name: nearest.place.name, how_far: this.howFar(nearest.distance),
                                 direction: nearest.direction });
  }

  // app.service.TourGuide.header and plan: what the answer is about, and the place the model is asked about.
  plan(place, poiId = null) {
    const header = { plus_code: place.plus_code, short_code: place.short_code, locality: place.locality,
                     latitude: place.latitude, longitude: place.longitude, nearby: [], nearest: null,
                     answered_for: null, lead: null, notice: null };
    if (!this.places) {
      if (poiId !== null) throw new Error("poi_id: this model ships no list of known places to choose from");
      return { header, asked: place };
    }
    const around = this.around(place);
    let chosen = around.length ? around[0] : null;
    if (poiId !== null) {
      chosen = around.find((n) => n.place.poi_id === poiId);
      if (!chosen) throw new Error(`poi_id: '${poiId}' is not within ${pyRound(this.c.around_m)} m of this spot`);
    }
    const nearest = around.length ? around[0] : this.nearest(place);
    header.nearby = around.map(Geo.json);
    header.nearest = nearest ? Geo.json(nearest) : null;
    if (!chosen) {
      header.notice = this.farNotice(nearest);
      return { header, asked: place };
    }
    header.answered_for = Geo.json(chosen);
    header.lead = this.leadLine(chosen);
    return { header, asked: chosen.place }; // the model is asked about the chosen place's own cell
  }
}

// A wording with its placeholders filled (split and join: a name may hold anything, even "$&").
function fill(template, values) {
  return Object.entries(values).reduce((text, [key, value]) => text.split(`{${key}}`).join(String(value)), template);
}

// data.geo.Gazetteer.near over rows the build wrote in the order shorten tries them.
class Gazetteer {
  constructor(rows, degrees) {
    this.rows = rows;
    this.degrees = degrees;
    this.grid = new Map();
    rows.forEach(([, lat, lon], i) => {
      const key = `${Math.floor(lat)},${Math.floor(lon)}`;
      if (!this.grid.has(key)) this.grid.set(key, []);
      this.grid.get(key).push(i);
    });
  }

  near(lat, lon) {
    const d = this.degrees;
    const found = [];
    for (let glat = Math.floor(lat - d); glat <= Math.floor(lat + d); glat++) {
      for (let glon = Math.floor(lon - d); glon <= Math.floor(lon + d); glon++) {
        for (const i of this.grid.get(`${glat},${pyMod(glon + 180, 360) - 180}`) || []) {
          const [, plat, plon] = this.rows[i];
          if (Math.abs(plat - lat) <= d && Math.abs(pyMod(plon - lon + 180, 360) - 180) <= d) found.push(i);
        }
      }
    }
    return found.sort((a, b) => a - b).map((i) => this.rows[i]);
  }
}
