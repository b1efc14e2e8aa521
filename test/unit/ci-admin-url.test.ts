/**
 * The superuser URL of the CI scripts (`.ci/admin-url`, sourced by `.ci/run` and `.ci/readiness-gate`).
 * Gate 2 took DATABASE_ADMIN_URL from the shell only, else a passwordless postgres URL, and exported it
 * (a shell value beats .env under node's --env-file): on a machine whose superuser needs a password —
 * set up as the README says, DATABASE_ADMIN_URL in .env and TEST_DATABASE_ADMIN_URL exported for
 * `npm test` — gate 2 failed after the whole suite had passed. The connection watch of `.ci/run` had
 * `psql -U postgres` written in, so it saw nothing there. Neither script is run here: the resolution
 * itself, then the gate up to its first step (`npm run db:setup`, a stand-in that prints what it got).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const DEFAULT = 'postgres://postgres@127.0.0.1:5432/postgres';
// Nothing listens on port 1: a script that got further than it should would fail, never touch a server.
const SHELL = 'postgres://postgres:shell-secret@127.0.0.1:1/postgres';
const TESTS = 'postgres://postgres:test-secret@127.0.0.1:1/postgres';
const PATH = `${dirname(process.execPath)}:/usr/bin:/bin`;

const resolved = (env: Record<string, string>) =>
  execFileSync('bash', ['-c', 'set -euo pipefail; . .ci/admin-url; ci_admin_url'], { cwd: ROOT, env: { PATH, ...env }, encoding: 'utf8' }).trim();

describe('.ci/admin-url', () => {
  it.each([
    ['nothing set: the passwordless default', {}, DEFAULT],
    ['TEST_DATABASE_ADMIN_URL only (the README, for npm test): it', { TEST_DATABASE_ADMIN_URL: TESTS }, TESTS],
    ['DATABASE_ADMIN_URL exported: it, over TEST_DATABASE_ADMIN_URL', { DATABASE_ADMIN_URL: SHELL, TEST_DATABASE_ADMIN_URL: TESTS }, SHELL],
    ['DATABASE_ADMIN_URL exported empty: as if unset', { DATABASE_ADMIN_URL: '', TEST_DATABASE_ADMIN_URL: TESTS }, TESTS],
  ])('%s', (_name, env, url) => {
    expect(resolved(env)).toBe(url);
  });

  it('.ci/readiness-gate: with only TEST_DATABASE_ADMIN_URL exported, db:setup is given that URL (and the roles its server), not the passwordless default', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ci-admin-url-'));
    try {
      // `npm` as the gate calls it: prints the settings db:setup would read, and fails, so the gate goes no further.
      writeFileSync(join(dir, 'npm'), '#!/bin/sh\necho "npm $* DATABASE_ADMIN_URL=$DATABASE_ADMIN_URL MIGRATION_DATABASE_URL=$MIGRATION_DATABASE_URL"\nexit 3\n');
      chmodSync(join(dir, 'npm'), 0o755);
      const gate = spawnSync('bash', ['.ci/readiness-gate'], {
        cwd: ROOT,
        env: { PATH: `${dir}:${PATH}`, TEST_DATABASE_ADMIN_URL: TESTS, REDIS_URL: 'redis://127.0.0.1:1' },
        encoding: 'utf8',
        timeout: 120_000,
      });
      expect(gate.status, gate.stderr).toBe(3);
      const setup = gate.stdout.split('\n').find((l) => l.startsWith('npm run -s db:setup '));
      expect(setup, gate.stdout).toMatch(new RegExp(` DATABASE_ADMIN_URL=${TESTS} MIGRATION_DATABASE_URL=postgres://dealix_owner:dealix_owner@127\\.0\\.0\\.1:1/dealix_gate\\d+`));
      expect(gate.stdout).toContain('on 127.0.0.1:1');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 150_000);

  it('both scripts resolve it there: no superuser URL or psql -U of their own', () => {
    for (const file of ['.ci/run', '.ci/readiness-gate']) {
      const script = readFileSync(join(ROOT, file), 'utf8');
      expect(script, file).toMatch(/^\. "\$\(dirname "\$0"\)\/admin-url"$/m);
      expect(script, file).toMatch(/\$\(ci_admin_url\)/);
      expect(script, file).not.toContain('postgres://postgres@');
      expect(script, file).not.toMatch(/psql[^\n]*-U /);
    }
  });

  it('.ci/run gives gate 1 the same URL: npm test reads only TEST_DATABASE_ADMIN_URL (test/helpers/env.ts), so it is exported as resolved before the suite runs', () => {
    const script = readFileSync(join(ROOT, '.ci/run'), 'utf8');
    const exported = script.search(/^export TEST_DATABASE_ADMIN_URL="\$\(ci_admin_url\)"$/m);
    expect(exported, 'export TEST_DATABASE_ADMIN_URL="$(ci_admin_url)"').toBeGreaterThan(-1);
    expect(exported).toBeLessThan(script.search(/^npm test$/m));
  });
});
