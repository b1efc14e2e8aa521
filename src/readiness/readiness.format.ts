import type { ReadinessReport } from './readiness.types.ts';

/** The matrix as an aligned text table, FAIL rows marked so they stand out in a CI log. */
export function formatReport(report: ReadinessReport): string {
  const width = Math.max(9, ...report.rows.map((r) => r.component.length));
  const lines = [`STATUS  ${'COMPONENT'.padEnd(width)}  REASON`];
  for (const r of report.rows) lines.push(`${r.status === 'PASS' ? 'PASS  ' : 'FAIL ✗'}  ${r.component.padEnd(width)}  ${r.reason}`);
  const failed = report.rows.filter((r) => r.status === 'FAIL').length;
  lines.push('', report.ok ? `READY: all ${report.rows.length} components PASS` : `NOT READY: ${failed} of ${report.rows.length} components FAIL`);
  return lines.join('\n');
}
