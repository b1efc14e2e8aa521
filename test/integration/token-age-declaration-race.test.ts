import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { waitFor, within } from '../helpers/poll.ts';
import { TOKEN_AGE_DECLARATIONS_MAX } from '../../src/platform/tenancy/token-age-limit.entity.ts';

/**
 * Two first declarations of one token age at once (ADR 0018, amendment "One row per declared age"): the
 * trigger `declarations_capped` checked whether the age's row existed and only then took its advisory
 * lock, so both could pass the check, queue on the lock, and insert in turn — the second hitting the
 * primary key (23505). The previous release's statement (`on conflict (instance)`, which does not absorb a
 * conflict on the age) failed with it, and its API process served 503 until its next reconcile. The
 * interleaving is forced: a third connection holds the lock until both declarations wait for it.
 */
let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

const LOCK = `hashtext('dealix:token_age_limits')`;
const CURRENT = `insert into token_age_limits (instance, max_token_age_seconds, published_at, seen_at) values ($1, $2, now(), now())
  on conflict (max_token_age_seconds) do update set seen_at = now()`;
const PREVIOUS_RELEASE = `insert into token_age_limits (instance, max_token_age_seconds, published_at, seen_at) values ($1, $2, now(), now())
  on conflict (instance) do update set seen_at = now()`;

async function appClient(): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: db.appUrl });
  await c.connect();
  return c;
}

/** Declares `age` as `instance` in a transaction of its own: its now() (what it stamps), or the SQLSTATE it failed with. */
async function declare(c: pg.Client, sql: string, instance: string, age: number): Promise<{ instance: string; now: string } | string> {
  try {
    await c.query('begin');
    const { rows } = await c.query<{ now: string }>(`select to_json(now())#>>'{}' as now`);
    await c.query(sql, [instance, age]);
    await c.query('commit');
    return { instance, now: rows[0]!.now };
  } catch (e) {
    await c.query('rollback').catch(() => {});
    return (e as { code?: string }).code ?? String(e);
  }
}

const waitingOnTheLock = async () =>
  Number(
    (await db.admin(`select count(*)::int as n from pg_locks where locktype = 'advisory' and not granted and database = (select oid from pg_database where datname = current_database())`))
      .rows[0].n,
  );

describe('two first declarations of one token age at once', () => {
  for (const [form, sql, age] of [
    ['this release', CURRENT, 3_601],
    ['the previous release (on conflict (instance))', PREVIOUS_RELEASE, 3_602],
  ] as const) {
    it(`both succeed, one row for the age, seen by the later one — ${form}`, { timeout: 60_000 }, async () => {
      const holder = await appClient();
      const [a, b] = [await appClient(), await appClient()];
      try {
        await holder.query('begin');
        await holder.query(`select pg_advisory_xact_lock(${LOCK})`);
        // Both pass the existence check (no row yet) and queue on the lock the cap is counted under.
        const declaring = [declare(a, sql, `api-a-${age}`, age), declare(b, sql, `api-b-${age}`, age)];
        await waitFor(async () => (await waitingOnTheLock()) >= 2, { timeoutMs: 30_000, what: 'both declarations waiting on the advisory lock' });
        await holder.query('commit');
        const results = await within(Promise.all(declaring), 'both declarations');
        expect(results.filter((r) => typeof r === 'string')).toEqual([]);
        const done = results as Array<{ instance: string; now: string }>;
        const { rows } = await db.admin(
          `select instance, to_json(published_at)#>>'{}' as published_at, to_json(seen_at)#>>'{}' as seen_at from token_age_limits where max_token_age_seconds = $1`,
          [age],
        );
        expect(rows).toHaveLength(1);
        // The first to get the lock inserted the row; the second moved its seen_at to its own time.
        const first = done.find((d) => d.instance === rows[0].instance)!;
        const second = done.find((d) => d.instance !== rows[0].instance)!;
        expect(rows[0]).toEqual({ instance: first.instance, published_at: first.now, seen_at: second.now });
      } finally {
        await holder.query('rollback').catch(() => {});
        await Promise.all([holder.end(), a.end(), b.end()]);
      }
    });
  }
});

describe('the cap on declared ages', () => {
  it('a new age refused at the cap says which rows are safe to delete and how to see them', { timeout: 60_000 }, async () => {
    const app = await appClient();
    try {
      const have = Number((await db.admin(`select count(*)::int as n from token_age_limits`)).rows[0].n);
      await app.query(
        `insert into token_age_limits (instance, max_token_age_seconds, published_at, seen_at)
         select 'filler-' || g, 1000000 + g, now(), now() from generate_series(1, $1::int) g`,
        [TOKEN_AGE_DECLARATIONS_MAX - have],
      );
      const refused = await app.query(CURRENT, ['new-api', 7_200]).then(
        () => undefined,
        (e: unknown) => e as { code: string; message: string; hint: string },
      );
      expect(refused?.code).toBe('54000');
      expect(refused?.message).toMatch(/^token_age_limits holds 100 declared token ages, the most it takes \(ADR 0018\): a new one is refused/);
      // Rows not seen within the window (7 days) are ignored by the prune: the hint names them, and the command that deletes them.
      expect(refused?.hint).toContain(`select * from token_age_limits where seen_at <= now() - interval '7 days'`);
      expect(refused?.hint).toContain('npm run token -- prune-revocations');
    } finally {
      await app.end();
      await db.owner(`delete from token_age_limits where instance like 'filler-%'`);
    }
  });
});
