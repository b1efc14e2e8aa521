/**
 * `npm run start:api` and `npm run start:worker` as the README runs them, stopped as a terminal stops
 * them: Ctrl-C sends SIGINT to the whole foreground process group (npm, npm's `sh -c`, node), and
 * `kill -TERM -- -<pgid>` or timeout(1) do the same with SIGTERM. npm forwards the signal to its own
 * child too, so that child must not be node: a node started by `exec` in the script gets the signal
 * twice, and a second signal ends the shutdown at once, exit 1 (shutdown.ts). Through `sh -c` the
 * forwarded copy goes to the shell and node gets one. (A SIGTERM to npm's pid alone reaches only that
 * shell: a process manager runs node directly, as the Procfile and the Dockerfile do; README.)
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonLines } from '../helpers/api-process.ts';
import { waitFor, within } from '../helpers/poll.ts';
import { startStack, type TestStack } from '../helpers/stack.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const LONG = 120_000;

let stack: TestStack;
beforeAll(async () => {
  stack = await startStack({ api: false });
}, LONG);
afterAll(async () => {
  await stack?.stop();
});

describe('a signal to the process group of a start script (Ctrl-C in a terminal)', () => {
  it.each([
    ['start:api', 'api listening', 'SIGINT'],
    ['start:worker', 'worker started', 'SIGINT'],
    ['start:api', 'api listening', 'SIGTERM'],
  ] as const)('npm run %s (ready: "%s"), then %s to its process group: the platform process gets it once and shuts down cleanly', { timeout: LONG }, async (script, ready, signal) => {
    // Through npm itself when the test runs under npm (npm_execpath), else the npm on the PATH.
    const [cmd, args] = process.env.npm_execpath ? [process.execPath, [process.env.npm_execpath]] : ['npm', []];
    const npm = spawn(cmd, [...args, 'run', script], {
      cwd: ROOT,
      // Set here, empty included, so a developer's .env (read with --env-file-if-exists, which never
      // overrides the environment) cannot move the ports or the database under the test.
      env: { PATH: process.env.PATH ?? '', ...stack.env, LOG_LEVEL: 'info', PORT: '0', WORKER_METRICS_PORT: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
      // A process group of its own, as a terminal gives a command line: the signal goes to all of it.
      detached: true,
    });
    let out = '';
    npm.stdout!.on('data', (d) => (out += d));
    npm.stderr!.on('data', (d) => (out += d));
    // 'close' comes once every process holding the output pipes has exited, node included.
    const closed = new Promise<number | null>((resolve) => npm.once('close', (code) => resolve(code)));
    try {
      await waitFor(() => jsonLines(out).some((l) => l.msg === ready) || npm.exitCode !== null, { timeoutMs: 90_000, what: `${script} to start` });
      expect(npm.exitCode, out).toBeNull();
      process.kill(-npm.pid!, signal);
      await within(closed, `npm run ${script} and its node process to exit after ${signal} to their process group`, 30_000);
      const msgs = jsonLines(out).map((l) => l.msg);
      expect(msgs.filter((m) => m === 'shutting down'), out.slice(-3000)).toHaveLength(1);
      expect(msgs, out.slice(-3000)).not.toContain('second signal while shutting down: exiting at once, without finishing the shutdown');
      expect(msgs.at(-1), out.slice(-3000)).toBe('shut down cleanly');
    } finally {
      try {
        process.kill(-npm.pid!, 'SIGKILL');
      } catch {
        // the group has already gone
      }
    }
  });
});
