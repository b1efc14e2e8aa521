import { connect } from 'node:net';
import { once } from 'node:events';
import type { Redis } from 'ioredis';
import { TEST_REDIS_URL } from './env.ts';
import { waitFor } from './poll.ts';

/** One MONITOR line's arguments: each is a double-quoted string, escaped as Redis's sdscatrepr writes them. */
export function monitorArgs(line: string): string[] {
  return [...line.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) =>
    m[1]!.replace(/\\(x[0-9a-fA-F]{2}|.)/g, (_, e: string) => (e.length === 3 ? String.fromCharCode(parseInt(e.slice(1), 16)) : ({ n: '\n', r: '\r', t: '\t', a: '\x07', b: '\b' } as Record<string, string>)[e] ?? e)),
  );
}

/** A MONITOR line reporting an ECHO (`+<time> [<db> <client>] "echo" ...`): a settle marker. */
const ECHO_LINE = /^\+[\d.]+ \[[^\]]*\] "echo"/i;

/**
 * Watches the shared Redis with MONITOR for commands naming a key that starts with `keyPrefix` (a
 * feature's keys, to show it sends none when off). `settle` sends a marker on `redis` and waits for
 * MONITOR to report it: every command sent before (by a process since stopped) is in `seen` by then.
 * `redisUrl`: another Redis than the shared one (a stack's own, test/helpers/own-infra.ts).
 *
 * A plain socket, not ioredis's `monitor()`: ioredis marks the connection as monitoring only in a
 * promise continuation after MONITOR's `OK`, so on a busy Redis the monitor lines that arrive in the
 * same chunk as that `OK` are taken for replies to commands never sent — "Command queue state error",
 * the helper's promise rejected and uncaught errors after it (seen in CI under load).
 */
export async function monitorKeys(keyPrefix: string, redisUrl = TEST_REDIS_URL) {
  const url = new URL(redisUrl);
  const socket = connect(Number(url.port || 6379), url.hostname);
  socket.setEncoding('utf8');
  await once(socket, 'connect');
  const seen: string[] = [];
  const markers: string[] = [];
  // AUTH's OK first when the URL has a password, then MONITOR's: the lines after that are monitor output.
  let oks = url.password ? -1 : 0;
  let monitoring = false;
  let stopped = false;
  let failure: Error | undefined;
  let buffered = '';
  // MONITOR reports every command of the shared Redis, every test file's (thousands a second in CI): a line is parsed only if
  // it may name the prefix (written as is: MONITOR escapes only quotes, backslashes and unprintables) or be a marker's ECHO.
  const plain = !/["\\]|[^\x20-\x7e]/.test(keyPrefix);
  const mayMatter = (line: string) => !plain || line.includes(keyPrefix) || ECHO_LINE.test(line);
  socket.on('error', (err) => (failure ??= err));
  // Closed by Redis (killed, a restart): `settle` fails naming it rather than waiting for a marker that cannot come.
  socket.on('close', () => stopped || (failure ??= new Error('MONITOR connection closed by Redis')));
  socket.on('data', (chunk: string) => {
    // Split once per chunk (a chunk holds hundreds of lines: cutting the buffer after each line copied it again each time).
    const lines = (buffered + chunk).split('\r\n');
    buffered = lines.pop()!;
    for (const line of lines) {
      if (line.startsWith('-')) failure ??= new Error(`MONITOR refused: ${line.slice(1)}`);
      else if (!monitoring && line === '+OK') monitoring = ++oks === 1;
      else if (monitoring && line.startsWith('+') && mayMatter(line)) {
        const args = monitorArgs(line);
        if (args.some((a) => a.startsWith(keyPrefix))) seen.push(args.join(' '));
        if (args[0]?.toLowerCase() === 'echo') markers.push(args[1] ?? '');
      }
    }
  });
  if (url.password) socket.write(`AUTH ${decodeURIComponent(url.username) || 'default'} ${decodeURIComponent(url.password)}\r\n`);
  socket.write('MONITOR\r\n');
  // A failure ends the wait at once (thrown inside, waitFor would take it for "not yet" until its deadline).
  await waitFor(() => failure ?? monitoring, { what: 'MONITOR to start' });
  if (failure) throw failure;
  return {
    seen,
    async settle(redis: Redis, marker: string) {
      await redis.echo(marker);
      await waitFor(() => failure ?? markers.includes(marker), { what: 'MONITOR to report the marker' });
      if (failure) throw failure;
    },
    stop: () => {
      stopped = true;
      socket.destroy();
    },
  };
}
