// Python's semantics where JavaScript's differ, so that the page turns the same floats and strings
// into the same text as the server: float `%`, round() (halves to even, on the exact binary value),
// format specs, str.strip and str.split, and regular expressions written for Python's `re`.

// Python's float `%`: the result takes the divisor's sign.
export function pyMod(a, m) {
  const r = a % m;
  return r !== 0 && (r < 0) !== (m < 0) ? r + m : r === 0 ? 0 : r;
}

// round(x)
export function pyRound(x) {
  const floor = Math.floor(x);
  const rest = x - floor; // exact for a double
  if (rest !== 0.5) return rest < 0.5 ? floor : floor + 1;
  return floor % 2 === 0 ? floor : floor + 1;
}

// round(x, -1) for x >= 0: the nearest multiple of ten of the exact binary value, ties to even.
export function pyRoundTens(x) {
  let low = Math.floor(x / 10) * 10;
  if (low > x) low -= 10;
  else if (low + 10 <= x) low += 10;
  const middle = low + 5; // exact, so the comparison is too
  if (x !== middle) return x < middle ? low : low + 10;
  return (low / 10) % 2 === 0 ? low : low + 10;
}

// f"{x:.1f}": correctly rounded like toFixed, but an exact tie (x a multiple of 1/4 that is not one
// of 1/2) goes to the even digit where toFixed goes up.
export function pyFixed1(x) {
  if (Number.isInteger(x * 4) && !Number.isInteger(x * 2)) {
    const tenths = Math.floor(x * 10);
    return ((tenths % 2 === 0 ? tenths : tenths + 1) / 10).toFixed(1);
  }
  return x.toFixed(1);
}

// round(x, 1), a float
export const pyRound1 = (x) => Number(pyFixed1(x));

// f"{x:,.0f}"
export const pyThousands = (x) => String(pyRound(x)).replace(/\B(?=(\d{3})+(?!\d))/g, ",");

// str.isspace's characters, which are not quite JavaScript's \s
const SPACE = "[\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
const STRIP = new RegExp(`^${SPACE}+|${SPACE}+$`, "g");
const RUNS = new RegExp(`${SPACE}+`);

// str.strip()
export const pyStrip = (text) => text.replace(STRIP, "");

// str.split() with no separator
export const pySplit = (text) => pyStrip(text).split(RUNS).filter(Boolean);

// A pattern written for Python's `re` (its source and flags, as the build exports them) as a
// JavaScript RegExp: \w is Unicode there, ASCII here, so it becomes letters, digits and _; escapes of
// characters that need none (re.escape makes them) lose their backslash, which the u flag requires.
export function pyRegex(source, flags = "") {
  let out = "", inClass = false;
  for (let i = 0; i < source.length; i++) {
    const c = source[i];
    if (c === "\\") {
      const next = source[++i];
      if (next === "w") out += inClass ? "\\p{L}\\p{N}_" : "[\\p{L}\\p{N}_]";
      else if ("dDsSbBnrtfv0123456789pPux".includes(next) || "^$\\.*+?()[]{}|/".includes(next)) out += `\\${next}`;
      else if (next === "-" && inClass) out += "\\-";
      else out += next;
      continue;
    }
    if (c === "[" && !inClass) inClass = true;
    else if (c === "]" && inClass) inClass = false;
    out += c;
  }
  return new RegExp(out, `u${flags}`);
}
