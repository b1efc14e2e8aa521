/** Small statistics helpers for the benchmark (nearest-rank percentiles on a sorted copy; the median as usual). */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}

/**
 * The median: the middle value, or the mean of the two middle values of an even count. Nearest rank
 * would take the lower of the two — with 20 kills the 10th fastest, which leans toward passing a
 * "≤" budget (a median over rounds or kills is an even count more often than not).
 */
export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** The largest value, without spreading the array into arguments (a RangeError past ~120,000 values). */
export function max(values: number[]): number {
  return values.length ? values.reduce((a, b) => (b > a ? b : a), Number.NEGATIVE_INFINITY) : Number.NaN;
}

/** The smallest value (see {@link max}). */
export function min(values: number[]): number {
  return values.length ? values.reduce((a, b) => (b < a ? b : a), Number.POSITIVE_INFINITY) : Number.NaN;
}

export interface Latency {
  n: number;
  p50: number;
  p99: number;
  max: number;
}

export function latency(values: number[]): Latency {
  return { n: values.length, p50: percentile(values, 50), p99: percentile(values, 99), max: max(values) };
}

/** A wall-clock time in milliseconds with sub-millisecond resolution, comparable across processes. */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function round(v: number, digits = 1): number {
  if (!Number.isFinite(v)) return v;
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}
