/** npm run architecture [-- <root>]: the architecture conformance check (part of npm run lint); exits 1 naming each offending file and import. */
import { fileURLToPath } from 'node:url';
import { checkArchitecture, formatViolations } from '../readiness/architecture.check.ts';

const root = process.argv[2] ?? fileURLToPath(new URL('../..', import.meta.url));
const result = checkArchitecture(root);
console.log(formatViolations(result));
process.exitCode = result.violations.length ? 1 : 0;
