import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, readSync, fstatSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildMessage, DoneItem, ParentMessage } from './child-ipc.ts';

export const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
/** Children log to files, not pipes: a full pipe makes pino's synchronous writes wait, and the benchmark would measure its own reader. */
export const LOG_DIR = join(tmpdir(), `dealix-bench-${process.pid}`);
let seq = 0;

function tail(path: string, bytes = 8000): string {
  try {
    const fd = openSync(path, 'r');
    try {
      const size = fstatSync(fd).size;
      const len = Math.min(bytes, size);
      const buf = Buffer.alloc(len);
      readSync(fd, buf, 0, len, size - len);
      return buf.toString();
    } finally {
      closeSync(fd);
    }
  } catch {
    return '';
  }
}

export interface Child {
  name: string;
  proc: ChildProcess;
  pid: number;
  ready: Promise<unknown>;
  exited: Promise<number | null>;
  output(): string;
  onDone(cb: (items: DoneItem[]) => void): void;
  onResult(cb: (result: unknown) => void): void;
  stats<T = any>(reset?: boolean): Promise<T>;
  send(m: ParentMessage): void;
  /** Graceful stop (SIGTERM), SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
  kill(): void;
  alive(): boolean;
}

/** Spawns a benchmark child process (Node, same binary) with an IPC channel. */
export function spawnChild(entry: string, opts: { name: string; env: Record<string, string>; args?: string[]; nodeArgs?: string[]; readyTimeoutMs?: number; cwd?: string }): Child {
  mkdirSync(LOG_DIR, { recursive: true });
  const logPath = join(LOG_DIR, `${String(++seq).padStart(3, '0')}-${opts.name}.log`);
  const logFd = openSync(logPath, 'a');
  const proc = spawn(process.execPath, [...(opts.nodeArgs ?? []), entry, ...(opts.args ?? [])], {
    cwd: opts.cwd ?? ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...opts.env },
    stdio: ['ignore', logFd, logFd, 'ipc'],
  });
  closeSync(logFd);
  const output = () => tail(logPath);
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const doneCbs: Array<(items: DoneItem[]) => void> = [];
  const resultCbs: Array<(r: unknown) => void> = [];
  const statWaiters = new Map<number, (s: unknown) => void>();
  let nextId = 1;
  let readyResolve!: (v: unknown) => void;
  let readyReject!: (e: Error) => void;
  const ready = new Promise<unknown>((res, rej) => {
    readyResolve = res;
    readyReject = rej;
  });
  const timer = setTimeout(() => readyReject(new Error(`${opts.name} did not become ready:\n${output()}`)), opts.readyTimeoutMs ?? 60_000);
  void exited.then((code) => readyReject(new Error(`${opts.name} exited (${code}) before ready:\n${output()}`)));
  ready.catch(() => {}).finally(() => clearTimeout(timer));
  proc.on('message', (m: ChildMessage) => {
    if (m.type === 'ready') readyResolve(m.info);
    else if (m.type === 'done') for (const cb of doneCbs) cb(m.items);
    else if (m.type === 'result') for (const cb of resultCbs) cb(m.result);
    else if (m.type === 'stats') {
      statWaiters.get(m.id)?.(m.stats);
      statWaiters.delete(m.id);
    }
  });
  const alive = () => proc.exitCode === null && proc.signalCode === null;
  return {
    name: opts.name,
    proc,
    pid: proc.pid!,
    ready,
    exited,
    output,
    onDone: (cb) => void doneCbs.push(cb),
    onResult: (cb) => void resultCbs.push(cb),
    send: (m) => {
      if (alive()) proc.send(m);
    },
    stats<T>(reset = false): Promise<T> {
      const id = nextId++;
      return new Promise<T>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`${opts.name}: no stats answer`)), 15_000);
        statWaiters.set(id, (s) => {
          clearTimeout(t);
          resolve(s as T);
        });
        proc.send({ type: 'stats', id, reset } satisfies ParentMessage);
      });
    },
    async stop(graceMs = 15_000) {
      if (!alive()) return;
      proc.kill('SIGTERM');
      const t = setTimeout(() => alive() && proc.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(t);
    },
    kill: () => void (alive() && proc.kill('SIGKILL')),
    alive,
  };
}

/** Resident set size of a process from /proc, in bytes (0 when it is gone). */
export function rssOf(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Samples the RSS of the given processes every `everyMs`; `stop()` returns the maximum seen per process. */
export function sampleRss(pids: () => number[], everyMs = 200): { stop(): number } {
  let peak = 0;
  const tick = () => {
    for (const pid of pids()) peak = Math.max(peak, rssOf(pid));
  };
  tick();
  const t = setInterval(tick, everyMs);
  return {
    stop() {
      clearInterval(t);
      tick();
      return peak;
    },
  };
}
