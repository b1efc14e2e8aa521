import { afterAll, describe, expect, it } from 'vitest';
import { WEBHOOK_QUEUE } from '../../src/platform/webhooks/delivery.ts';
import { randomBytes, randomUUID } from 'node:crypto';
import pg from 'pg';
import { CLASS_A_SUBMISSION, SAMPLE_SUBMISSION, startStack } from '../helpers/stack.ts';
import { ApprovalService } from '../../src/modules/approvals/approval.service.ts';
import { createOrm } from '../../src/platform/db/orm.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { CoalescingClient, DEFER_UNTIL_NEXT, LAST_IN_TRANSACTION, Prelude, holdingInserts, isDeferrable, withPrelude } from '../../src/platform/db/coalescing-client.ts';
import { GOLDEN_PATH } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { stepJobId } from '../../src/platform/queue/job-ids.ts';
import { blockedBy } from '../helpers/lock-graph.ts';
import { within } from '../helpers/poll.ts';
import { PartnerDossierRow } from '../../src/modules/golden-path/golden-path.entities.ts';
import { ApprovalRequest } from '../../src/modules/approvals/approval.entities.ts';
import { insertRow } from '../../src/platform/db/insert-row.ts';
import { entities } from '../../src/entities.ts';
import { StepExecutor } from '../../src/platform/durable/executor.ts';
import { DurableRuntime } from '../../src/platform/durable/runtime.ts';
import { gatedWorkflow } from '../helpers/slow-workflow.ts';
import { pino } from 'pino';
import { seedRun } from '../helpers/db.ts';
import { stepCheckpointNames } from '../helpers/evidence.ts';

/**
 * The connection-level round-trip cut (src/platform/db/coalescing-client.ts) against the real
 * PostgreSQL as the application role: what is sent, that RLS and the tenant setting still apply, and
 * that a held-back write that fails still fails its transaction and leaves the connection clean.
 */
const stack = await startStack({ api: false });
// One connection, so the transaction after a failure provably reuses the connection it failed on.
const orm = await createOrm(stack.container.config, { entities, clientUrl: stack.db.appUrl, poolMax: 1 });
afterAll(async () => {
  await orm.close(true);
  await stack.stop();
});

/** Records every message the clients actually send while `fn` runs, and every notice (warning) PostgreSQL answers with. */
async function sent<T>(fn: () => Promise<T>): Promise<{ result: T; texts: string[]; notices: string[] }> {
  const texts: string[] = [];
  const notices: string[] = [];
  const original = pg.Client.prototype.query;
  const originalEmit = pg.Client.prototype.emit;
  pg.Client.prototype.query = function (this: pg.Client, config: any, ...rest: any[]) {
    texts.push(typeof config === 'string' ? config : String(config?.text ?? config));
    return (original as any).call(this, config, ...rest);
  } as any;
  pg.Client.prototype.emit = function (this: pg.Client, event: string | symbol, ...args: any[]) {
    if (event === 'notice') notices.push(`${args[0]?.severity}: ${args[0]?.message}`);
    return originalEmit.call(this, event, ...args);
  };
  try {
    const result = await fn();
    // A commit deferred from an earlier transaction on the connection may be sent as `fn` starts (ADR 0004;
    // seen in CI under load, as in step-transaction.test.ts): not `fn`'s, whose own statements begin with `begin`.
    if (texts[0] === 'commit') texts.shift();
    return { result, texts, notices };
  } finally {
    pg.Client.prototype.query = original;
    pg.Client.prototype.emit = originalEmit;
  }
}

const runInsert = (id: string, tenant: string) =>
  `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, sequence_num, step_count, created_at, updated_at)
   values ('${id}', '${tenant}', 'golden-path', 1, '${randomUUID()}', 'pending', 'u', '{}', 'c', 0, 4, now(), now())`;

