import type { ReadinessReport } from './readiness.types.ts';

/** The matrix as an aligned text table, FAIL rows marked so they stand out in a CI log. */
export function formatReport(report: ReadinessReport): string {
  const width = Math.max(9, ...report.rows.map((r) => r.component.length));
  const lines = [`STATUS    ${'COMPONENT'.padEnd(width)}  REASON`];
  const mark = { PASS: 'PASS    ', FAIL: 'FAIL ✗  ', 'N/A': 'N/A     ', ACCEPTED: 'ACCEPTED' } as const;
  for (const r of report.rows) lines.push(`${mark[r.status]}  ${r.component.padEnd(width)}  ${r.reason}`);
  const count = (status: keyof typeof mark) => report.rows.filter((r) => r.status === status).length;
  const [passed, failed, notApplicable, accepted] = [count('PASS'), count('FAIL'), count('N/A'), count('ACCEPTED')];
  const notes = [
    ...(accepted ? [`${accepted} ACCEPTED: unknown to the matrix, verified by the operator (READINESS_ACCEPT_UNKNOWN)`] : []),
    ...(notApplicable ? [`${notApplicable} N/A: production requirements, not checked outside production`] : []),
  ];
  const na = notes.length ? ` (${notes.join('; ')})` : '';
  lines.push('', report.ok ? `READY: ${passed} of ${report.rows.length} components PASS${na}` : `NOT READY: ${failed} of ${report.rows.length} components FAIL${na}`);
  return lines.join('\n');
}
