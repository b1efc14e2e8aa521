import type { ReadinessReport } from './readiness.types.ts';

/** The matrix as an aligned text table, FAIL rows marked so they stand out in a CI log. */
export function formatReport(report: ReadinessReport): string {
  const width = Math.max(9, ...report.rows.map((r) => r.component.length));
  const lines = [`STATUS  ${'COMPONENT'.padEnd(width)}  REASON`];
  const mark = { PASS: 'PASS  ', FAIL: 'FAIL ✗', 'N/A': 'N/A   ' } as const;
  for (const r of report.rows) lines.push(`${mark[r.status]}  ${r.component.padEnd(width)}  ${r.reason}`);
  const failed = report.rows.filter((r) => r.status === 'FAIL').length;
  const notApplicable = report.rows.filter((r) => r.status === 'N/A').length;
  const passed = report.rows.length - failed - notApplicable;
  const na = notApplicable ? ` (${notApplicable} N/A: production requirements, not checked outside production)` : '';
  lines.push('', report.ok ? `READY: ${passed} of ${report.rows.length} components PASS${na}` : `NOT READY: ${failed} of ${report.rows.length} components FAIL${na}`);
  return lines.join('\n');
}
