import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import { ADMIN_URL, type BenchDb } from '../lib/bench-db.ts';

const run = promisify(execFile);

export interface FloorResult {
  /** pgbench -N (simple-update without the branch/teller hot rows): committed transactions per second. */
  tps: Record<string, number>;
  tool: string;
  seconds: number;
}

function pgbenchPath(): string | undefined {
  for (const p of ['/usr/lib/postgresql/15/bin/pgbench', '/usr/bin/pgbench', '/usr/local/bin/pgbench']) if (existsSync(p)) return p;
  return undefined;
}

/**
 * The commit floor of this PostgreSQL on this machine: pgbench -N (three writes and a read per
 * transaction, one commit each) for `seconds` with 16 clients and with 1 client, in a database of
 * its own on the same server. Each of our steps is one such commit, so this bounds steps per second.
 */
export async function measureFloor(db: BenchDb, seconds: number, clients: number[]): Promise<FloorResult> {
  const bin = pgbenchPath();
  if (!bin) return { tps: {}, tool: 'pgbench not found', seconds };
  const u = new URL(ADMIN_URL);
  const conn = ['-h', u.hostname, '-p', u.port || '5432', '-U', decodeURIComponent(u.username || 'postgres')];
  const env = { ...process.env, ...(u.password ? { PGPASSWORD: decodeURIComponent(u.password) } : {}) };
  await run(bin, ['-i', '-s', '1', '-q', ...conn, db.name], { env });
  const tps: Record<string, number> = {};
  for (const c of clients) {
    const { stdout } = await run(bin, ['-N', '-c', String(c), '-j', String(Math.min(c, 2)), '-T', String(seconds), ...conn, db.name], { env });
    const m = /tps = ([\d.]+) \(without initial connection time\)/.exec(stdout) ?? /tps = ([\d.]+)/.exec(stdout);
    tps[`c${c}`] = m ? Number(m[1]) : Number.NaN;
  }
  return { tps, tool: bin, seconds };
}
