import { hostname } from 'node:os';

/**
 * SIGTERM/SIGINT before the process's own handlers exist (onShutdown, shutdown.ts). Loading the
 * application's modules, creating the container and waiting for Redis take a moment; a signal then —
 * a deploy or a scale-down that catches the process still starting — found no listener, and Node's
 * default action killed the process by the signal: no exit status, no log line. The entries and the
 * telemetry bootstrap install these first, before importing anything heavy (node builtins only here).
 *
 * Until onShutdown takes over, a signal ends the start: nothing has been served and no job taken yet
 * (the API listens, and the worker takes jobs, only once onShutdown is installed), so there is nothing
 * to finish. The process writes one JSON line in the format of the platform's log lines and exits 0.
 * Once onShutdown installs its handlers it removes these (releaseEarlySignals).
 */
interface EarlySignals {
  service: string;
  listener?: (signal: NodeJS.Signals) => void;
}

// One state per process, whichever copy of this module (the telemetry bootstrap's, the entry's) installs first.
const KEY = Symbol.for('dealix.early-signals');
const holder = globalThis as typeof globalThis & { [KEY]?: EarlySignals };

const SIGNALS: NodeJS.Signals[] = ['SIGTERM', 'SIGINT'];

/** The service name of a process (its log lines, its spans unless OTEL_SERVICE_NAME): dealix-api for the server, dealix-worker for worker entries, dealix-<script> otherwise. */
export function serviceNameOf(entry: string | undefined): string {
  const name = (entry ?? 'dealix').split(/[\\/]/).pop()!.replace(/\.(ts|js|mjs)$/, '');
  if (name === 'server') return 'dealix-api';
  if (name.includes('worker')) return 'dealix-worker';
  return `dealix-${name}`;
}

/**
 * Whether a process of this service installs onShutdown once started (the API, the workers), which
 * releases the start-up handlers: only such a process may have them, from wherever they are installed.
 */
export function installsShutdownHandlers(service: string): boolean {
  return service === 'dealix-api' || service === 'dealix-worker';
}

/** Installs the start-up handlers (once per process; a second call does nothing). */
export function installEarlySignals(service = serviceNameOf(process.argv[1])): void {
  if (holder[KEY]) return;
  const state: EarlySignals = { service };
  state.listener = (signal) => {
    const line = { level: 30, time: new Date().toISOString(), pid: process.pid, hostname: hostname(), service, name: service, signal, msg: 'stopped while starting: the signal came before the process had started; exiting' };
    // Synchronous on Linux for a pipe or a file: the line is out before the exit.
    process.stdout.write(`${JSON.stringify(line)}\n`);
    process.exit(0);
  };
  for (const s of SIGNALS) process.on(s, state.listener);
  holder[KEY] = state;
}

/** Removes the start-up handlers: the process's own (onShutdown) handle every signal from now on. */
export function releaseEarlySignals(): void {
  const state = holder[KEY];
  if (!state?.listener) return;
  for (const s of SIGNALS) process.off(s, state.listener);
  delete state.listener;
}
