/**
 * Quantities printed in one place, the same way as the Python side
 * (`tf_remoting.quantities.format_bytes` / `format_percent`).
 */

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

function oneDecimal(value: number): string {
  const rounded = Math.round(value * 10) / 10;
  return Number.isInteger(rounded) ? String(rounded) : rounded.toFixed(1);
}

/** Bytes in binary units with at most one decimal: 5905580032 -> "5.5 GiB". */
export function formatBytes(n: number): string {
  if (n < 0) {
    return '-' + formatBytes(-n);
  }
  if (n < 1024) {
    return `${Math.round(n)} B`;
  }
  let exponent = 0;
  while (exponent < UNITS.length - 1 && n >= 1024 ** (exponent + 1)) {
    exponent += 1;
  }
  let value = Math.round((n / 1024 ** exponent) * 10) / 10;
  if (value >= 1024 && exponent < UNITS.length - 1) {
    exponent += 1;
    value = Math.round((n / 1024 ** exponent) * 10) / 10;
  }
  return `${oneDecimal(value)} ${UNITS[exponent]}`;
}

/**
 * A used/limit pair in the limit's unit, one decimal each: "3.1 / 8.0 GiB".
 * Both numbers share one unit so they can be compared at a glance.
 */
export function formatBytesPair(used: number, limit: number): string {
  let exponent = 0;
  const top = Math.max(limit, used);
  while (exponent < UNITS.length - 1 && top >= 1024 ** (exponent + 1)) {
    exponent += 1;
  }
  const scale = 1024 ** exponent;
  const digits = exponent === 0 ? 0 : 1;
  return `${(used / scale).toFixed(digits)} / ${(limit / scale).toFixed(digits)} ${UNITS[exponent]}`;
}

/** A percentage: 25 -> "25 %", 12.25 -> "12.3 %". */
export function formatPercent(p: number): string {
  return `${oneDecimal(p)} %`;
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
