import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, fstatSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stopChild } from './services.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** One real API or worker process, logging to a file under the run's directory. */
export interface ManagedProcess {
  name: string;
  proc: ChildProcess;
  exited: Promise<void>;
  /** Set when this harness killed it on purpose (SIGKILL chaos or the final stop). */
  killedOnPurpose: boolean;
  /** Resident set size in kB from /proc (Linux), or undefined when it cannot be read. */
  rssKb(): number | undefined;
  /** Its Prometheus endpoint, for the V8 heap figures (the API's /metrics, a worker's WORKER_METRICS_PORT). */
  metricsUrl: string | undefined;
  /** Whether this process (not an earlier one of the same name, whose lines the log file also holds) has written `text`. */
  logged(text: string): boolean;
  stop(): Promise<void>;
}

export function rssKbOf(pid: number | undefined): number | undefined {
  if (!pid) return undefined;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

export function spawnManaged(name: string, entry: string, env: Record<string, string>, logDir: string, metricsUrl?: string): ManagedProcess {
  // The child writes its log file itself: a busy harness must never back up a child's stdout pipe
  // (the child would buffer its log lines in memory and its RSS would measure the harness).
  const logPath = join(logDir, `${name}.log`);
  const fd = openSync(logPath, 'a');
  // A restarted process appends to its predecessor's file: its own lines start here.
  const from = fstatSync(fd).size;
  const proc = spawn(process.execPath, [entry], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', fd, fd] });
  const exited = new Promise<void>((r) =>
    proc.once('exit', (code, signal) => {
      writeSync(fd, `\n--- ${name} exited code=${code} signal=${signal}\n`);
      closeSync(fd);
      r();
    }),
  );
  const handle: ManagedProcess = {
    name,
    proc,
    exited,
    killedOnPurpose: false,
    rssKb: () => rssKbOf(proc.pid),
    metricsUrl,
    logged(text: string) {
      let read: number | undefined;
      try {
        read = openSync(logPath, 'r');
        const size = fstatSync(read).size - from;
        if (size <= 0) return false;
        const buf = Buffer.alloc(size);
        readSync(read, buf, 0, size, from);
        return buf.includes(text);
      } catch {
        return false;
      } finally {
        if (read !== undefined) closeSync(read);
      }
    },
    async stop() {
      handle.killedOnPurpose = true;
      await stopChild(proc);
    },
  };
  return handle;
}

/** V8 heap in use (MB) from a process's Prometheus text, or undefined when it does not answer. */
export async function heapUsedMb(metricsUrl: string | undefined): Promise<number | undefined> {
  if (!metricsUrl) return undefined;
  try {
    const text = await (await fetch(metricsUrl, { signal: AbortSignal.timeout(5_000) })).text();
    const m = /^dealix_nodejs_heap_size_used_bytes (\S+)$/m.exec(text);
    return m ? Math.round((Number(m[1]) / 1024 / 1024) * 10) / 10 : undefined;
  } catch {
    return undefined;
  }
}

export const API_ENTRY = 'src/server.ts';
export const WORKER_ENTRY = 'workers/golden-path.worker.ts';
