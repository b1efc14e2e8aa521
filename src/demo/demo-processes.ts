import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { DemoError, say } from './demo-support.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const KEEP_LINES = 400;

/** A child process of the demo (the API or a worker); its last output lines are kept to print on failure. */
export class DemoChild {
  readonly name: string;
  readonly proc: ChildProcess;
  readonly exited: Promise<number | null>;
  private readonly lines: string[] = [];

  constructor(name: string, args: string[], env: Record<string, string>) {
    this.name = name;
    // Own process group: a Ctrl-C in the terminal reaches the demo only, which then stops the children once, cleanly.
    this.proc = spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    const keep = (d: Buffer) => {
      for (const l of d.toString('utf8').split('\n')) if (l.trim()) this.lines.push(l.length > 600 ? `${l.slice(0, 600)}…` : l);
      if (this.lines.length > KEEP_LINES) this.lines.splice(0, this.lines.length - KEEP_LINES);
    };
    this.proc.stdout!.on('data', keep);
    this.proc.stderr!.on('data', keep);
    this.exited = new Promise((r) => this.proc.once('exit', (code, signal) => r(code ?? (signal ? 128 : null))));
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  saw(text: string): boolean {
    return this.lines.some((l) => l.includes(text));
  }

  /** Its last error or fatal log line, as `msg: err.message` (a start that failed says why in it). */
  lastError(): string | undefined {
    for (const line of [...this.lines].reverse()) {
      if (!line.startsWith('{')) continue;
      try {
        const l = JSON.parse(line) as { level?: number; msg?: string; err?: { message?: string } | string };
        if ((l.level ?? 0) < 50) continue;
        const err = typeof l.err === 'string' ? l.err : l.err?.message;
        return [l.msg, err].filter(Boolean).join(': ');
      } catch {
        // a line cut at 600 characters: not JSON any more
      }
    }
    return undefined;
  }

  tail(n: number): string[] {
    return this.lines.slice(-n);
  }

  /** SIGTERM (the platform's clean shutdown), then SIGKILL after `graceMs`. */
  async stop(graceMs: number): Promise<number | null> {
    if (!this.alive) return this.proc.exitCode;
    this.proc.kill('SIGTERM');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    const code = await this.exited;
    clearTimeout(timer);
    return code;
  }
}

/** The demo's children: started together, watched while the demo waits, stopped together. */
export class DemoProcesses {
  readonly children: DemoChild[] = [];

  start(name: string, args: string[], env: Record<string, string>): DemoChild {
    const child = new DemoChild(name, args, env);
    this.children.push(child);
    return child;
  }

  /** A guard for `until`: a child that died ends the wait at once, naming it. */
  readonly assertAlive = (): void => {
    for (const c of this.children) {
      if (c.alive) continue;
      const why = c.lastError();
      throw new DemoError(`the ${c.name} exited (code ${c.proc.exitCode ?? c.proc.signalCode})${why ? `: ${why}` : ''}`);
    }
  };

  /** Stops every child; true when all exited cleanly (code 0). */
  async stopAll(graceMs: number): Promise<boolean> {
    const codes = await Promise.all(this.children.map((c) => c.stop(graceMs)));
    return codes.every((c) => c === 0 || c === null);
  }

  /** Sends `signal` to every child still running, synchronously (for the demo's 'exit' handler). */
  signalAll(signal: NodeJS.Signals): void {
    for (const c of this.children) if (c.alive) c.proc.kill(signal);
  }

  printLogs(lines = 80): void {
    for (const c of this.children) {
      console.error(`\n--- last lines of the ${c.name} log (pid ${c.proc.pid}) ---`);
      for (const l of c.tail(lines)) console.error(l);
    }
  }
}

/** The configured port when it is free, else one the OS picks (`what` names it when it says so). */
export async function choosePort(preferred: number, what = 'the API'): Promise<number> {
  const tryListen = (port: number) =>
    new Promise<number | undefined>((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(undefined));
      s.listen(port, () => {
        const addr = s.address();
        s.close(() => resolve(typeof addr === 'object' && addr ? addr.port : undefined));
      });
    });
  if (preferred > 0 && (await tryListen(preferred)) !== undefined) return preferred;
  const free = await tryListen(0);
  if (!free) throw new DemoError(`could not find a free TCP port for ${what}`);
  if (preferred > 0) say(`      port ${preferred} (${what}) is in use; using ${free} instead`);
  return free;
}
