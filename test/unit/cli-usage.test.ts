import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { asksForHelp } from '../../src/platform/process/command-line.ts';

/**
 * The commands a new engineer types (README, *Commands*): `--help` and a mistyped option answer with the
 * usage before anything is done. They were node's parseArgs stack trace (token, readiness, demo), and
 * the db commands ignored every argument: `npm run db:migrate -- --help` applied the migrations. Each
 * case here exits before reading the configuration, so no PostgreSQL or Redis is touched (and none is
 * configured: the environment is PATH alone, no .env is read).
 */
const root = fileURLToPath(new URL('../..', import.meta.url));
const run = (args: string[]) =>
  new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
    const p = spawn(process.execPath, args, { cwd: root, env: { PATH: process.env.PATH ?? '' } });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('close', (code) => resolve({ code, out, err }));
  });

describe('command-line usage', () => {
  it('--help or -h, before a "--" only', () => {
    expect(asksForHelp(['--help'])).toBe(true);
    expect(asksForHelp(['--json', '-h'])).toBe(true);
    expect(asksForHelp(['--', '--help'])).toBe(false);
    expect(asksForHelp(['--json'])).toBe(false);
  });

  it('db: --help prints the usage, exit 0; an argument a command does not take stops it, exit 2, before the configuration is read', async () => {
    const help = await run(['src/cli/db.ts', 'migrate', '--help']);
    expect(help.code, help.err).toBe(0);
    expect(help.out.trim()).toBe('usage: npm run db:setup | db:migrate | db:check | db:migration:create -- <name>');
    for (const args of [['migrate', '--dry-run'], ['migration:create', 'a', 'b']]) {
      const extra = await run(['src/cli/db.ts', ...args]);
      expect(extra.code, extra.err).toBe(2);
      expect(extra.out).toBe('');
      expect(extra.err).toMatch(/^db \S+: unexpected argument\(s\): /);
      expect(extra.err).not.toMatch(/invalid configuration/);
    }
  });

  // One case per process: each loads its command's whole module graph (the app, for readiness) first.
  const usages = {
    'src/cli/readiness.ts': 'usage: npm run readiness [-- [--json] [--out <file.json>] [--docs <dir holding docs/>]]',
    'src/cli/demo.ts': 'usage: npm run demo [-- --keep-running]',
  };
  it.each(Object.entries(usages))('%s --help: the usage, exit 0', async (entry, usage) => {
    const help = await run([entry, '--help']);
    expect(help.code, help.err).toBe(0);
    expect(help.out.trim()).toBe(usage);
  });

  it.each(Object.entries(usages))('%s with an unknown option: what is wrong and the usage, exit 2, no stack trace', async (entry, usage) => {
    const typo = await run([entry, '--jsn']);
    expect(typo.code, typo.err).toBe(2);
    expect(typo.err.trim()).toBe(`Unknown option '--jsn'\n${usage}`);
  });
});
