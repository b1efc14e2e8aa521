/**
 * `.ci/node`, through which every npm script runs: it uses the machine's node only when that node runs
 * the TypeScript sources as they are (type stripping on by default: Node 22.18+ or 23.6+), else the
 * node@24 it keeps in DEALIX_NODE_DIR. A machine node of 22.17 passed its old check (>= 22.17) and
 * then failed every script on the first `.ts` file (ERR_UNKNOWN_FILE_EXTENSION).
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'ci-node-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// The machine's node: this node, reporting the version FAKE_NODE_VERSION says.
const fake = join(dir, 'fake-version.mjs');
writeFileSync(fake, "Object.defineProperty(process.versions, 'node', { value: process.env.FAKE_NODE_VERSION });\n");
mkdirSync(join(dir, 'bin'));
writeFileSync(join(dir, 'bin', 'node'), `#!/bin/sh\nexec "${process.execPath}" --import "${fake}" "$@"\n`);
// The cached node@24 (already installed, so nothing is fetched): says that it was the one run.
mkdirSync(join(dir, 'cache', 'node_modules', '.bin'), { recursive: true });
writeFileSync(join(dir, 'cache', 'node_modules', '.bin', 'node'), '#!/bin/sh\necho cached\n');
for (const f of [join(dir, 'bin', 'node'), join(dir, 'cache', 'node_modules', '.bin', 'node')]) chmodSync(f, 0o755);

const nodeRun = (version: string) =>
  execFileSync('sh', ['.ci/node', '-e', 'console.log("machine")'], {
    cwd: ROOT,
    env: { PATH: `${join(dir, 'bin')}:/usr/bin:/bin`, DEALIX_NODE_DIR: join(dir, 'cache'), FAKE_NODE_VERSION: version },
    encoding: 'utf8',
  }).trim();

describe('.ci/node', () => {
  it.each([
    ['22.17.1', 'cached'],
    ['22.18.0', 'machine'],
    ['23.5.0', 'cached'],
    ['23.6.0', 'machine'],
    ['24.0.0', 'machine'],
    ['20.19.0', 'cached'],
  ])('a machine node %s: runs the %s node', (version, which) => {
    expect(nodeRun(version)).toBe(which);
  });

  it('.ci/run, which installs node@24 for CI, asks the same question of the machine node', () => {
    const question = (file: string) => /const \[a,b\]=process\.versions\.node[^']*process\.exit\(([^?]+)\?/.exec(readFileSync(join(ROOT, file), 'utf8'))?.[1];
    expect(question('.ci/node')).toBe('a>23||(a===23&&b>=6)||(a===22&&b>=18)');
    expect(question('.ci/run')).toBe(question('.ci/node'));
  });
});