describe('coalescing client', () => {
  it('a tenant transaction sends begin and set_config with its first statement: two round trips in all, the tenant in force', async () => {
    // The recorder sees every pg client of this process, the stack's too: a message of the stack's own (seen
    // once in CI under load, two more) lands in the window now and then. Measured again, up to 3 times, until a
    // window holds the transaction's alone; a transaction that always sends more still fails.
    let tenant = '';
    let measured: Awaited<ReturnType<typeof sent<{ t: string; n: string }[]>>> | undefined;
    for (let attempt = 0; attempt < 3 && (measured === undefined || measured.texts.length !== 2); attempt++) {
      tenant = randomUUID();
      const t = tenant;
      measured = await sent(() =>
        tenantEm(orm, t).transactional((tx) => tx.execute<{ t: string; n: string }[]>(`select current_setting('app.tenant_id', true) as t, count(*) as n from durable_runs`)),
      );
    }
    const { result, texts } = measured!;
    expect(result[0]).toEqual({ t: tenant, n: '0' });
    expect(texts, texts.join('\n---\n')).toHaveLength(2);
    expect(texts[0]).toMatch(/^begin;\nselect set_config\('app\.tenant_id', '[0-9a-f-]{36}', true\);\nselect current_setting/);
    expect(texts[1]).toBe('commit');
  });

  it('row-level security still isolates: a row written under tenant A is invisible to tenant B and to no tenant', async () => {
    const a = randomUUID();
    const b = randomUUID();
    const id = randomUUID();
    await tenantEm(orm, a).transactional((tx) => tx.execute(runInsert(id, a)));
    const count = (tenant: string) => tenantEm(orm, tenant).transactional((tx) => tx.execute<{ n: string }[]>(`select count(*) as n from durable_runs where id = '${id}'`));
    expect((await count(a))[0]!.n).toBe('1');
    expect((await count(b))[0]!.n).toBe('0');
    const plain = await orm.em.fork().execute<{ n: string }[]>(`select count(*) as n from durable_runs where id = '${id}'`);
    expect(plain[0]!.n).toBe('0');
    // Writing tenant A's row from tenant B's transaction is refused by the policy's WITH CHECK.
    await expect(tenantEm(orm, b).transactional((tx) => tx.execute(runInsert(randomUUID(), a)))).rejects.toThrow(/row-level security/);
  });

  it('a held-back write that fails is raised by the commit, rolls the whole transaction back, and leaves the connection clean', async () => {
    const tenant = randomUUID();
    const first = randomUUID();
    const attempt = tenantEm(orm, tenant).transactional(async (tx) => {
      await tx.execute(runInsert(first, tenant));
      // The same primary key again, held back until the commit: the commit must fail with its error.
      await tx.execute(`${DEFER_UNTIL_NEXT}${runInsert(first, tenant)}`);
    });
    await expect(attempt).rejects.toMatchObject({ code: '23505' });
    // The first insert rolled back with it, and the one pooled connection serves the next transaction.
    const rows = await tenantEm(orm, tenant).transactional((tx) => tx.execute<{ n: string }[]>(`select count(*) as n from durable_runs where id = '${first}'`));
    expect(rows[0]!.n).toBe('0');
    const second = randomUUID();
    await tenantEm(orm, tenant).transactional((tx) => tx.execute(`${DEFER_UNTIL_NEXT}${runInsert(second, tenant)}`));
    const after = await tenantEm(orm, tenant).transactional((tx) => tx.execute<{ n: string }[]>(`select count(*) as n from durable_runs where id = '${second}'`));
    expect(after[0]!.n).toBe('1');
  });

  it("a step's flush inside holdingInserts travels with the commit; an insert the policy refuses fails the commit and nothing is stored", async () => {
    const tenant = randomUUID();
    const dossier = (id: string, owner: string) => ({ id, tenantId: owner, runId: randomUUID(), partnerName: 'P', country: 'DE', completenessScore: 1, content: {}, createdAt: new Date() });
    const ok = randomUUID();
    const { texts } = await sent(() =>
      tenantEm(orm, tenant).transactional(async (tx) => {
        tx.create(PartnerDossierRow, dossier(ok, tenant));
        await holdingInserts(() => tx.flush());
      }),
    );
    expect(texts).toHaveLength(1);
    expect(texts[0]).toMatch(/^begin;\nselect set_config\(.*\);\n\/\* dealix:defer-until-next \*\/ insert into "partner_dossiers" .*;\ncommit$/s);
    const count = (id: string) => tenantEm(orm, tenant).transactional((tx) => tx.execute<{ n: string }[]>(`select count(*) as n from partner_dossiers where id = '${id}'`));
    expect((await count(ok))[0]!.n).toBe('1');

    const refused = randomUUID();
    const other = randomUUID();
    const attempt = tenantEm(orm, tenant).transactional(async (tx) => {
      tx.create(PartnerDossierRow, dossier(refused, tenant));
      tx.create(PartnerDossierRow, dossier(randomUUID(), other));
      await holdingInserts(() => tx.flush());
    });
    await expect(attempt).rejects.toThrow(/row-level security/);
    expect((await count(refused))[0]!.n).toBe('0');
  });

  it('insertRow writes the same row as em.insert (columns, json, dates, nulls), is held inside a step, and RLS still refuses another tenant', async () => {
    const tenant = randomUUID();
    const at = new Date('2026-12-02T10:11:12.345Z');
    const request = (id: string, owner: string, runId: string = randomUUID()) => ({
      id, tenantId: owner, runId, approvalClass: 'B', requiredApprovals: 1, status: 'pending' as const, submittedBy: "o'brien",
      reasons: ['cost above class A', 'quote " and \\ backslash'], slaDeadline: null, decidedAt: at, createdAt: at, updatedAt: at,
    });
    const viaOrm = randomUUID();
    const viaRow = randomUUID();
    // Each on a run whose approval step's checkpoint names it: a request commits only with it (step-rows-bound.test.ts).
    const runOf = async (id: string) => {
      const runId = await seedRun(stack.db, tenant);
      await stepCheckpointNames(stack.db, tenant, runId, 'approval-packet', { approval_request_id: id, approval_class: 'B', required_approvals: 1 });
      return runId;
    };
    const [ormRun, rowRun] = [await runOf(viaOrm), await runOf(viaRow)];
    await tenantEm(orm, tenant).transactional((tx) => tx.insert(ApprovalRequest, request(viaOrm, tenant, ormRun)));
    const { texts } = await sent(() => tenantEm(orm, tenant).transactional((tx) => holdingInserts(() => insertRow(tx, ApprovalRequest, request(viaRow, tenant, rowRun)))));
    expect(texts).toHaveLength(1);
    expect(texts[0]).toMatch(/^begin;\nselect set_config\(.*\);\n\/\* dealix:defer-until-next \*\/ insert into "approval_requests" .*;\ncommit$/s);
    const read = (id: string) =>
      tenantEm(orm, tenant).transactional((tx) => tx.execute<Record<string, unknown>[]>(`select * from approval_requests where id = '${id}'`));
    const [a] = await read(viaOrm);
    const [b] = await read(viaRow);
    expect(b).toEqual({ ...a, id: viaRow, run_id: b!.run_id });
    expect(b!.reasons).toEqual(['cost above class A', 'quote " and \\ backslash']);
    expect(new Date(b!.decided_at as string).toISOString()).toBe(at.toISOString());

    await expect(tenantEm(orm, tenant).transactional((tx) => insertRow(tx, ApprovalRequest, request(randomUUID(), randomUUID())))).rejects.toThrow(/row-level security/);
    await expect(tenantEm(orm, tenant).transactional((tx) => insertRow(tx, ApprovalRequest, { ...request(randomUUID(), tenant), bogus: 1 } as never))).rejects.toThrow(
      /bogus is not a column of approval_requests/,
    );
  });

  // A prelude is one text of several statements (a simple-protocol message with everything written
  // in) or bound statements (an extended-protocol batch of prepared statements, as the idempotency
  // claim sends it): the same guarantees either way.
  const preludeForms = {
    text: (tenant: string, second: string) => new Prelude(`select set_config('app.tenant_id', '${tenant}', true), set_config('lock_timeout', '250ms', true); ${second}`, 2),
    bound: (tenant: string, second: string) =>
      new Prelude([
        { text: 'select set_config($1, $2, true), set_config($3, $4, true)', values: ['app.tenant_id', tenant, 'lock_timeout', '250ms'] },
        { text: second.replace(`'${tenant}'`, '$1'), values: second.includes(`'${tenant}'`) ? [tenant] : [] },
      ]),
  };

  it.each(Object.keys(preludeForms) as (keyof typeof preludeForms)[])(
    'a prelude (%s) is its own transaction, committed ahead of the next one in the same message, its settings end with it, and its result is kept',
    async (form) => {
      const tenant = randomUUID();
      const before = randomUUID();
      const prelude = preludeForms[form](tenant, `${runInsert(before, tenant)} returning id`);
      let settings: unknown;
      const { texts, notices } = await sent(() =>
        withPrelude(prelude, () =>
          tenantEm(orm, tenant).transactional(async (tx) => {
            settings = (await tx.execute(`select current_setting('lock_timeout') as lock_timeout`))[0];
            throw new Error('the transaction after the prelude rolls back');
          }),
        ).catch((e: Error) => e.message),
      );
      expect(texts).toHaveLength(2);
      expect(texts[0]).toMatch(/^begin;\nselect set_config\(/);
      expect(texts[0]).toMatch(/returning id;\ncommit;\nbegin;\nselect set_config\('app\.tenant_id', '[0-9a-f-]{36}', true\);\nselect current_setting\('lock_timeout'\) as lock_timeout$/);
      expect(texts[1]).toBe('rollback');
      // The prelude's commit ends a transaction it began: PostgreSQL has nothing to warn about (a
      // commit of the implicit transaction warned "there is no transaction in progress", and the
      // server logged that for every keyed request).
      expect(notices).toEqual([]);
      // The prelude's transaction-local lock timeout ended with its commit.
      expect(settings).toEqual({ lock_timeout: '0' });
      expect(prelude.result?.rows).toEqual([{ id: before }]);
      // The prelude committed on its own: the rollback of the transaction after it did not take it back.
      const [row] = await tenantEm(orm, tenant).transactional((tx) => tx.execute<{ n: string }[]>(`select count(*) as n from durable_runs where id = '${before}'`));
      expect(row?.n).toBe('1');
    },
  );

  it.each(Object.keys(preludeForms) as (keyof typeof preludeForms)[])(
    'a prelude (%s) that fails stops the message: nothing of the next transaction runs, the caller cannot go on outside a transaction, the connection is clean after its rollback',
    async (form) => {
      const tenant = randomUUID();
      const after = randomUUID();
      const prelude = preludeForms[form](tenant, `select ('not a number')::int`);
      const outcome: string[] = [];
      const ended = await withPrelude(prelude, () =>
        tenantEm(orm, tenant).transactional(async (tx) => {
          outcome.push(await tx.execute(runInsert(after, tenant)).then(() => 'ran', (e: Error) => e.message));
          // A caller that swallowed the error must not reach the database outside a transaction, nor commit.
          outcome.push(await tx.execute(runInsert(randomUUID(), tenant)).then(() => 'ran', (e: Error) => e.message));
        }),
      ).then(() => 'committed', (e: Error) => e.message);
      expect(prelude.failed).toBe(true);
      expect(outcome).toEqual([expect.stringMatching(/invalid input syntax/), expect.stringMatching(/invalid input syntax/)]);
      expect(ended).toMatch(/invalid input syntax/);
      const [row] = await tenantEm(orm, tenant).transactional((tx) => tx.execute<{ n: string }[]>(`select count(*) as n from durable_runs`));
      expect(row?.n).toBe('0');
    },
  );

  it.each(Object.keys(preludeForms) as (keyof typeof preludeForms)[])(
    'after a prelude (%s) failed, a caller that begins again instead of rolling back gets a working transaction',
    async (form) => {
      const client = new CoalescingClient({ connectionString: stack.db.appUrl });
      await client.connect();
      try {
        const tenant = randomUUID();
        const prelude = preludeForms[form](tenant, `select ('not a number')::int`);
        await withPrelude(prelude, async () => {
          await client.query('begin');
          await expect(client.query('select 1 as one')).rejects.toThrow(/invalid input syntax/);
        });
        // The failed prelude left its own transaction aborted on the connection: it is rolled back
        // ahead of the new `begin`, so the new transaction's statements run.
        await client.query('begin');
        await client.query(`select set_config('app.tenant_id', '${tenant}', true)`);
        const r = await client.query('select current_setting($1, true) as t', ['app.tenant_id']);
        expect(r.rows[0]).toEqual({ t: tenant });
        await client.query('commit');
        expect((await client.query(`select 2 as two`)).rows[0]).toEqual({ two: 2 });
      } finally {
        await client.end();
      }
    },
  );

  it('a prelude never travels with a rollback: a transaction that ends before it sent anything leaves it unsent', async () => {
    const tenant = randomUUID();
    const prelude = new Prelude(`select set_config('app.tenant_id', '${tenant}', true); ${runInsert(randomUUID(), tenant)}`, 2);
    const { texts } = await sent(() =>
      withPrelude(prelude, () =>
        tenantEm(orm, tenant).transactional(async () => {
          throw new Error('fails before its first statement');
        }),
      ).catch(() => undefined),
    );
    expect(prelude.sent).toBe(false);
    // Nothing of the transaction was sent, so neither is its rollback: nothing to undo on the server.
    expect(texts).toEqual([]);
    const [row] = await tenantEm(orm, tenant).transactional((tx) => tx.execute<{ n: string }[]>(`select count(*) as n from durable_runs`));
    expect(row?.n).toBe('0');
  });

  it('statements run as prepared statements: parsed once per connection, each execution with its own values', async () => {
    const tenant = randomUUID();
    const ids = [randomUUID(), randomUUID()];
    for (const id of ids) {
      await tenantEm(orm, tenant).transactional((tx) =>
        tx.execute(`insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, sequence_num, step_count, created_at, updated_at)
                    values (?, ?, 'golden-path', 1, ?, 'pending', ?, ?::jsonb, 'c', 0, 4, ?, now())`, [id, tenant, randomUUID(), "o'brien \\ x", { a: [1, 'two'] }, new Date('2026-12-02T10:11:12.345Z')], 'run'),
      );
    }
    const rows = await tenantEm(orm, tenant).transactional((tx) =>
      tx.execute<{ id: string; principal: string; input: unknown; created_at: Date }[]>(`select id, principal, input, created_at from durable_runs where tenant_id = ? order by created_at, id`, [tenant]),
    );
    expect(rows.map((r) => r.id).sort()).toEqual([...ids].sort());
    expect(rows[0]).toMatchObject({ principal: "o'brien \\ x", input: { a: [1, 'two'] } });
    expect(new Date(rows[0]!.created_at).toISOString()).toBe('2026-12-02T10:11:12.345Z');
    // The one pooled connection holds the insert once, however often it ran.
    const prepared = await tenantEm(orm, tenant).transactional((tx) => tx.execute<{ statement: string }[]>(`select statement from pg_prepared_statements where statement like ?`, ["%into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash%values ($1, $2, 'golden-path', 1, $3%"]));
    expect(prepared).toHaveLength(1);
    expect(prepared[0]!.statement).toMatch(/values \(\$1, \$2, 'golden-path', 1, \$3/);
    // So are the fixed texts every transaction sends.
    const fixed = await tenantEm(orm, tenant).transactional((tx) => tx.execute<{ statement: string }[]>(`select statement from pg_prepared_statements where statement in (?, ?) order by 1`, ['begin', 'commit']));
    expect(fixed.map((r) => r.statement)).toEqual(['begin', 'commit']);
  });

  it('a connection prepares a statement again after 100 executions: a plan made while the table was new does not outlive its growth', async () => {
    const tenant = randomUUID();
    const runId = randomUUID();
    const text = `select id from approval_requests where tenant_id = ? and run_id = ? and ? = 'reprepare'`;
    const lookup = () => tenantEm(orm, tenant).transactional((tx) => tx.execute<{ id: string }[]>(text, [tenant, runId, 'reprepare']));
    const held = () =>
      tenantEm(orm, tenant).transactional((tx) =>
        tx.execute<{ name: string; prepare_time: string; custom_plans: string; generic_plans: string }[]>(
          `select name, prepare_time::text, custom_plans, generic_plans from pg_prepared_statements where statement like ?`,
          [`%'reprepare'%`],
        ),
      );
    for (let i = 0; i < 10; i++) await lookup();
    const [early] = await held();
    expect(Number(early!.generic_plans)).toBeGreaterThan(0);
    // The tenant's approvals grow to a size where walking them costs (no ANALYZE runs here: autovacuum is off).
    await stack.db.admin(
      `insert into approval_requests (id, tenant_id, run_id, approval_class, required_approvals, status, submitted_by, reasons, created_at, updated_at)
       select gen_random_uuid(), $1, gen_random_uuid(), 'A', 0, 'approved', 'u', '[]', now(), now() from generate_series(1, 3000)`,
      [tenant],
    );
    for (let i = 10; i < 99; i++) await lookup();
    const [before] = await held();
    expect(before!.prepare_time).toBe(early!.prepare_time);
    await lookup(); // the 100th execution on this connection
    const [after] = await held();
    expect(after!.name).toBe(early!.name);
    expect(after!.prepare_time > early!.prepare_time).toBe(true);
    expect(Number(after!.custom_plans) + Number(after!.generic_plans)).toBe(1);
    for (let i = 0; i < 10; i++) await lookup();
    // Planned again for the grown table, the generic plan reaches the one request by its unique key.
    const [plan] = await tenantEm(orm, tenant).transactional((tx) =>
      tx.execute<{ 'QUERY PLAN': unknown }[]>(`explain (format json) execute ${after!.name}('${tenant}', '${runId}', 'reprepare')`),
    );
    expect(JSON.stringify(plan!['QUERY PLAN'])).toMatch(/"Index Name":"approval_requests_tenant_run_unique"[^}]*"Index Cond":"\(\(tenant_id = \$1\) AND \(run_id = \$2\)\)"/);
  });

  it("a transaction's last statement (LAST_IN_TRANSACTION) travels with begin, the tenant setting and the commit: one round trip, its own result, committed", async () => {
    const tenant = randomUUID();
    const id = randomUUID();
    const { result, texts } = await sent(() =>
      tenantEm(orm, tenant).transactional((tx) => tx.execute<{ id: string; t: string }[]>(`${LAST_IN_TRANSACTION}${runInsert(id, tenant)} returning id, current_setting('app.tenant_id', true) as t`)),
    );
    expect(result).toEqual([{ id, t: tenant }]);
    expect(texts).toHaveLength(1);
    expect(texts[0]).toMatch(/^begin;\nselect set_config\('app\.tenant_id', '[0-9a-f-]{36}', true\);\n\/\* dealix:last-in-transaction \*\/ insert into durable_runs[\s\S]*;\ncommit$/);
    // Committed: another connection sees it.
    const seen = await stack.db.admin(`select tenant_id from durable_runs where id = $1`, [id]);
    expect(seen.rows).toEqual([{ tenant_id: tenant }]);
  });

  it('a statement after the last one fails loudly and runs nowhere; a failing last statement commits nothing; later in a transaction it still takes the commit; outside one the mark changes nothing', async () => {
    const tenant = randomUUID();
    const [first, second, third, fourth] = [randomUUID(), randomUUID(), randomUUID(), randomUUID()];
    const { result: after, notices } = await sent(async () =>
      tenantEm(orm, tenant)
        .transactional(async (tx) => {
          await tx.execute(`${LAST_IN_TRANSACTION}${runInsert(first, tenant)}`);
          await tx.execute(runInsert(second, tenant));
        })
        .then(() => 'committed', (e: Error) => e.message),
    );
    expect(after).toMatch(/followed one marked LAST_IN_TRANSACTION/);
    // The caller's rollback after that error is answered by the client: nothing for PostgreSQL to warn about.
    expect(notices).toEqual([]);
    const stored = async (ids: string[]) => (await stack.db.admin(`select id from durable_runs where id = any($1::uuid[]) order by id`, [ids])).rows.map((r) => r.id);
    // The marked statement's transaction had committed (the caller broke its promise); nothing ran after it.
    expect(await stored([first, second])).toEqual([first]);
    // One statement that writes a row, then fails on the first one's key: sent with its commit, it commits nothing.
    const failing = tenantEm(orm, tenant).transactional((tx) => tx.execute(`${LAST_IN_TRANSACTION}with a as (${runInsert(third, tenant)}) ${runInsert(first, tenant)}`));
    await expect(failing).rejects.toMatchObject({ code: '23505' });
    expect(await stored([third])).toEqual([]);
    // Not the transaction's first statement: it still travels with the commit, and the caller's commit is answered here.
    const { texts } = await sent(() =>
      tenantEm(orm, tenant).transactional(async (tx) => {
        await tx.execute(runInsert(third, tenant));
        await tx.execute(`${LAST_IN_TRANSACTION}${runInsert(fourth, tenant)}`);
      }),
    );
    expect(texts).toHaveLength(2);
    expect(texts[1]).toMatch(/^\/\* dealix:last-in-transaction \*\/ insert into durable_runs[\s\S]*;\ncommit$/);
    expect(await stored([third, fourth])).toEqual([third, fourth].sort());
    // Outside a transaction the client began (an autocommit statement) the mark changes nothing: no commit is added.
    const fifth = randomUUID();
    const { texts: alone, notices: aloneNotices } = await sent(() => orm.em.getConnection().execute(`${LAST_IN_TRANSACTION}select 1 as one`));
    expect(alone).toEqual([`${LAST_IN_TRANSACTION}select 1 as one`]);
    expect(aloneNotices).toEqual([]);
    // After a savepoint (a nested transaction) the mark changes nothing: its commit would end the outer transaction.
    const { texts: nested } = await sent(() =>
      tenantEm(orm, tenant).transactional(async (tx) => {
        await tx.transactional((inner) => inner.execute(runInsert(fifth, tenant)));
        await tx.execute(`${LAST_IN_TRANSACTION}select 1 as one`);
      }),
    );
    expect(nested.at(-1)).toBe('commit');
    expect(nested.filter((t) => /commit$/.test(t))).toHaveLength(1);
    // The one pooled connection serves the next transaction.
    const next = await tenantEm(orm, tenant).transactional((tx) => tx.execute<{ n: string }[]>(`select count(*) as n from durable_runs where tenant_id = ? and id <> ?`, [tenant, fifth]));
    expect(next[0]!.n).toBe('3');
    expect(await stored([fifth])).toEqual([fifth]);
  });

  it('DurableRuntime.start: the run in one round trip with its commit, its run job enqueued; the same submission again finds the run and adds no second job', async () => {
    const runtime = stack.container.runtime;
    const tenant = randomUUID();
    const input = { tenantId: tenant, principal: 'producer', idempotencyHash: randomBytes(32).toString('hex'), input: { any: 'thing' }, correlationId: randomUUID() };
    const { result: first, texts } = await sent(() => runtime.start(tenantEm(stack.container.orm, tenant), GOLDEN_PATH, input));
    expect(first.created).toBe(true);
    expect(texts).toHaveLength(1);
    const queue = runtime.queues.get(runtime.workflow(GOLDEN_PATH).queue)!;
    const jobId = stepJobId(runtime.workflow(GOLDEN_PATH).tag, input.idempotencyHash, 1, runtime.workflow(GOLDEN_PATH).steps[0]!.name);
    const job = await queue.getJob(jobId);
    expect(job?.data).toMatchObject({ run_id: first.run.id, tenant_id: tenant, sequence_num: 1 });
    const again = await runtime.start(tenantEm(stack.container.orm, tenant), GOLDEN_PATH, { ...input, correlationId: randomUUID() });
    expect(again).toMatchObject({ created: false, run: { id: first.run.id, status: 'pending' } });
    expect((await queue.getJobs(['wait', 'delayed', 'active', 'prioritized'])).filter((j) => j.data?.run_id === first.run.id)).toHaveLength(1);
    const runs = await stack.db.admin(`select count(*)::int as n from durable_runs where tenant_id = $1`, [tenant]);
    expect(runs.rows[0].n).toBe(1);
    await job!.remove();
  });

  /** A class A run's job, run here (no worker is running): what it returns and every message it sends. */
  async function classARun(tenant: string) {
    const { runtime, orm } = stack.container;
    const input = { tenantId: tenant, principal: 'producer', idempotencyHash: randomBytes(32).toString('hex'), input: CLASS_A_SUBMISSION, correlationId: randomUUID() };
    const { run } = await runtime.start(tenantEm(orm, tenant), GOLDEN_PATH, input);
    const wf = runtime.workflow(GOLDEN_PATH);
    const job = (await runtime.queues.get(wf.queue)!.getJob(stepJobId(wf.tag, input.idempotencyHash, 1, wf.steps[0]!.name)))!;
    const executor = new StepExecutor({ orm, runtime, logger: pino({ level: 'silent' }), workerId: 'test', leaseMs: 2_000 });
    const { result: outcome, texts } = await sent(() => executor.process(job));
    await job.remove();
    return { run, outcome, texts };
  }

  it("webhooks add no round trip: a class A run of a tenant with an endpoint is four messages too, the last inserting its run.completed delivery (ADR 0013)", async () => {
    const tenant = randomUUID();
    const endpointId = randomUUID();
    await stack.db.admin(
      `insert into webhook_endpoints (id, tenant_id, url, events, secret, enabled, created_by, created_at, updated_at) values ($1, $2, 'https://93.184.215.14/hook', '{run.completed}', 'whsec_AAAA', true, 'test', now(), now())`,
      [endpointId, tenant],
    );
    const { run, outcome, texts } = await classARun(tenant);
    expect(outcome.steps.map((st) => st.status)).toEqual(['completed', 'completed', 'completed', 'completed']);
    expect(texts).toHaveLength(4);
    expect(texts[3]).toMatch(/insert into webhook_deliveries[\s\S]*commit$/);
    const rows = await stack.db.admin(`select endpoint_id, event_type, status from webhook_deliveries where tenant_id = $1 and payload->'data'->>'run_id' = $2`, [tenant, run.id]);
    expect(rows.rows).toEqual([{ endpoint_id: endpointId, event_type: 'run.completed', status: 'pending' }]);
    // Enqueued after the commit (no worker here takes it).
    const jobs = await stack.container.runtime.queues.get(WEBHOOK_QUEUE)!.getJobs(['wait', 'delayed', 'prioritized']);
    expect(jobs.filter((j) => j.data?.tenant_id === tenant)).toHaveLength(1);
  });

  it("a class A run's job is four messages, one per step: the first runs from what the job carries, its checkpoint checks the run and brings the approval step's policy", async () => {
    const { runtime, orm } = stack.container;
    const tenant = randomUUID();
    const wf = runtime.workflow(GOLDEN_PATH);
    // The job runs here, in this process, so every message it sends is seen (no worker is running).
    const { run, outcome, texts } = await classARun(tenant);
    expect(outcome.steps.map((st) => [st.step, st.status, st.replayed])).toEqual(wf.steps.map((st) => [st.name, 'completed', false]));
    expect(texts).toHaveLength(4);
    expect(texts[0]).toMatch(/durable_expect\(\(select count\(\*\) from r\) = 1, [\s\S]*from approval_policies p where p\.tenant_id = r\.tenant_id\) from r\) as prefetch_3/);
    expect(texts.every((t) => t.endsWith('commit'))).toBe(true);
    // No read of the run at all: the job carried what step 1 needs.
    expect(texts.join('\n')).not.toMatch(/json_agg/);
    expect(texts.join('\n')).not.toMatch(/from approval_policies where/);
    // The policy the step used is the one the prefetch found: none, so the defaults (class A).
    const [row] = await tenantEm(orm, tenant).transactional((tx) => tx.execute<{ output: { approval_class: string } }[]>(`select output from durable_checkpoints where run_id = ? and sequence_num = 3`, [run.id]));
    expect(row!.output.approval_class).toBe('A');
  });

  /**
   * A class B golden-path run taken to its approval wait by `executor` (its holder cleared by the wait),
   * approved: its job from step 4, the resume's, is returned (still to be processed, then removed).
   */
  async function approvedClassB(executor: StepExecutor) {
    const { runtime, orm } = stack.container;
    const tenant = randomUUID();
    const wf = runtime.workflow(GOLDEN_PATH);
    const hash = randomBytes(32).toString('hex');
    const { run } = await runtime.start(tenantEm(orm, tenant), GOLDEN_PATH, { tenantId: tenant, principal: 'producer', idempotencyHash: hash, input: SAMPLE_SUBMISSION, correlationId: randomUUID() });
    const queue = runtime.queues.get(wf.queue)!;
    const first = (await queue.getJob(stepJobId(wf.tag, hash, 1, wf.steps[0]!.name)))!;
    expect((await executor.process(first)).status).toBe('waiting');
    await first.remove();
    const holder = async () => (await stack.db.admin(`select status, lease_owner from durable_runs where id = $1`, [run.id])).rows[0];
    expect(await holder()).toEqual({ status: 'waiting', lease_owner: null });
    const [request] = (await stack.db.admin(`select id from approval_requests where run_id = $1`, [run.id])).rows;
    const { afterCommit } = await tenantEm(orm, tenant).transactional((tx) =>
      new ApprovalService(runtime).decide(tx, { sub: 'approver-1', tenantId: tenant, roles: ['approver'] }, request.id, 'approve', null),
    );
    await afterCommit();
    expect(await holder()).toEqual({ status: 'running', lease_owner: null });
    const resumed = (await queue.getJob(stepJobId(wf.tag, hash, 4, wf.steps[3]!.name)))!;
    return { run, wf, resumed, holder };
  }

  it("a run resumed after its approval: its job's first message names the worker the run's holder ahead of its read (ADR 0016), no message more", async () => {
    const { runtime, orm } = stack.container;
    const executor = new StepExecutor({ orm, runtime, logger: pino({ level: 'silent' }), workerId: 'test-resumed', leaseMs: 2_000 });
    const { wf, resumed, holder } = await approvedClassB(executor);
    const { result: outcome, texts } = await sent(() => executor.process(resumed));
    await resumed.remove();
    expect(outcome.steps.map((st) => [st.step, st.status, st.replayed])).toEqual([[wf.steps[3]!.name, 'completed', false]]);
    // Its read of the run, then its step's checkpoint with the commit: the holder's write travels with the read.
    expect(texts).toHaveLength(2);
    expect(texts[0]).toMatch(/update durable_runs set lease_owner = [\s\S]*commit[\s\S]*json_agg/);
    expect(texts[1]).toMatch(/commit$/);
    expect(await holder()).toEqual({ status: 'completed', lease_owner: 'test-resumed' });
  });

  it('a run carried on by a job of a worker other than the holder on record (a job Redis lost, re-enqueued by the sweeper): the pick-up names this worker', async () => {
    const { runtime, orm } = stack.container;
    const logger = pino({ level: 'silent' });
    const { run, wf, resumed } = await approvedClassB(new StepExecutor({ orm, runtime, logger, workerId: 'test-first', leaseMs: 2_000 }));
    // The worker that picked the resumed run up first named itself, then its job was lost (Redis flushed,
    // failed over) and that worker went away: the sweeper's job for the run is carried by another.
    await stack.db.admin(`update durable_runs set lease_owner = 'test-gone', lease_expires_at = now() where id = $1`, [run.id]);
    // The holder on record while step 4 runs (before its commit, which names its worker anyway).
    let during: unknown;
    const gated = new DurableRuntime({
      workflows: [gatedWorkflow(wf, async ({ seq }) => {
        if (seq === 4) during = (await stack.db.admin(`select lease_owner from durable_runs where id = $1`, [run.id])).rows[0]?.lease_owner;
      })],
      queues: runtime.queues,
      logger,
    });
    const outcome = await new StepExecutor({ orm, runtime: gated, logger, workerId: 'test-carrier', leaseMs: 2_000 }).process(resumed);
    await resumed.remove();
    expect(outcome.steps.map((st) => [st.sequence_num, st.status])).toEqual([[4, 'completed']]);
    // Before: 'test-gone' — a stall of this live worker's delivery counted as a crash (its holder gone),
    // and a death of it did not (were 'test-gone' alive).
    expect(during).toBe('test-carrier');
  });

  it("a resumed run cancelled while its job's pick-up waits for the run row: the pick-up writes nothing, no step runs, the job ends", async () => {
    const { runtime, orm } = stack.container;
    const executor = new StepExecutor({ orm, runtime, logger: pino({ level: 'silent' }), workerId: 'test-late', leaseMs: 2_000 });
    const { run, resumed, holder } = await approvedClassB(executor);
    // A cancel in progress: the run row locked and moved, not committed yet.
    const cancel = new pg.Client({ connectionString: stack.db.adminUrl });
    await cancel.connect();
    try {
      await cancel.query('begin');
      await cancel.query(`select 1 from durable_runs where id = $1 for update`, [run.id]);
      await cancel.query(`update durable_runs set status = 'cancelled', completed_at = now(), lease_owner = null where id = $1`, [run.id]);
      const cancelPid = (await cancel.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
      const processing = executor.process(resumed);
      // The holder's update waits for the row (its read, in the same message, after it). Told by the lock
      // graph, not by pg_stat_activity's query text: a backend waiting inside a pipelined message may show
      // another statement of that message there (seen: `commit`, idle, waiting on the cancel's transaction).
      // The waiters read from pg_locks (lock-graph.ts): this poll runs inside the cancel's open transaction,
      // where pg_stat_activity keeps its first reading to the end.
      await blockedBy((sql, params) => cancel.query(sql, params), cancelPid, "the pick-up's update to wait for the run row");
      await cancel.query('commit');
      const outcome = await processing;
      expect(outcome.steps).toEqual([]);
    } finally {
      await cancel.query('rollback').catch(() => {});
      await cancel.end();
      await resumed.remove();
    }
    // Re-checked on the row as the cancel left it: not `running`, so not written.
    expect(await holder()).toEqual({ status: 'cancelled', lease_owner: null });
    expect((await stack.db.admin(`select count(*)::int as n from durable_checkpoints where run_id = $1 and sequence_num = 4`, [run.id])).rows[0].n).toBe(0);
  });

  it('with DATABASE_PREPARED_STATEMENTS=false (a pooler that cannot keep them) nothing stays prepared, and the batch is still one message', async () => {
    const unnamed = await createOrm({ ...stack.container.config, DATABASE_PREPARED_STATEMENTS: false }, { entities, clientUrl: stack.db.appUrl, poolMax: 1 });
    try {
      const tenant = randomUUID();
      const { result, texts } = await sent(() =>
        tenantEm(unnamed, tenant).transactional((tx) => tx.execute<{ t: string }[]>(`select current_setting(?, true) as t from durable_runs where tenant_id = ? union all select ?`, ['app.tenant_id', tenant, 'x'])),
      );
      expect(result).toEqual([{ t: 'x' }]);
      expect(texts).toHaveLength(2);
      const held = await tenantEm(unnamed, tenant).transactional((tx) => tx.execute<{ n: string }[]>(`select count(*) as n from pg_prepared_statements where ? = ?`, [1, 1]));
      expect(held[0]!.n).toBe('0');
    } finally {
      await unnamed.close(true);
    }
  });

  it('row-level security holds through a prepared statement\'s cached generic plan: one statement on one connection, alternating tenants', async () => {
    const a = randomUUID();
    const b = randomUUID();
    const id = randomUUID();
    await tenantEm(orm, a).transactional((tx) => tx.execute(runInsert(id, a)));
    // The policy alone decides: the statement does not name the tenant.
    const visible = (tenant: string) => tenantEm(orm, tenant).transactional((tx) => tx.execute<{ n: string }[]>(`select count(*) as n from durable_runs where id = ? and ? = 'rls-generic-plan'`, [id, 'rls-generic-plan']));
    const seen: string[] = [];
    // PostgreSQL plans the first five executions for their values, then keeps a generic plan.
    for (let i = 0; i < 12; i++) seen.push(`${i % 2 ? 'b' : 'a'}:${(await visible(i % 2 ? b : a))[0]!.n}`);
    expect(seen).toEqual(Array.from({ length: 12 }, (_, i) => (i % 2 ? 'b:0' : 'a:1')));
    const [plans] = await tenantEm(orm, a).transactional((tx) =>
      tx.execute<{ generic_plans: string }[]>(`select generic_plans from pg_prepared_statements where statement like ?`, [`%'rls-generic-plan'%`]),
    );
    expect(Number(plans!.generic_plans)).toBeGreaterThan(0);
  });

  it('bound numbers and booleans keep the types their written-in literals had', async () => {
    const [row] = await tenantEm(orm, randomUUID()).transactional((tx) =>
      tx.execute<Record<string, unknown>[]>(`select ? as n, ? + ? as sum, 3 > ? as gt, '["a","b"]'::jsonb ->> ? as second, coalesce(?, 0) as c, ? as flag`, [5, 2, 3, 2.5, 1, 7, true]),
    );
    expect(row).toEqual({ n: 5, sum: 5, gt: true, second: 'b', c: 7, flag: true });
  });

  it('a rollback never goes after a held insert: the insert that would fail is dropped, and the one pooled connection serves the next transaction', async () => {
    const tenant = randomUUID();
    const id = randomUUID();
    await tenantEm(orm, tenant).transactional((tx) => tx.execute(runInsert(id, tenant)));
    const failing = tenantEm(orm, tenant).transactional(async (tx) => {
      await tx.execute(`${DEFER_UNTIL_NEXT}${runInsert(id, tenant)}`); // a duplicate key, held
      throw new Error('the step fails before anything else is sent');
    });
    await expect(failing).rejects.toThrow('the step fails before anything else is sent');
    // With one connection in the pool, a connection left in an aborted transaction would make this wait forever.
    const next = tenantEm(orm, tenant).transactional((tx) => tx.execute<{ n: string }[]>(`select count(*) as n from durable_runs where id = ?`, [id]));
    expect((await within(next, 'the pooled connection to be released (a connection left in an aborted transaction never is)', 30_000))[0]!.n).toBe('1');
  });

  it('a bound prelude whose commit ran keeps its result when the next transaction\'s first statement fails', async () => {
    const tenant = randomUUID();
    const before = randomUUID();
    const prelude = preludeForms.bound(tenant, `${runInsert(before, tenant)} returning id`);
    const ended = await withPrelude(prelude, () => tenantEm(orm, tenant).transactional((tx) => tx.execute(`select ('not a number')::int where ? = 1`, [1]))).then(
      () => 'committed',
      (e: Error) => e.message,
    );
    expect(ended).toMatch(/invalid input syntax/);
    expect(prelude.failed).toBe(false);
    expect(prelude.result?.rows).toEqual([{ id: before }]);
    const [row] = await tenantEm(orm, tenant).transactional((tx) => tx.execute<{ n: string }[]>(`select count(*) as n from durable_runs where id = ?`, [before]));
    expect(row?.n).toBe('1');
  });

  it('a statement that fails to parse is not taken for prepared: it fails the same way again, and the statements after it still run', async () => {
    const tenant = randomUUID();
    const broken = (tx: any) => tx.execute(`${DEFER_UNTIL_NEXT}insert into durable_runs (id) valeus (?)`, [randomUUID()], 'run');
    for (let i = 0; i < 2; i++) {
      await expect(tenantEm(orm, tenant).transactional(async (tx) => broken(tx))).rejects.toThrow(/syntax error/);
    }
    const [row] = await tenantEm(orm, tenant).transactional((tx) => tx.execute<{ t: string }[]>(`select current_setting(?, true) as t`, ['app.tenant_id']));
    expect(row?.t).toBe(tenant);
  });

  it('a table changed under a prepared statement fails that execution once, then the statement is prepared again', async () => {
    // The owner may create tables (the application role may not); one connection, so the same session each time.
    const owner = await createOrm(stack.container.config, { entities, role: 'owner', clientUrl: stack.db.ownerUrl, poolMax: 1 });
    try {
      const conn = owner.em.getConnection();
      await conn.execute(`create temporary table plan_change (a int)`);
      await conn.execute(`insert into plan_change values (1)`);
      const read = () => owner.em.fork().transactional((tx) => tx.execute<Record<string, unknown>[]>(`select * from plan_change where a = ?`, [1]));
      expect(await read()).toEqual([{ a: 1 }]);
      await conn.execute(`alter table plan_change add column b int default 2`);
      await expect(read()).rejects.toMatchObject({ code: '0A000' });
      expect(await read()).toEqual([{ a: 1, b: 2 }]);
    } finally {
      await owner.close(true);
    }
  });

  it('a query with bind parameters travels with what is held, in order, in one message', async () => {
    const client = new CoalescingClient({ connectionString: stack.db.appUrl });
    await client.connect();
    try {
      const tenant = randomUUID();
      await client.query('begin');
      await client.query(`select set_config('app.tenant_id', '${tenant}', true)`);
      expect(client.pendingStatements).toHaveLength(2);
      const r = await client.query('select current_setting($1, true) as t', ['app.tenant_id']);
      expect(client.pendingStatements).toHaveLength(0);
      expect(r.rows[0]).toEqual({ t: tenant });
      await client.query('commit');
      expect((await client.query(`select current_setting('app.tenant_id', true) as t`)).rows[0].t).toBe('');
    } finally {
      await client.end();
    }
  });

  it('a step\'s insert issued while its transaction\'s rollback is on the wire is refused, never left for the next user of the connection', async () => {
    // A step still running when its transaction is aborted (a worker handing its job back) may issue
    // an insert after the rollback was sent but before its answer came back: it must not stay held
    // on the pooled connection, to run first in another tenant's transaction.
    const [A, B] = [randomUUID(), randomUUID()];
    let tx!: Parameters<Parameters<ReturnType<typeof tenantEm>['transactional']>[0]>[0];
    let straggler: Promise<string> | undefined;
    const original = CoalescingClient.prototype.query;
    CoalescingClient.prototype.query = function (this: CoalescingClient, config: any, ...rest: any[]) {
      const r = (original as any).call(this, config, ...rest);
      if (config === 'rollback' && !straggler) {
        straggler = holdingInserts(() =>
          insertRow(tx, PartnerDossierRow, { id: randomUUID(), tenantId: A, runId: randomUUID(), partnerName: 'late', country: 'DE', completenessScore: 1, content: {}, createdAt: new Date() } as any),
        ).then(() => 'held', (e: Error) => `refused: ${e.message}`);
      }
      return r;
    } as any;
    try {
      await expect(tenantEm(orm, A).transactional(async (t) => {
        tx = t;
        await t.execute('select 1');
        throw new Error('step aborted');
      })).rejects.toThrow('step aborted');
    } finally {
      CoalescingClient.prototype.query = original;
    }
    expect(await straggler).toMatch(/^refused: .*after the transaction ended/);
    // The next transaction on the same (only) connection is tenant B's own, and works.
    const [row] = await tenantEm(orm, B).transactional((t) => t.execute<{ n: number }[]>('select count(*)::int as n from partner_dossiers'));
    expect(row!.n).toBe(0);
  });

  it('holds back only the statements it knows: not session-level settings, not statements that merely start alike', () => {
    expect(isDeferrable('begin')).toBe(true);
    expect(isDeferrable(`select set_config('app.tenant_id', '6f1c0c1e-9f0a-4a43-9a53-2f1f7a0c9d11', true)`)).toBe(true);
    expect(isDeferrable(`select set_config('lock_timeout', '250ms', true), set_config('synchronous_commit', 'off', true)`)).toBe(true);
    expect(isDeferrable('set local role "dealix_system"')).toBe(true);
    expect(isDeferrable(`select set_config('app.tenant_id', 'x', false)`)).toBe(false);
    expect(isDeferrable(`select set_config('app.tenant_id', 'x', true); drop table durable_runs`)).toBe(false);
    expect(isDeferrable('begin; delete from durable_runs')).toBe(false);
    expect(isDeferrable('select 1')).toBe(false);
  });
});
