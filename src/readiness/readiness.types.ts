/** One row of the release readiness matrix: a component of the live system and its verdict. */
export interface ReadinessRow {
  component: string;
  /**
   * N/A: a production requirement this deployment is not held to (NODE_ENV is not production): not
   * checked as one, so not a PASS — the reason says what a production deployment would be told.
   */
  status: 'PASS' | 'FAIL' | 'N/A';
  reason: string;
}

export interface ReadinessReport {
  ok: boolean;
  checkedAt: string;
  rows: ReadinessRow[];
}

export const pass = (component: string, reason: string): ReadinessRow => ({ component, status: 'PASS', reason });
export const fail = (component: string, reason: string): ReadinessRow => ({ component, status: 'FAIL', reason });
/** A production requirement outside production: neither a pass nor a failure (the matrix stays ready). */
export const notRequired = (component: string, why: string): ReadinessRow => ({ component, status: 'N/A', reason: `not required outside production (${why})` });
export const verdict = (component: string, ok: boolean, reason: string): ReadinessRow => (ok ? pass : fail)(component, reason);

export function toReport(rows: ReadinessRow[], now = new Date()): ReadinessReport {
  return { ok: rows.some((r) => r.status === 'PASS') && rows.every((r) => r.status !== 'FAIL'), checkedAt: now.toISOString(), rows };
}
