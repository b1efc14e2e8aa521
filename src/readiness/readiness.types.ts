import type { Config, ReadinessUnknowableRow } from '../platform/config/config.ts';

/** One row of the release readiness matrix: a component of the live system and its verdict. */
export interface ReadinessRow {
  component: string;
  /**
   * N/A: a production requirement this deployment is not held to (NODE_ENV is not production): not
   * checked as one, so not a PASS — the reason says what a production deployment would be told.
   * ACCEPTED: a value the matrix could not read (a managed Redis refuses CONFIG) that the operator
   * verified where it is set and listed in READINESS_ACCEPT_UNKNOWN: not a PASS, not a failure either.
   */
  status: 'PASS' | 'FAIL' | 'N/A' | 'ACCEPTED';
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
/** The operator's acceptance of values the matrix cannot read (READINESS_ACCEPT_UNKNOWN, READINESS_ACCEPT_NOTE). */
export interface Acceptance {
  rows: readonly ReadinessUnknowableRow[];
  note: string | undefined;
}

export const acceptanceOf = (config: Pick<Config, 'READINESS_ACCEPT_UNKNOWN' | 'READINESS_ACCEPT_NOTE'>): Acceptance => ({ rows: config.READINESS_ACCEPT_UNKNOWN, note: config.READINESS_ACCEPT_NOTE });

/**
 * A row whose value the matrix could not read (`unread` says which and why it could not; `requirement`
 * what the value must be): ACCEPTED when the operator listed it, with their note; otherwise a FAIL that
 * says how to accept it once verified.
 */
export function unknownRow(component: ReadinessUnknowableRow, unread: string, requirement: string, acceptance: Acceptance): ReadinessRow {
  if (!acceptance.rows.includes(component)) {
    return fail(component, `${unread}: ${requirement}; once verified where it is set (a managed Redis: its parameter group), list it in READINESS_ACCEPT_UNKNOWN`);
  }
  const trail = acceptance.note ? `${acceptance.note} (READINESS_ACCEPT_UNKNOWN; unread here: ${unread})` : `${unread} (READINESS_ACCEPT_UNKNOWN; READINESS_ACCEPT_NOTE unset)`;
  return { component, status: 'ACCEPTED', reason: `verified by the operator: ${trail}` };
}

/** A value read and found wrong, or none read at all (unreachable): a FAIL that READINESS_ACCEPT_UNKNOWN never turns, and says so when it lists the row. */
export function knownFail(component: ReadinessUnknowableRow, reason: string, acceptance: Acceptance): ReadinessRow {
  return fail(component, acceptance.rows.includes(component) ? `${reason}; READINESS_ACCEPT_UNKNOWN lists it, but accepts only a value the matrix cannot read` : reason);
}

export const verdict = (component: string, ok: boolean, reason: string): ReadinessRow => (ok ? pass : fail)(component, reason);

export function toReport(rows: ReadinessRow[], now = new Date()): ReadinessReport {
  return { ok: rows.some((r) => r.status === 'PASS') && rows.every((r) => r.status !== 'FAIL'), checkedAt: now.toISOString(), rows };
}
