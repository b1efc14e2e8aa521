import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { waitFor } from './poll.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const TELEMETRY_REGISTER = './src/platform/telemetry/register.ts';

export interface ApiProcess {
  proc: ChildProcess;
  baseUrl: string;
  output(): string;
  /** The JSON log lines written so far. */
  lines(): Array<Record<string, any>>;
  exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Parses the JSON lines of a process's output, skipping anything else. */
export function jsonLines(out: string): Array<Record<string, any>> {
  const lines: Array<Record<string, any>> = [];
  for (const line of out.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      lines.push(JSON.parse(line));
    } catch {
      // a partial line still being written
    }
  }
  return lines;
}

/** The real API (src/server.ts) as a child process on an ephemeral port, like `npm run start:api`. */
export async function spawnApi(env: Record<string, string>, execArgv: string[] = [], logLevel = 'info'): Promise<ApiProcess> {
  const proc = spawn(process.execPath, [...execArgv, 'src/server.ts'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...env, PORT: '0', LOG_LEVEL: logLevel },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  // 'close', not 'exit': at 'exit' the last of its output can still be in the pipe.
  const exited = new Promise<number | null>((r) => proc.once('close', (code) => r(code)));
  let listening: Record<string, any>;
  try {
    listening = await waitFor(() => jsonLines(out).find((l) => l.msg === 'api listening') ?? (proc.exitCode !== null ? { exited: true } : undefined), {
      timeoutMs: 90_000,
      what: 'api start',
    });
  } catch (e) {
    proc.kill('SIGKILL');
    throw e;
  }
  if ('exited' in listening) throw new Error(`api exited at start:\n${out}`);
  return {
    proc,
    baseUrl: `http://127.0.0.1:${listening.port}`,
    output: () => out,
    lines: () => jsonLines(out),
    exited,
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
}
