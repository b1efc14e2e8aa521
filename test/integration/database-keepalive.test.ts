/**
 * TCP keepalive on the platform's PostgreSQL connections (connection-bounds.ts): the kernel closes a
 * connection whose peer is gone (a host that vanished, a partition) after its probes go unanswered —
 * an idle pooled connection, which no answer bound watches, included. Read from the kernel's own
 * table of the connection's socket (test/helpers/tcp-timers.ts), found by the port PostgreSQL sees
 * the client on (`inet_client_port()`, the client's local port).
 */
import { afterAll, beforeAll, describe, it } from 'vitest';
import { parseConfig } from '../../src/platform/config/config.ts';
import { createOrm, type MikroORM } from '../../src/platform/db/orm.ts';
import { entities } from '../../src/entities.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { TEST_JWT_SECRET } from '../helpers/env.ts';
import { waitFor } from '../helpers/poll.ts';
import { KEEPALIVE_TIMER, tcpTimers } from '../helpers/tcp-timers.ts';

describe('TCP keepalive on PostgreSQL connections', () => {
  let db: TestDatabase;
  let orm: MikroORM;
  beforeAll(async () => {
    db = await createTestDatabase();
    orm = await createOrm(parseConfig({ JWT_SECRET: TEST_JWT_SECRET, DATABASE_URL: db.appUrl, MIGRATION_DATABASE_URL: db.ownerUrl }), { entities, poolMax: 1 });
  });
  afterAll(async () => {
    await orm?.close(true);
    await db?.drop();
  });

  it("an idle pooled connection's socket has its keepalive timer armed", async () => {
    const port = (await orm.em.getConnection().execute<{ port: number }[]>('select inet_client_port() as port'))[0]!.port;
    // Idle once its answer is acknowledged: then the keepalive timer is the socket's only one.
    await waitFor(() => tcpTimers(port, 'local').includes(KEEPALIVE_TIMER), { timeoutMs: 10_000, what: `the keepalive timer on local port ${port}` });
  });
});
