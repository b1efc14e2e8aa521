/** One row of the release readiness matrix: a component of the live system and its verdict. */
export interface ReadinessRow {
  component: string;
  status: 'PASS' | 'FAIL';
  reason: string;
}

export interface ReadinessReport {
  ok: boolean;
  checkedAt: string;
  rows: ReadinessRow[];
}

export const pass = (component: string, reason: string): ReadinessRow => ({ component, status: 'PASS', reason });
export const fail = (component: string, reason: string): ReadinessRow => ({ component, status: 'FAIL', reason });
export const verdict = (component: string, ok: boolean, reason: string): ReadinessRow => (ok ? pass : fail)(component, reason);

export function toReport(rows: ReadinessRow[], now = new Date()): ReadinessReport {
  return { ok: rows.length > 0 && rows.every((r) => r.status === 'PASS'), checkedAt: now.toISOString(), rows };
}
