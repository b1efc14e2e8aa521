import { afterEach, describe, expect, it } from 'vitest';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pgBinDir } from '../helpers/own-infra.ts';

/** The server binaries of whichever PostgreSQL is installed (own-infra.ts starts throwaway clusters with them). */
describe('pgBinDir', () => {
  const saved = { PATH: process.env.PATH, PG_BIN: process.env.PG_BIN };
  const dirs: string[] = [];
  afterEach(() => {
    process.env.PATH = saved.PATH;
    if (saved.PG_BIN === undefined) delete process.env.PG_BIN;
    else process.env.PG_BIN = saved.PG_BIN;
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  /** A PostgreSQL "installed" under a temporary directory: its pg_config first on PATH, naming a bindir with pg_ctl. */
  function fakeInstall(): string {
    const root = mkdtempSync(join(tmpdir(), 'dealix-pgbin-'));
    dirs.push(root);
    const bindir = join(root, 'lib', 'postgresql', '99', 'bin');
    mkdirSync(bindir, { recursive: true });
    writeFileSync(join(bindir, 'pg_ctl'), '');
    mkdirSync(join(root, 'bin'));
    writeFileSync(join(root, 'bin', 'pg_config'), `#!/bin/sh\necho ${bindir}\n`);
    chmodSync(join(root, 'bin', 'pg_config'), 0o755);
    process.env.PATH = `${join(root, 'bin')}:${saved.PATH}`;
    return bindir;
  }

  it("follows pg_config's bindir, so another PostgreSQL version works", async () => {
    delete process.env.PG_BIN;
    const bindir = fakeInstall();
    expect(await pgBinDir()).toBe(bindir);
  });

  it('PG_BIN, when set, wins', async () => {
    fakeInstall();
    process.env.PG_BIN = '/opt/pg/bin';
    expect(await pgBinDir()).toBe('/opt/pg/bin');
  });
});
