/** npm run readiness [-- --json] [-- --out file.json]: the release readiness matrix of the live system; exits 1 on any FAIL. */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { readConfig } from '../platform/config/config.ts';
import { assessReadiness } from '../readiness/readiness.target.ts';
import { formatReport } from '../readiness/readiness.format.ts';

const { values } = parseArgs({ options: { json: { type: 'boolean', default: false }, out: { type: 'string' }, docs: { type: 'string' } } });
const report = await assessReadiness(readConfig, values.docs ? { docsRoot: values.docs } : {});
console.log(values.json ? JSON.stringify(report, null, 2) : formatReport(report));
if (values.out) writeFileSync(values.out, `${JSON.stringify(report, null, 2)}\n`);
process.exitCode = report.ok ? 0 : 1;
