import net from 'node:net';
import pg from 'pg';

/**
 * Counts round trips on the client side. PostgreSQL: every `pg.Client#query` call is one request and
 * one response on the wire (node-postgres sends one statement at a time, never pipelines), and MikroORM
 * (through Kysely) sends BEGIN, set_config, each statement and COMMIT through it. There is no
 * pg_stat_statements on the shared server, so this hook counts them; the DB-side transaction count
 * comes from pg_stat_database. Redis: every socket write to the Redis port (one command, or one
 * pipeline/MULTI batch) — the syscalls that dominate a step's CPU on a small machine.
 */
export interface IoCounter {
  /** pg Client#query calls. */
  total: number;
  /** Of which BEGIN / COMMIT / ROLLBACK. */
  control: number;
  /** Socket writes to the Redis port. */
  redisWrites: number;
  /** Socket writes to the PostgreSQL port. */
  pgWrites: number;
  reset(): void;
}

const counter: IoCounter = {
  total: 0,
  control: 0,
  redisWrites: 0,
  pgWrites: 0,
  reset() {
    this.total = 0;
    this.control = 0;
    this.redisWrites = 0;
    this.pgWrites = 0;
  },
};

let installed = false;

export function installIoCounter(ports: { redis?: number; pg?: number } = {}): IoCounter {
  if (installed) return counter;
  installed = true;
  const proto = pg.Client.prototype as unknown as { query: (...args: unknown[]) => unknown };
  const original = proto.query;
  proto.query = function countedQuery(this: unknown, ...args: unknown[]) {
    counter.total++;
    const text = typeof args[0] === 'string' ? args[0] : '';
    if (text.length < 12 && /^(begin|commit|rollback)/i.test(text)) counter.control++;
    return original.apply(this, args);
  };
  const redisPort = ports.redis ?? 6379;
  const pgPort = ports.pg ?? 5432;
  const sock = net.Socket.prototype as unknown as { write: (...args: unknown[]) => boolean };
  const write = sock.write;
  sock.write = function countedWrite(this: net.Socket, ...args: unknown[]) {
    const port = this.remotePort;
    if (port === redisPort) counter.redisWrites++;
    else if (port === pgPort) counter.pgWrites++;
    return write.apply(this, args);
  };
  return counter;
}
