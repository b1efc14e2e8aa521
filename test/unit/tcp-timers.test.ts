/**
 * test/helpers/tcp-timers.ts reads a socket's keepalive timer from the kernel's table of TCP sockets.
 * Linux keeps IPv4 sockets in /proc/net/tcp and IPv6 ones in /proc/net/tcp6: a connection to
 * PostgreSQL over ::1 (a DATABASE_URL host `localhost` that resolves to ::1 first, or `[::1]`) is in
 * the second only, where the helper did not look: it found no socket there, and
 * database-keepalive.test.ts would time out whatever the connection's keepalive.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { describe, it } from 'vitest';
import { waitFor } from '../helpers/poll.ts';
import { KEEPALIVE_TIMER, tcpTimers } from '../helpers/tcp-timers.ts';

/** Runs `check` with the local port of a connection over `host` whose socket has keepalive on (first probe after 10 s idle, as the platform's). */
async function keptAlive(host: string, check: (port: number) => Promise<unknown>): Promise<void> {
  const accepted: Socket[] = [];
  const server: Server = createServer((s) => accepted.push(s));
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const client = connect({ host, port: (server.address() as { port: number }).port, keepAlive: true, keepAliveInitialDelay: 10_000 });
  try {
    await new Promise<void>((resolve, reject) => client.once('connect', resolve).once('error', reject));
    await check(client.localPort!);
  } finally {
    client.destroy();
    for (const s of accepted) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

describe('tcpTimers', () => {
  for (const host of ['127.0.0.1', '::1']) {
    it(`finds the keepalive timer of an idle socket with keepalive on, over ${host}`, async () => {
      await keptAlive(host, (port) => waitFor(() => tcpTimers(port, 'local').includes(KEEPALIVE_TIMER), { timeoutMs: 10_000, what: `the keepalive timer on local port ${port}` }));
    });
  }
});
