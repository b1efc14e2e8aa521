import { afterAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { startStack } from '../helpers/stack.ts';
import { createOrm } from '../../src/platform/db/orm.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { DEFER_UNTIL_NEXT, LAST_IN_TRANSACTION } from '../../src/platform/db/coalescing-client.ts';
import { GroupCommit as GroupCommitClass, groupCommitFor, groupKey, type GroupCommit, type GroupCommitRef } from '../../src/platform/db/group-commit.ts';
import { inlineStatement, type Statement } from '../../src/platform/db/statement-batch.ts';
import { seedRun } from '../helpers/db.ts';
import { evidenceHash } from '../../src/modules/evidence/evidence.service.ts';
import { entities } from '../../src/entities.ts';
import { CoalescingClient } from '../../src/platform/db/coalescing-client.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { waitFor } from '../helpers/poll.ts';
import { sent } from '../helpers/pg-messages.ts';

/**
 * Group commit (src/platform/db/group-commit.ts, ADR 0007) against the real PostgreSQL as the
 * application role: whole transactions of several tenants that share one commit keep each its own
 * tenant under row-level security and its own results, and a failing one fails alone.
 */
const stack = await startStack({ api: false });
// One message on its way at a time, so transactions started together are grouped behind the first.
const orm = await createOrm({ ...stack.container.config, DATABASE_GROUP_COMMIT_IN_FLIGHT: 1 }, { entities, clientUrl: stack.db.appUrl, poolMax: 12 });
afterAll(async () => {
  await orm.close(true);
  await stack.stop();
});

const group = (): GroupCommit => {
  const ref = (orm.config.get('driverOptions') as { groupCommit?: GroupCommitRef }).groupCommit;
  if (!ref) throw new Error('the ORM has no group commit');
  return groupCommitFor(ref);
};

const RUN_INSERT = `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, sequence_num, step_count, created_at, updated_at)
   values (?, ?, 'golden-path', 1, ?, 'pending', 'u', '{}', 'c', 0, 4, now(), now()) returning id, current_setting('app.tenant_id', true) as t`;

/** A whole transaction in one message: the run's insert (bound, as the runtime's) as its last statement, returning what it saw. */
const insertRun = (tenant: string, id: string, rowTenant = tenant) =>
  tenantEm(orm, tenant).transactional((tx) => tx.execute<{ id: string; t: string }[]>(`${LAST_IN_TRANSACTION}${RUN_INSERT}`, [id, rowTenant, randomUUID()]));

/**
 * Starts `first`, holds it on its way (it waits for the table) until the others are queued behind it,
 * then lets it go: the others go as one group. Started together is not enough: under load each could be
 * sent before the next arrives, and nothing is grouped.
 */
async function behindOne<T>(first: () => Promise<T>, others: Array<() => Promise<T>>): Promise<Array<Promise<T>>> {
  const lock = await holdTable(stack.db.ownerUrl, 'durable_runs');
  try {
    const held = first();
    // Settled by the caller, after the release: a rejection meanwhile is not left unhandled.
    held.catch(() => {});
    await lock.waiting('the first transaction to wait for the table');
    const rest = others.map((f) => f());
    for (const p of rest) p.catch(() => {});
    await waitFor(() => group().queued === rest.length, { timeoutMs: 30_000, what: `the ${rest.length} others to queue behind the first` });
    await lock.release();
    return [held, ...rest];
  } finally {
    await lock.close();
  }
}

const stored = async (ids: string[]) => (await stack.db.admin(`select id, tenant_id from durable_runs where id = any($1::uuid[]) order by id`, [ids])).rows as Array<{ id: string; tenant_id: string }>;

const countOf = async (sql: string, params: unknown[]) => Number((await stack.db.admin(sql, params)).rows[0].n);

/**
 * A running run of `tenant` whose first three steps completed (their checkpoints, written as the owner writes a
 * fixture): its evidence step, the fourth, is next — a checkpoint follows its predecessor (ADR 0001).
 */
async function runAtEvidenceStep(tenant: string): Promise<string> {
  const runId = await seedRun(stack.db, tenant);
  for (const [seq, step] of ['partner-dossier', 'economics-model', 'approval-packet'].entries()) {
    await stack.db.admin(
      `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
       values ($1, $2, $3, $4, $5, 'completed', '{}', 1, now(), now(), now())`,
      [randomUUID(), tenant, runId, seq + 1, step],
    );
  }
  return runId;
}

/**
 * The evidence step's transaction, in the form the executor sends it: the pack held, the step's checkpoint
 * (naming the pack, or, `refused`, another one) last, with the commit — one message, which may be grouped.
 * `ownRun`: a run of its own is seeded first (the caller passes none).
 */
async function evidenceStep(r: { tenant: string; runId: string; pack: string; refused: boolean }, ownRun = false): Promise<unknown> {
  const runId = ownRun ? await runAtEvidenceStep(r.tenant) : r.runId;
  const content = { schema: 'dealix.evidence-pack/v1', run: { id: runId, tenant_id: r.tenant }, outcome: 'approved' };
  const sha256 = evidenceHash(content);
  const output = { evidence_pack_id: r.refused ? randomUUID() : r.pack, sha256, outcome: 'approved' };
  return tenantEm(orm, r.tenant).transactional(async (tx) => {
    await tx.execute(`${DEFER_UNTIL_NEXT}insert into evidence_packs (id, tenant_id, run_id, content, sha256, created_at) values (?, ?, ?, ?::jsonb, ?, now())`, [r.pack, r.tenant, runId, JSON.stringify(content), sha256]);
    return tx.execute(
      `${LAST_IN_TRANSACTION}insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
       values (?, ?, ?, 4, 'evidence-pack', 'completed', ?::jsonb, 1, now(), now(), now()) returning id`,
      [randomUUID(), r.tenant, runId, JSON.stringify(output)],
    );
  });
}

describe('group commit', () => {
  it('transactions of several tenants started together share one commit; each row is its tenant\'s, each gets its own result', async () => {
    const runs = Array.from({ length: 8 }, (_, i) => ({ tenant: randomUUID(), id: randomUUID(), i }));
    const before = { ...group().stats };
    const { result, texts } = await sent(async () => Promise.all(await behindOne(() => insertRun(runs[0]!.tenant, runs[0]!.id), runs.slice(1).map((r) => () => insertRun(r.tenant, r.id)))));
    expect(result).toEqual(runs.map((r) => [{ id: r.id, t: r.tenant }]));
    // The first went alone; the seven that arrived while it was on its way went as one transaction. Counted among
    // the messages that carry a run's insert: the hold's own (its polls of pg_locks, more of them the slower the
    // machine, and its commit) are sent meanwhile too (seen: 8 messages in all under load).
    expect(group().stats.grouped - before.grouped).toBeGreaterThanOrEqual(1);
    const carrying = texts.filter((t) => t.includes('insert into durable_runs'));
    expect(carrying).toHaveLength(2);
    const merged = carrying.find((t) => (t.match(/set_config/g) ?? []).length > 1)!;
    expect(merged).toMatch(/^begin;\n/);
    expect(merged).toMatch(/;\ncommit$/);
    expect((merged.match(/\bcommit\b/g) ?? []).length).toBe(1);
    expect(await stored(runs.map((r) => r.id))).toEqual(runs.map((r) => ({ id: r.id, tenant_id: r.tenant })).sort((a, b) => a.id.localeCompare(b.id)));
    // Row-level security: each tenant sees its own run only.
    for (const r of runs) {
      const seen = await tenantEm(orm, r.tenant).transactional((tx) => tx.execute<{ id: string }[]>(`select id from durable_runs where id = any(?::uuid[])`, [`{${runs.map((x) => x.id).join(',')}}`]));
      expect(seen).toEqual([{ id: r.id }]);
    }
  });

  it('one that fails in a group fails alone: the others commit, its rows are not stored, and the connections serve the next transactions', async () => {
    const runs = Array.from({ length: 6 }, () => ({ tenant: randomUUID(), id: randomUUID() }));
    const intruder = { tenant: randomUUID(), id: randomUUID() };
    const before = { ...group().stats };
    // The intruder writes another tenant's row under its own tenant: the policy's WITH CHECK refuses it.
    // It is queued with five others behind the first, so it is in a group (started together, under load
    // each could go alone: no group to fail).
    const outcomes = await Promise.allSettled(
      await behindOne(() => insertRun(runs[0]!.tenant, runs[0]!.id), [...runs.slice(1, 3).map((r) => () => insertRun(r.tenant, r.id)), () => insertRun(intruder.tenant, intruder.id, runs[0]!.tenant), ...runs.slice(3).map((r) => () => insertRun(r.tenant, r.id))]),
    );
    expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled', 'rejected', 'fulfilled', 'fulfilled', 'fulfilled']);
    expect(String((outcomes[3] as PromiseRejectedResult).reason)).toMatch(/row-level security/);
    expect(group().stats.failedGroups - before.failedGroups).toBeGreaterThanOrEqual(1);
    expect(await stored([...runs.map((r) => r.id), intruder.id])).toEqual(runs.map((r) => ({ id: r.id, tenant_id: r.tenant })).sort((a, b) => a.id.localeCompare(b.id)));
    // Every pooled connection is clean: a round of transactions on all of them commits.
    const next = Array.from({ length: 12 }, () => ({ tenant: randomUUID(), id: randomUUID() }));
    await Promise.all(next.map((r) => insertRun(r.tenant, r.id)));
    expect(await stored(next.map((r) => r.id))).toHaveLength(12);
  });

  it('a duplicate among a group (the unique key a lost checkpoint race hits) fails alone with the unique violation', async () => {
    const tenant = randomUUID();
    const id = randomUUID();
    await insertRun(tenant, id);
    const others = Array.from({ length: 5 }, () => ({ tenant: randomUUID(), id: randomUUID() }));
    const before = { ...group().stats };
    // The duplicate is queued with three others behind the first: it is in a group, as the title says.
    const outcomes = await Promise.allSettled(await behindOne(() => insertRun(others[0]!.tenant, others[0]!.id), [() => insertRun(others[1]!.tenant, others[1]!.id), () => insertRun(tenant, id), ...others.slice(2).map((r) => () => insertRun(r.tenant, r.id))]));
    expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'fulfilled', 'fulfilled', 'fulfilled']);
    expect(group().stats.failedGroups - before.failedGroups).toBeGreaterThanOrEqual(1);
    expect((outcomes[2] as PromiseRejectedResult).reason).toMatchObject({ code: '23505' });
    expect(await stored(others.map((r) => r.id))).toHaveLength(5);
  });

  it.each([
    ['in the middle of the group', 2],
    ['leading the group', 0],
  ])('one refused at its COMMIT (a deferred check: its pack not named by its checkpoint), %s, fails alone as it would have; the others commit once', async (_where, at) => {
    // A step's transaction as the evidence step sends it (ADR 0005): its pack held (DEFER_UNTIL_NEXT), its
    // checkpoint last with the commit. `written_by_its_step` is deferred: every statement of the refused
    // member succeeds, and PostgreSQL refuses the group's one COMMIT (42501) — nothing of the group commits.
    const steps = Array.from({ length: 4 }, (_, i) => ({ tenant: randomUUID(), refused: i === at }));
    const runs = await Promise.all(steps.map(async (s) => ({ ...s, runId: await runAtEvidenceStep(s.tenant), pack: randomUUID() })));
    const first = { tenant: randomUUID(), id: randomUUID() };
    const before = { ...group().stats };
    const outcomes = await Promise.allSettled(await behindOne(() => insertRun(first.tenant, first.id).then(() => 'run'), runs.map((r) => () => evidenceStep(r).then(() => 'step'))));
    expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', ...runs.map((r) => (r.refused ? 'rejected' : 'fulfilled'))]);
    // They were one group, whose commit was refused; its members were then sent again alone.
    expect(group().stats.grouped - before.grouped).toBeGreaterThanOrEqual(1);
    expect(group().stats.failedGroups - before.failedGroups).toBeGreaterThanOrEqual(1);
    // The refused member gets the error it gets alone: the deferred trigger's, raised at the commit, not
    // another member's nor an "outcome unknown".
    const refused = (outcomes[at + 1] as PromiseRejectedResult).reason;
    expect(refused).toMatchObject({ code: '42501', message: expect.stringContaining("evidence-pack step's checkpoint does not name it"), where: expect.stringContaining('evidence_packs_written_by_its_step_fn') });
    // The same step alone (nothing else in flight: no group) fails the same way, at its commit.
    const failedGroups = group().stats.failedGroups;
    const alone = await evidenceStep({ tenant: randomUUID(), runId: '', pack: randomUUID(), refused: true }, true).then(() => 'committed', (e: unknown) => e);
    expect(group().stats.failedGroups).toBe(failedGroups);
    const shape = (e: unknown) => ({ name: (e as Error).name, code: (e as { code?: string }).code, message: (e as Error).message.replace(/[0-9a-f]{8}-[0-9a-f-]{27}/g, '<id>'), where: (e as { where?: string }).where });
    expect(shape(refused)).toEqual(shape(alone));
    // Each innocent step committed exactly once (its pack, its seal, its checkpoint); the refused one left nothing.
    for (const r of runs) {
      const n = r.refused ? 0 : 1;
      expect(await countOf(`select count(*)::int as n from evidence_packs where run_id = $1 and id = $2`, [r.runId, r.pack])).toBe(n);
      expect(await countOf(`select count(*)::int as n from evidence_seals where id = $1`, [r.pack])).toBe(n);
      expect(await countOf(`select count(*)::int as n from durable_checkpoints where run_id = $1 and sequence_num = 4`, [r.runId])).toBe(n);
    }
    expect(await stored([first.id])).toHaveLength(1);
  });

  it('a group whose connection is lost after it was sent is not resent: every member gets the error, its outcome unknown', async () => {
    // A socket error carries a string code too (ECONNRESET), but it is no SQLSTATE: the group may
    // have committed, so resending each member alone could apply its work twice.
    const clients = await Promise.all([0, 1, 2, 3].map(async () => {
      const c = new pg.Client({ connectionString: stack.db.appUrl });
      await c.connect();
      return c;
    }));
    try {
      const gc = new GroupCommitClass({ maxInFlight: 1, maxMembers: 16 });
      const runSql = async (c: pg.Client, st: Statement[]) => {
        const r = await c.query(st.map(inlineStatement).join(';\n'));
        return (Array.isArray(r) ? r : [r]) as pg.QueryResult[];
      };
      const runs = [0, 1, 2, 3].map(() => ({ tenant: randomUUID(), id: randomUUID() }));
      const member = (r: { tenant: string; id: string }): Statement[] => [
        { text: 'begin' },
        { text: 'select set_config($1, $2, true)', values: ['app.tenant_id', r.tenant] },
        { text: `${LAST_IN_TRANSACTION}${RUN_INSERT.replace('?, ?,', '$1, $2,').replace('?,', '$3,')}`, values: [r.id, r.tenant, randomUUID()] },
        { text: 'commit' },
      ];
      const resentAlone: number[] = [];
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      // The first holds the only slot until released, so the other three are grouped behind it.
      const first = gc.submit({ statements: member(runs[0]!), send: async (st) => { await gate; return runSql(clients[0]!, st); } });
      const others = [1, 2, 3].map((i) =>
        gc.submit({
          statements: member(runs[i]!),
          send: async (st) => {
            if (st.length > 4) {
              // PostgreSQL runs and commits the group; then the socket dies before the answer is read.
              await runSql(clients[i]!, st);
              throw Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET', errno: -104, syscall: 'read' });
            }
            resentAlone.push(i);
            return runSql(clients[i]!, st);
          },
        }).then(() => 'committed', (e: Error) => e.message),
      );
      release();
      await first;
      expect(await Promise.all(others)).toEqual(['read ECONNRESET', 'read ECONNRESET', 'read ECONNRESET']);
      expect(resentAlone).toEqual([]);
      expect(gc.stats.failedGroups).toBe(0);
      // What the members could not know: the group did commit, each row once.
      expect((await stored(runs.map((r) => r.id))).length).toBe(4);
    } finally {
      await Promise.all(clients.map((c) => c.end()));
    }
  });

  it('a member whose connection the server already dropped never leads a group: it fails alone, the others commit', async () => {
    // The server may end a session whose transaction the client still holds back (its `begin` is not
    // sent until the commit): pg_terminate_backend, idle_session_timeout, a socket reset. Led by such
    // a member, the group never reaches PostgreSQL, yet every member was told "outcome unknown".
    const ref: GroupCommitRef = { id: randomUUID(), maxInFlight: 1 };
    const clients = await Promise.all([0, 1, 2, 3, 4].map(async () => {
      const c = new CoalescingClient({ connectionString: stack.db.appUrl, groupCommit: ref });
      await c.connect();
      return c;
    }));
    const runs = clients.map(() => ({ tenant: randomUUID(), id: randomUUID() }));
    /** A whole transaction as MikroORM sends it: held begin and tenant, the run's insert with its commit. */
    const whole = async (c: CoalescingClient, r: { tenant: string; id: string }) => {
      await c.query('begin');
      await c.query('select set_config($1, $2, true)', ['app.tenant_id', r.tenant]);
      await c.query(`${LAST_IN_TRANSACTION}${RUN_INSERT.replace('?, ?,', '$1, $2,').replace('?,', '$3,')}`, [r.id, r.tenant, randomUUID()]);
      await c.query('commit');
    };
    const lock = await holdTable(stack.db.ownerUrl, 'durable_runs');
    try {
      // The first takes the only slot and waits on the lock, so the next four queue up as one group, the dropped one first.
      const first = whole(clients[0]!, runs[0]!);
      await lock.waiting('the first transaction to wait for the table');
      let dropped = false;
      clients[1]!.on('error', () => (dropped = true));
      await stack.db.admin('select pg_terminate_backend($1)', [(clients[1] as unknown as { processID: number }).processID]);
      await waitFor(() => dropped, { what: 'the client to see its connection dropped' });
      const others = [1, 2, 3, 4].map((i) => whole(clients[i]!, runs[i]!).then(() => 'committed', (e: Error) => `failed: ${e.message}`));
      await lock.release();
      await first;
      const outcomes = await Promise.all(others);
      expect(outcomes[0]).toMatch(/^failed: .*connection/);
      expect(outcomes.slice(1)).toEqual(['committed', 'committed', 'committed']);
      expect(groupCommitFor(ref).stats.grouped).toBeGreaterThanOrEqual(1);
      expect(await stored(runs.map((r) => r.id))).toEqual([0, 2, 3, 4].map((i) => ({ id: runs[i]!.id, tenant_id: runs[i]!.tenant })).sort((a, b) => a.id.localeCompare(b.id)));
    } finally {
      await lock.close();
      await Promise.all(clients.map((c) => c.end().catch(() => {})));
    }
  });

  it('only whole transactions that set the tenant first, by name, and send nothing but marked, bound statements are grouped', () => {
    const SET1 = 'select set_config($1, $2, true)';
    const SET2 = 'select set_config($1, $2, true), set_config($3, $4, true)';
    const tenant = { text: SET1, values: ['app.tenant_id', randomUUID()] };
    const held = (sql: string) => ({ text: `${DEFER_UNTIL_NEXT}${sql}`, values: [1] });
    const last = (sql: string) => ({ text: `${LAST_IN_TRANSACTION}${sql}`, values: [1] });
    const B = { text: 'begin' };
    const C = { text: 'commit' };
    expect(groupKey([B, tenant, held('insert into t values ($1)'), last('insert into c values ($1)'), C])).toBe('app.tenant_id');
    // The key is the settings' names, not the statement's text: the same text with other names is another group.
    expect(groupKey([B, { text: SET2, values: ['app.tenant_id', 'x', 'lock_timeout', '1s'] }, held('insert into t values ($1)'), C])).toBe('app.tenant_id,lock_timeout');
    // Settings without the tenant: the statements would run under the previous member's tenant.
    expect(groupKey([B, { text: SET1, values: ['lock_timeout', '1s'] }, held('insert into t values ($1)'), C])).toBeUndefined();
    expect(groupKey([B, held('insert into t values ($1)'), C])).toBeUndefined();
    expect(groupKey([B, { text: `set local role "dealix_system"` }, held('select $1'), C])).toBeUndefined();
    // Settings written in rather than bound: their names cannot be checked.
    expect(groupKey([B, { text: `select set_config('app.tenant_id', 'x', true)` }, held('insert into t values ($1)'), C])).toBeUndefined();
    // Anything the platform did not mark, or not bound (it might hold several statements), or that changes the session.
    expect(groupKey([B, tenant, { text: 'insert into t values ($1)', values: [1] }, C])).toBeUndefined();
    expect(groupKey([B, tenant, { text: `${DEFER_UNTIL_NEXT}insert into t values (1); set local role x` }, C])).toBeUndefined();
    expect(groupKey([B, tenant, held(`select set_config('app.tenant_id', $1, true)`), C])).toBeUndefined();
    expect(groupKey([B, tenant, held('select pg_advisory_lock($1)'), C])).toBeUndefined();
    // A transaction-level advisory lock too: in a group, two members taking the same lock would take it
    // in one transaction, where it is re-entrant: they would not exclude each other (the admission
    // controller marks such a lock to be held).
    expect(groupKey([B, tenant, held(`select pg_advisory_xact_lock(hashtextextended('dealix:admission:' || $1, 0))`), C])).toBeUndefined();
    expect(groupKey([B, tenant, held('select pg_try_advisory_xact_lock_shared($1)'), C])).toBeUndefined();
    expect(groupKey([B, tenant, held('select pg_try_advisory_lock($1)'), C])).toBeUndefined();
    expect(groupKey([B, tenant, held('savepoint a'), C])).toBeUndefined();
    // Not a whole transaction: part of one already went, or its end is not in the message.
    expect(groupKey([tenant, held('insert into t values ($1)'), C])).toBeUndefined();
    expect(groupKey([B, tenant, held('insert into t values ($1)'), held('insert into t values ($1)')])).toBeUndefined();
  });
});
