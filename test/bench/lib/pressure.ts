import { readFileSync } from 'node:fs';
import { adminQuery } from './bench-db.ts';

/**
 * How disturbed the machine was during a window, beside the CPU the stack used: the kernel's pressure
 * stall information (/proc/pressure/cpu and /io, "some": time at least one task waited for a CPU or
 * for I/O) and PostgreSQL's WAL writes and flushes (pg_stat_wal, PostgreSQL 15: cluster-wide, so any
 * other database's commits count too; backends report it when idle, at most once a second). The
 * flush time is only there when track_wal_io_timing is on; the benchmark does not change it.
 */
export interface MachineWindow {
  ms: number;
  /** Pressure stall "some", ms per second of the window; null where the kernel has no /proc/pressure. */
  cpuPressureMsPerSec: number | null;
  ioPressureMsPerSec: number | null;
  walSyncs: number;
  walWrites: number;
  trackWalIoTiming: boolean;
  /** Total time in WAL flushes / writes, ms; null while track_wal_io_timing is off (they read 0 then). */
  walSyncMs: number | null;
  walWriteMs: number | null;
}

interface Snapshot {
  at: number;
  cpuUs: number | null;
  ioUs: number | null;
  wal: { sync: number; write: number; syncMs: number; writeMs: number; timing: boolean };
}

/** The "some" line's cumulative stall time, µs, or null when the file is missing (no PSI). */
function pressureUs(resource: 'cpu' | 'io'): number | null {
  try {
    const total = /^some .*total=(\d+)/m.exec(readFileSync(`/proc/pressure/${resource}`, 'utf8'))?.[1];
    return total === undefined ? null : Number(total);
  } catch {
    return null;
  }
}

async function snapshot(): Promise<Snapshot> {
  const r = await adminQuery(
    `select wal_sync, wal_write, wal_sync_time, wal_write_time, current_setting('track_wal_io_timing') = 'on' as timing from pg_stat_wal`,
  );
  const row = r.rows[0] as { wal_sync: string; wal_write: string; wal_sync_time: number; wal_write_time: number; timing: boolean };
  const wal = { sync: Number(row.wal_sync), write: Number(row.wal_write), syncMs: Number(row.wal_sync_time), writeMs: Number(row.wal_write_time), timing: row.timing };
  return { at: performance.now(), cpuUs: pressureUs('cpu'), ioUs: pressureUs('io'), wal };
}

/** Runs `fn` between two readings of the machine's pressure and PostgreSQL's WAL statistics. */
export async function watchMachine<T>(fn: () => Promise<T>): Promise<{ result: T; machine: MachineWindow }> {
  const a = await snapshot();
  const result = await fn();
  const b = await snapshot();
  const ms = b.at - a.at;
  const perSec = (x: number | null, y: number | null) => (x === null || y === null ? null : (y - x) / 1000 / (ms / 1000));
  // The time columns only move while the setting is on; on through the window, or they are not shown.
  const timing = a.wal.timing && b.wal.timing;
  return {
    result,
    machine: {
      ms,
      cpuPressureMsPerSec: perSec(a.cpuUs, b.cpuUs),
      ioPressureMsPerSec: perSec(a.ioUs, b.ioUs),
      walSyncs: b.wal.sync - a.wal.sync,
      walWrites: b.wal.write - a.wal.write,
      trackWalIoTiming: timing,
      walSyncMs: timing ? b.wal.syncMs - a.wal.syncMs : null,
      walWriteMs: timing ? b.wal.writeMs - a.wal.writeMs : null,
    },
  };
}
