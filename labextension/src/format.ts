/**
 * Quantities printed in one place, the same way as the Python side
 * (`tf_remoting.quantities.format_bytes` / `format_percent`): binary units, at most one decimal,
 * a tie rounded half away from zero (1.25 GiB -> "1.3 GiB"). The rounding is done on exact
 * integers (BigInt), never on a float's approximation; both sides are tested against the same
 * table, tests/fixtures/size_cases.json.
 */

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

/** A whole number of tenths as text with at most one decimal: 13 -> "1.3", 40 -> "4". */
function tenthsText(tenths: bigint): string {
  const sign = tenths < 0n ? '-' : '';
  const abs = tenths < 0n ? -tenths : tenths;
  const whole = abs / 10n;
  const tenth = abs % 10n;
  return tenth ? `${sign}${whole}.${tenth}` : `${sign}${whole}`;
}

/** numerator / denominator (both > 0) in whole tenths, a tie rounded up: (5, 4) -> 13. */
function roundTenths(numerator: bigint, denominator: bigint): bigint {
  return (20n * numerator + denominator) / (2n * denominator);
}

/** A size as a whole number of bytes (a fraction of a byte is rounded away). */
function wholeBytes(n: number): bigint {
  return BigInt(Math.round(n));
}

/** The exponent of the unit for `n` bytes (n >= 0): the largest with 1024**exponent <= n. */
function unitExponent(n: bigint): number {
  let exponent = 0;
  while (exponent < UNITS.length - 1 && n >= 1024n ** BigInt(exponent + 1)) {
    exponent += 1;
  }
  return exponent;
}

/** Bytes in binary units with at most one decimal: 5905580032 -> "5.5 GiB". */
export function formatBytes(n: number): string {
  if (n < 0) {
    return '-' + formatBytes(-n);
  }
  const bytes = wholeBytes(n);
  if (bytes < 1024n) {
    return `${bytes} B`;
  }
  let exponent = unitExponent(bytes);
  let tenths = roundTenths(bytes, 1024n ** BigInt(exponent));
  if (tenths >= 10240n && exponent < UNITS.length - 1) {
    // 1023.96 KiB prints as 1 MiB.
    exponent += 1;
    tenths = roundTenths(bytes, 1024n ** BigInt(exponent));
  }
  return `${tenthsText(tenths)} ${UNITS[exponent]}`;
}

/** `bytes` in the unit 1024**exponent with exactly one decimal (or none in bytes): "3.1", "8.0". */
function fixedInUnit(bytes: bigint, exponent: number): string {
  if (exponent === 0) {
    return String(bytes);
  }
  const tenths = roundTenths(bytes, 1024n ** BigInt(exponent));
  return `${tenths / 10n}.${tenths % 10n}`;
}

/**
 * A used/limit pair in the limit's unit, one decimal each: "3.1 / 8.0 GiB".
 * Both numbers share one unit so they can be compared at a glance.
 */
export function formatBytesPair(used: number, limit: number): string {
  const u = wholeBytes(Math.max(0, used));
  const l = wholeBytes(Math.max(0, limit));
  const exponent = unitExponent(u > l ? u : l);
  return `${fixedInUnit(u, exponent)} / ${fixedInUnit(l, exponent)} ${UNITS[exponent]}`;
}

/**
 * A number's tenths as written in its shortest decimal form (what `String(p)` and Python's
 * `repr` both give), a tie rounded half away from zero: 12.25 -> 123n, 12.35 -> 124n.
 */
function decimalTenths(p: number): bigint {
  const match = /^(-?)(\d+)(?:\.(\d*))?(?:e([+-]?\d+))?$/.exec(String(p));
  if (!match) {
    return BigInt(Math.round(p * 10));
  }
  const [, sign, whole, fraction = '', exp = '0'] = match;
  const digits = BigInt(whole + fraction);
  // value = digits * 10**scale; tenths = digits * 10**(scale + 1).
  const scale = Number(exp) - fraction.length + 1;
  const abs = scale >= 0 ? digits * 10n ** BigInt(scale) : roundTenths(digits, 10n ** BigInt(1 - scale));
  return sign ? -abs : abs;
}

/** A percentage with at most one decimal: 25 -> "25 %", 12.25 -> "12.3 %". */
export function formatPercent(p: number): string {
  if (!Number.isFinite(p)) {
    return `${p} %`;
  }
  return `${tenthsText(decimalTenths(p))} %`;
}

/** How long ago, in words: "12 s", "3 min", "2 h 5 min". */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) {
    return `${s} s`;
  }
  const minutes = Math.floor(s / 60);
  if (minutes < 60) {
    return `${minutes} min`;
  }
  const hours = Math.floor(minutes / 60);
  const rest = minutes % 60;
  return rest ? `${hours} h ${rest} min` : `${hours} h`;
}
