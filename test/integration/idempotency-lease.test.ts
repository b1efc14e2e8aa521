import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { IdempotencyService, submissionHash } from '../../src/platform/idempotency/idempotency.service.ts';
import { api, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { spawnApi } from '../helpers/api-process.ts';
import { waitFor } from '../helpers/poll.ts';
import type { AddressInfo } from 'node:net';
import { z } from 'zod';
import type { Server } from 'node:http';
import { createApp } from '../../src/app.ts';
import { defineRoute } from '../../src/platform/http/route.ts';
import { ConflictError } from '../../src/platform/errors/app-error.ts';

const RUN = '/api/v1/golden-path/run';

/** A 1 s lease well inside a 1 h TTL: what a test sees within seconds is the lease's doing, never the TTL's. */
let leased: TestStack;
beforeAll(async () => {
  leased = await startStack({ env: { IDEMPOTENCY_TTL: '1h', IDEMPOTENCY_LEASE: '1s' } });
});
afterAll(async () => {
  await leased?.stop();
});

async function actor(s: TestStack) {
  const tenant = newTenant();
  const sub = `user-${randomUUID().slice(0, 8)}`;
  return { tenant, sub, token: await s.token({ tenantId: tenant, sub, roles: [] }) };
}
type Actor = Awaited<ReturnType<typeof actor>>;

const submit = (s: TestStack, who: Actor, key: string) => api(s, 'POST', RUN, { token: who.token, headers: { 'Idempotency-Key': key }, body: SAMPLE_SUBMISSION });

async function keyRow(s: TestStack, who: Actor, key: string) {
  const [row] = await tenantEm(s.container.orm, who.tenant).execute<any[]>(
    `select id, status, response_body, (extract(epoch from locked_at) * 1000000)::bigint::text as lease,
            locked_at < now() - interval '1 second' as lease_expired
       from idempotency_keys where principal = ? and idempotency_key = ?`,
    [who.sub, key],
  );
  return row;
}
async function runs(s: TestStack, who: Actor) {
  return tenantEm(s.container.orm, who.tenant).execute<{ id: string; idempotency_hash: string }[]>('select id, idempotency_hash from durable_runs');
}

describe('a first attempt that stalls past its lease while a retry takes the submission over', () => {
  it('commits nothing of the stalled attempt, which answers as the key now does: one run, one stored outcome', async () => {
    const who = await actor(leased);
    const key = randomUUID();
    // The run table held: the first attempt claims its key, then blocks inserting its run.
    const table = await holdTable(leased.db.ownerUrl, 'durable_runs');
    try {
      const firstP = submit(leased, who, key);
      await table.waiting('the first attempt to block on the run table');
      const claimed = await waitFor(async () => (await keyRow(leased, who, key))?.status === 'in_progress' && keyRow(leased, who, key), { what: 'the claim' });
      await waitFor(async () => (await keyRow(leased, who, key))?.lease_expired, { timeoutMs: 30_000, what: 'the first lease to run out' });
      // The retry takes the same record over (a new lease), then waits behind the first attempt.
      const secondP = submit(leased, who, key);
      const takenOver = await waitFor(async () => {
        const r = await keyRow(leased, who, key);
        return r && r.lease !== claimed.lease && r;
      }, { what: 'the retry to take the key over' });
      expect(takenOver).toMatchObject({ id: claimed.id, status: 'in_progress' });
      await table.release();
      const [first, second] = await Promise.all([firstP, secondP]);

      expect(second.status, second.text).toBe(202);
      expect(second.headers.get('idempotent-replayed')).toBeNull();
      const all = await runs(leased, who);
      expect(all).toEqual([{ id: second.json.run_id, idempotency_hash: submissionHash(who.tenant, claimed.id) }]);
      const stored = await keyRow(leased, who, key);
      expect(stored).toMatchObject({ id: claimed.id, status: 'completed' });
      expect(JSON.parse(stored.response_body)).toEqual(second.json);
      // The attempt that lost its lease committed nothing, and says what the key holds now — the
      // retry's outcome, or that the retry is still running — never an internal error.
      if (first.status === 202) {
        expect(first.json).toEqual(second.json);
        expect(first.headers.get('idempotent-replayed')).toBe('true');
      } else {
        expect(first.status, first.text).toBe(409);
        expect(first.json).toMatchObject({ code: 'idempotency_key_in_use' });
        expect(Number(first.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      }
      const again = await submit(leased, who, key);
      expect(again.headers.get('idempotent-replayed')).toBe('true');
      expect(again.json).toEqual(second.json);
    } finally {
      await table.close();
    }
  });
});

describe('a first attempt that stalls past its lease and then fails with a 4xx of its own, after the retry that took it over succeeded', () => {
  it('answers as the key now does (the retry\'s stored 200, replayed), not with the 4xx the key never stored', async () => {
    // A route of this test's own, on the real router and database: its first call claims the key (its
    // first statement carries the claim), waits for the test, then refuses with a 409 — as a handler
    // does that finds the state changed under it (a retry of the same operation got there first). Any
    // later call succeeds.
    let calls = 0;
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const route = defineRoute({
      method: 'post',
      path: '/api/v1/test-only/gated',
      summary: 'test only',
      tags: ['test'],
      idempotency: 'required',
      responses: { 200: { description: 'done', schema: z.object({ done: z.boolean(), call: z.number() }) } },
      async handler({ em }) {
        await em.execute('select 1');
        if (++calls === 1) {
          await gate;
          throw new ConflictError('already_done', 'Another request did this first.');
        }
        return { status: 200, body: { done: true, call: calls } };
      },
    });
    const server = await new Promise<Server>((resolve) => {
      const s = createApp({ ...leased.container, routes: [...leased.container.routes, route] }).listen(0, '127.0.0.1', () => resolve(s));
    });
    try {
      const who = await actor(leased);
      const key = randomUUID();
      const post = () =>
        fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/api/v1/test-only/gated`, {
          method: 'POST',
          headers: { authorization: `Bearer ${who.token}`, 'Idempotency-Key': key },
        });
      const firstP = post();
      await waitFor(async () => (await keyRow(leased, who, key))?.status === 'in_progress', { what: 'the first attempt to claim the key' });
      await waitFor(async () => (await keyRow(leased, who, key))?.lease_expired, { timeoutMs: 30_000, what: 'the first lease to run out' });
      const second = await post();
      expect(second.status).toBe(200);
      const secondText = await second.text();
      expect(JSON.parse(secondText)).toEqual({ done: true, call: 2 });
      open();
      const first = await firstP;
      const firstText = await first.text();
      // The key holds the retry's 200: the stalled attempt says so, as any duplicate would.
      expect({ status: first.status, body: firstText }).toEqual({ status: 200, body: secondText });
      expect(first.headers.get('idempotent-replayed')).toBe('true');
      expect(await keyRow(leased, who, key)).toMatchObject({ status: 'completed' });
      expect(JSON.parse((await keyRow(leased, who, key)).response_body)).toEqual({ done: true, call: 2 });
      expect(calls).toBe(2);
    } finally {
      open();
      await new Promise((r) => server.close(r));
    }
  });
});

describe('a key that changes between the claim reading it and taking it over', () => {
  it('is read again, not answered from the stale read: a duplicate of the request that took an expired key over gets 409, not 422', async () => {
    const who = await actor(leased);
    const key = randomUUID();
    const svc = new IdempotencyService({ ttlMs: 3_600_000, leaseMs: 1000 });
    const em = () => tenantEm(leased.container.orm, who.tenant);
    const route = `POST ${RUN}`;
    const [oldBody, newBody] = ['a'.repeat(64), 'b'.repeat(64)];
    // The key's first request completed long ago and its TTL has passed: the key is free for a new request.
    await em().execute(
      `insert into idempotency_keys (id, tenant_id, principal, idempotency_key, method, route, fingerprint, status, response_status,
                                     response_body, response_headers, locked_at, created_at, expires_at)
       values (?, ?, ?, ?, 'POST', ?, ?, 'completed', 202, '"{}"', '{}', null, now() - interval '2 hours', now() - interval '1 hour')`,
      [randomUUID(), who.tenant, who.sub, key, route, oldBody],
      'run',
    );
    // The second statement that claims the new request's key (the first is the claim in one message,
    // the second the insert-or-find of its takeover transaction) waits, after its snapshot, until the
    // test lets it go: the window in which another request can change the key.
    const gate = `gate_${randomUUID().replace(/-/g, '')}`;
    const lockId = Math.floor(Math.random() * 1e9);
    await leased.db.admin(`create sequence ${gate}`);
    await leased.db.admin(`create function ${gate}() returns trigger language plpgsql security definer set lock_timeout = 0 as $$
      begin
        if new.tenant_id = '${who.tenant}' and new.fingerprint = '${newBody}' then
          if nextval('${gate}') = 2 then perform pg_advisory_xact_lock(${lockId}); end if;
        end if;
        return new;
      end $$`);
    await leased.db.admin(`create trigger ${gate} before insert on idempotency_keys for each row execute function ${gate}()`);
    const holder = new pg.Client({ connectionString: leased.db.adminUrl });
    await holder.connect();
    try {
      await holder.query('select pg_advisory_lock($1)', [lockId]);
      const input = { tenantId: who.tenant, principal: who.sub, key, method: 'POST', route, fingerprint: newBody };
      const slowP = svc.claim(em(), input);
      await waitFor(
        async () => (await holder.query(`select 1 from pg_locks where locktype = 'advisory' and objid = $1 and not granted and database = (select oid from pg_database where datname = current_database())`, [lockId])).rowCount,
        { what: 'the claim to wait in its takeover' },
      );
      // Meanwhile a duplicate of the same new request takes the expired key over, and commits.
      const fast = await svc.claim(em(), input);
      expect(fast.outcome).toBe('claimed');
      await holder.query('select pg_advisory_unlock($1)', [lockId]);
      const slow = await slowP;
      // The key now holds the same request, still in progress: 409, never 422 "reused with another
      // request" (from the old record it no longer holds), which tells a client to change its key.
      expect(slow.outcome).toBe('in_progress');
      expect(slow.outcome === 'in_progress' && slow.record?.id).toBe(fast.outcome === 'claimed' && fast.record.id);
    } finally {
      await holder.end();
      await leased.db.admin(`drop trigger ${gate} on idempotency_keys`);
      await leased.db.admin(`drop function ${gate}()`);
      await leased.db.admin(`drop sequence ${gate}`);
    }
  });
});

describe('the API process SIGKILLed in the middle of a keyed submission', () => {
  /** This database's backends waiting for a lock of `relation` (a table), or on another transaction (a row). */
  async function waiters(admin: pg.Client, relation?: string): Promise<number[]> {
    const { rows } = await admin.query(
      `select l.pid from pg_locks l join pg_stat_activity a on a.pid = l.pid and a.datname = current_database()
        where not l.granted and ${relation ? `l.relation = $1::regclass` : `l.locktype = 'transactionid'`}`,
      relation ? [relation] : [],
    );
    return rows.map((r) => r.pid as number);
  }
  const gone = async (admin: pg.Client, pid: number) => (await admin.query('select 1 from pg_stat_activity where pid = $1', [pid])).rowCount === 0;

  async function killedSubmission(hold: (admin: pg.Client, key: string) => Promise<number>) {
    const who = await actor(leased);
    const key = randomUUID();
    const proc = await spawnApi(leased.env);
    const admin = new pg.Client({ connectionString: leased.db.adminUrl });
    await admin.connect();
    try {
      const sent = fetch(`${proc.baseUrl}${RUN}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${who.token}`, 'content-type': 'application/json', 'Idempotency-Key': key },
        body: JSON.stringify(SAMPLE_SUBMISSION),
      }).catch((e: unknown) => e);
      const pid = await hold(admin, key);
      proc.proc.kill('SIGKILL');
      await proc.exited;
      expect(await sent).toBeInstanceOf(Error);
      return { who, key, admin, pid };
    } catch (e) {
      await admin.end();
      throw e;
    } finally {
      await proc.stop('SIGKILL');
    }
  }

  it('before its transaction committed: nothing of it commits, and a retry after the lease takes the claim over and makes the one run', async () => {
    const table = await holdTable(leased.db.ownerUrl, 'durable_runs');
    let killed: Awaited<ReturnType<typeof killedSubmission>> | undefined;
    try {
      killed = await killedSubmission(async (admin) => (await waitFor(async () => (await waiters(admin, 'durable_runs'))[0], { what: 'the run insert to wait' })));
      const claimed = await keyRow(leased, killed.who, killed.key);
      expect(claimed).toMatchObject({ status: 'in_progress' });
      await table.release();
      // The dead client's backend goes on once the table is free, and ends without committing.
      await waitFor(() => gone(killed!.admin, killed!.pid), { what: "the dead client's backend to end" });
      expect(await runs(leased, killed.who)).toEqual([]);
      expect(await keyRow(leased, killed.who, killed.key)).toMatchObject({ id: claimed.id, status: 'in_progress', lease: claimed.lease });
      const retry = await waitFor(async () => {
        const r = await submit(leased, killed!.who, killed!.key);
        return r.status === 409 ? undefined : r;
      }, { timeoutMs: 30_000, what: 'the lease to run out' });
      expect(retry.status, retry.text).toBe(202);
      expect(await runs(leased, killed.who)).toEqual([{ id: retry.json.run_id, idempotency_hash: submissionHash(killed.who.tenant, claimed.id) }]);
      expect(await keyRow(leased, killed.who, killed.key)).toMatchObject({ id: claimed.id, status: 'completed' });
    } finally {
      await table.close();
      await killed?.admin.end();
    }
  });

  it('with its commit sent: the run and its stored response commit together, and a retry replays it', async () => {
    const table = await holdTable(leased.db.ownerUrl, 'durable_runs');
    const rowLock = new pg.Client({ connectionString: leased.db.adminUrl });
    await rowLock.connect();
    let killed: Awaited<ReturnType<typeof killedSubmission>> | undefined;
    try {
      killed = await killedSubmission(async (admin, key) => {
        await waitFor(async () => (await waiters(admin, 'durable_runs'))[0], { what: 'the run insert to wait' });
        // The claim committed; its row locked now, the completion sent with the commit will wait on it.
        await rowLock.query('begin');
        const locked = await rowLock.query(`select 1 from idempotency_keys where idempotency_key = $1 for update`, [key]);
        expect(locked.rowCount).toBe(1);
        await table.release();
        return waitFor(async () => (await waiters(admin))[0], { what: 'the completion to wait on the key row' });
      });
      await rowLock.query('rollback');
      await waitFor(() => gone(killed!.admin, killed!.pid), { what: "the dead client's backend to end" });
      const [run] = await runs(leased, killed.who);
      expect(run).toBeDefined();
      const stored = await keyRow(leased, killed.who, killed.key);
      expect(stored).toMatchObject({ status: 'completed' });
      expect(JSON.parse(stored.response_body)).toMatchObject({ run_id: run!.id });
      const retry = await submit(leased, killed.who, killed.key);
      expect(retry.status, retry.text).toBe(202);
      expect(retry.headers.get('idempotent-replayed')).toBe('true');
      expect(retry.json.run_id).toBe(run!.id);
      expect(await runs(leased, killed.who)).toHaveLength(1);
    } finally {
      await rowLock.end();
      await table.close();
      await killed?.admin.end();
    }
  });
});
