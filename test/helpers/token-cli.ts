import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** `npm run token -- …` itself (src/cli/token.ts), with a stack's settings (`stackEnv`) and `env` over them; its exit code and output. */
export function runTokenCli(stackEnv: Record<string, string>, args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, ['src/cli/token.ts', ...args], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...stackEnv, ...env } });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('close', (code) => resolve({ code, out, err }));
  });
}
