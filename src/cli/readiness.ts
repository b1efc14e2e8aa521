/**
 * npm run readiness [-- --json] [--out file.json] [--docs <dir>]: the release readiness matrix of the live
 * system; exits 1 on any FAIL. `--docs`: the directory holding `docs/` (the Docker image has none).
 */
import { writeFileSync } from 'node:fs';
import { readConfig } from '../platform/config/config.ts';
import { assessReadiness } from '../readiness/readiness.target.ts';
import { formatReport } from '../readiness/readiness.format.ts';
import { parseCommandLine } from '../platform/process/command-line.ts';

const USAGE = 'usage: npm run readiness [-- [--json] [--out <file.json>] [--docs <dir holding docs/>]]';
const { values } = parseCommandLine(USAGE, { json: { type: 'boolean', default: false }, out: { type: 'string' }, docs: { type: 'string' } });
const report = await assessReadiness(readConfig, values.docs ? { docsRoot: values.docs } : {});
console.log(values.json ? JSON.stringify(report, null, 2) : formatReport(report));
if (values.out) writeFileSync(values.out, `${JSON.stringify(report, null, 2)}\n`);
process.exitCode = report.ok ? 0 : 1;
