/**
 * A SIGTERM that reaches a process still starting — loading its modules, before its own signal
 * handlers exist (onShutdown) — against the real entries run as child processes. The start is held
 * at a known point (test/helpers/hold-startup.ts: the load of src/container.ts, the heavy part of
 * every entry) and the signal sent there: no sleeps, no race with the start. A worker signalled later
 * in its start, its handlers installed (recording its run-retention decision in PostgreSQL, waiting for
 * Redis), is in worker-shutdown.test.ts.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { within } from '../helpers/poll.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Starts `entry` (after the `preload` modules) held at the load of `at` (src/container.ts); resolves once it is held there. */
async function heldAtStart(entry: string, opts: { preload?: string[]; at?: string } = {}) {
  const child = spawn(process.execPath, ['--import', './test/helpers/hold-startup.ts', ...(opts.preload ?? []).flatMap((p) => ['--import', p]), entry], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'info', ...(opts.at ? { HOLD_STARTUP_AT: opts.at } : {}) },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += String(d)));
  child.stderr!.on('data', (d) => (err += String(d)));
  // 'close', not 'exit': at 'exit' its one line can still be in the pipe (node's docs), and the test reads it.
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  try {
    await within(
      new Promise<void>((resolve, reject) => {
        child.on('message', (m) => m === 'held' && resolve());
        void exited.then((e) => reject(new Error(`exited before it was held: ${JSON.stringify(e)} ${out} ${err}`)));
      }),
      `${entry} to be held at its start`,
      // As long as a worker's or the API's whole start is given (stack.ts, api-process.ts): loading the modules up to
      // the hold is most of that start, and a loaded machine takes tens of seconds over it.
      90_000,
    );
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  return { child, exited, output: () => ({ out, err }) };
}

describe('a SIGTERM while the process is still loading its modules', () => {
  it.each([
    ['workers/golden-path.worker.ts', 'dealix-worker', {}],
    ['src/server.ts', 'dealix-api', {}],
    // As `npm run start:worker` runs it: the telemetry bootstrap first, held at its own first application import.
    ['workers/golden-path.worker.ts (--import register.ts)', 'dealix-worker', { preload: ['./src/platform/telemetry/register.ts'], at: '/src/platform/config/config.ts' }],
  ])('%s: exits 0 by itself with one JSON line saying it stopped while starting, not killed by the signal', { timeout: 60_000 }, async (label, service, opts) => {
    const p = await heldAtStart(label.split(' ')[0]!, opts);
    let exit: Awaited<typeof p.exited>;
    try {
      p.child.kill('SIGTERM');
      exit = await within(p.exited, `${label} to exit after the SIGTERM`);
    } finally {
      // Still running (it did not stop by itself): it is not left behind, held at its start.
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    }
    const { out, err } = p.output();
    expect(exit, `${out}\n${err}`).toEqual({ code: 0, signal: null });
    expect(err).toBe('');
    const lines = out.split('\n').filter((l) => l !== '');
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 30, service, name: service, signal: 'SIGTERM', msg: expect.stringContaining('stopped while starting') });
  });
});

describe('a signal to a script loaded with the telemetry bootstrap (register.ts) that is neither the API nor a worker', () => {
  // Such a script never installs onShutdown, so a start-up handler would stay for its whole life: a
  // SIGINT or SIGTERM an hour into a migration or a one-off job would end it with exit 0 and "stopped
  // while starting", read by its caller as success. It keeps Node's default: killed by the signal.
  it.each(['SIGTERM', 'SIGINT'] as const)('%s once it runs: killed by the signal, not exit 0', { timeout: 60_000 }, async (signal) => {
    const child = spawn(process.execPath, ['--import', './src/platform/telemetry/register.ts', 'test/helpers/idle-script.ts'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    let out = '';
    child.stdout!.on('data', (d) => (out += String(d)));
    // 'close': its output read to the end, so the check below that it never said "stopped while starting" reads all of it.
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, sig) => resolve({ code, signal: sig })));
    try {
      await within(
        new Promise<void>((resolve, reject) => {
          child.on('message', (m) => m === 'ready' && resolve());
          void exited.then((e) => reject(new Error(`exited before it was ready: ${JSON.stringify(e)} ${out}`)));
        }),
        'the script to be ready',
        90_000, // the telemetry bootstrap loaded first: a process start, as above
      );
      child.kill(signal);
      expect(await within(exited, `the script to end on ${signal}`), out).toEqual({ code: null, signal });
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    expect(out).not.toContain('stopped while starting');
  });
});
