import type pg from 'pg';

/**
 * How long any PostgreSQL connection of the platform waits for the server before it gives up, where
 * the wait has a bound at all (docs/reliability.md, "A PostgreSQL that stops answering"). A server
 * can stop answering without closing the connection (a host gone, a partition, a failover that
 * leaves the old address silent): nothing then ends a wait but the client's own bound or the kernel.
 *
 * - Connecting: 5 s for the TCP connection, TLS and the startup exchange (pg's
 *   `connectionTimeoutMillis`, which destroys the socket): a server that accepts and never answers
 *   otherwise leaves `connect()` waiting for ever.
 * - TCP keepalive, first probe after 10 s idle: the kernel closes a connection whose peer is gone
 *   (probes unacknowledged; after about 11 minutes with Linux's default interval and count), even one
 *   waiting for an answer no client-side bound can limit (a concurrent index build). It cannot tell a
 *   server that is there but silent (its kernel acknowledges the probes).
 *
 * The pool's statements have their own answer bound (coalescing-client.ts); a plain pg.Client of its
 * own states what bounds its statements where it is made.
 */
export const CONNECTION_BOUNDS = {
  connectionTimeoutMillis: 5_000,
  keepAlive: true,
  keepAliveInitialDelayMillis: 10_000,
} as const;

/**
 * `end()` (pg's, passed in: a subclass's own calls its super's), bounded: pg sends Terminate and waits
 * for the server to close the connection — for ever on a server gone silent (seen: a pooled
 * connection's end, through a proxy that stopped forwarding, not done after 20 s). Past `ms` the
 * socket is destroyed, which ends the client at once; the server, if it is still there, ends the
 * session when it sees the connection gone, as after any client that vanished.
 */
export async function endWithin(client: pg.Client, end: () => Promise<void>, ms: number): Promise<void> {
  const timer = setTimeout(() => (client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy(), ms);
  timer.unref();
  try {
    await end();
  } finally {
    clearTimeout(timer);
  }
}

/** Errors of a connection that never reached PostgreSQL (node's socket codes, pg's own timeout and hang-up messages). */
const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNRESET']);
const UNREACHABLE_MESSAGE = /timeout expired|Connection terminated unexpectedly/;

/** True for an error of a connection that never reached PostgreSQL, or lost it: no answer from the server. */
export function isUnreachable(e: unknown): boolean {
  const err = e as { code?: unknown; message?: unknown } | null | undefined;
  const code = typeof err?.code === 'string' ? err.code : '';
  const message = typeof err?.message === 'string' ? err.message : String(e);
  return UNREACHABLE_CODES.has(code) || UNREACHABLE_MESSAGE.test(message);
}
