import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomUUID } from 'node:crypto';
import pg from 'pg';
import canonicalizeImport from 'canonicalize';
import { api, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { seedRun } from '../helpers/db.ts';
import { waitFor } from '../helpers/poll.ts';
import { RECORDS_MATCH, sealedButUnrecorded, stepCheckpointNames } from '../helpers/evidence.ts';

/**
 * The evidence pack as an outsider sees it: verified from GET /evidence/:id alone with the recipe
 * docs/api.md gives (RFC 8785 canonical JSON of `content`, SHA-256 of its UTF-8 bytes, lower-case hex),
 * over text that tests the canonical form (non-BMP characters, decomposed accents, U+2028, control characters, quotes and
 * backslashes); and every field the pack claims to cover — the tenant, the workflow version, the
 * submitter, the decider, the decision time, the class and the policy applied — changed in the
 * database one at a time, each of which `/verify` must report.
 */
let stack: TestStack;
const tenant = newTenant();
const tok: Record<string, string> = {};

const canonicalize = ((canonicalizeImport as unknown as { default?: unknown }).default ?? canonicalizeImport) as (v: unknown) => string;

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** RFC 8785 written from the RFC, apart from the code under test: ECMAScript string and number forms, keys by UTF-16 code units. */
function jcs(v: unknown): string {
  if (typeof v === 'number' && !Number.isFinite(v)) throw new TypeError('no JSON form');
  if (typeof v === 'string' && LONE_SURROGATE.test(v)) throw new TypeError('lone surrogate');
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(jcs).join(',')}]`;
  const o = v as Record<string, unknown>;
  return `{${Object.keys(o)
    .sort()
    .map((k) => `${jcs(k)}:${jcs(o[k])}`)
    .join(',')}}`;
}
const sha256 = (text: string) => createHash('sha256').update(Buffer.from(text, 'utf8')).digest('hex');

const NAME = 'Cafe\u0301 Ωmega \u{1F680} \u2028 "Q" \\ </script>';
const SECTOR = '\u{1D523}\u{1D526}\u{1D52B} logistics';
const COMMENT = 'numbers hold \u0001\u001f\u007f\t \u2705 \u00e9 vs e\u0301 \u{1F600} \uFB33 \u0080';
// Within the API's bounds, and the economics model's upside and profit beyond 2^53: numbers a verifier must
// read as doubles (docs/api.md: Python's rfc8785 refuses such an int); cost and class B as SAMPLE_SUBMISSION's.
const ECONOMICS = { ...SAMPLE_SUBMISSION.economics, expected_deals_per_year: 1_000_000, average_deal_value: 1e11 };

async function getJson(path: string, token = tok.submitter!) {
  return api(stack, 'GET', path, { token });
}

/** Runs SQL in one transaction as the role of `url`, under `tenantId`'s setting (RLS is forced on the owner too). */
async function asRole<T = any>(url: string, tenantId: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query('begin');
    await c.query(`select set_config('app.tenant_id', $1, true)`, [tenantId]);
    const res = await c.query(sql, params);
    await c.query('commit');
    return res.rows as T[];
  } finally {
    await c.end();
  }
}
/** As the table owner, under the test's tenant. */
const asOwner = <T = any>(sql: string, params: unknown[] = []) => asRole<T>(stack.db.ownerUrl, tenant, sql, params);
/** As the application role (what the API and workers connect as), under `tenantId`. */
const asApp = <T = any>(tenantId: string, sql: string, params: unknown[] = []) => asRole<T>(stack.db.appUrl, tenantId, sql, params);

let packId: string;
let packSha: string;
let packRunId: string;

beforeAll(async () => {
  stack = await startStack();
  await stack.spawnWorker();
  tok.submitter = await stack.token({ tenantId: tenant, sub: 'submitter-\u{1F600}', roles: [] });
  tok.approver = await stack.token({ tenantId: tenant, sub: 'approver-1', roles: ['approver'] });
  tok.other = await stack.token({ tenantId: newTenant(), sub: 'other-1', roles: ['approver', 'admin'] });
  // Class B (SAMPLE_SUBMISSION): one human decision, with its comment.
  const submission = { ...SAMPLE_SUBMISSION, partner: { ...SAMPLE_SUBMISSION.partner, name: NAME, sector: SECTOR }, economics: ECONOMICS };
  const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: tok.submitter, body: submission, headers: { 'Idempotency-Key': randomUUID() } });
  expect(res.status, res.text).toBe(202);
  const runId = res.json.run_id as string;
  const waiting = await waitFor(async () => {
    const r = (await getJson(`/api/v1/golden-path/runs/${runId}`)).json;
    return r?.status === 'waiting' ? r : undefined;
  }, { timeoutMs: 60_000, what: 'the run to wait for its approval' });
  const decided = await api(stack, 'POST', `/api/v1/approvals/${waiting.steps[2].output.approval_request_id}/decision`, {
    token: tok.approver,
    body: { decision: 'approve', comment: COMMENT },
    headers: { 'Idempotency-Key': randomUUID() },
  });
  expect(decided.status, decided.text).toBe(200);
  const done = await waitFor(async () => {
    const r = (await getJson(`/api/v1/golden-path/runs/${runId}`)).json;
    return r?.status === 'completed' ? r : undefined;
  }, { timeoutMs: 60_000, what: 'the run to complete' });
  packId = done.steps[3].output.evidence_pack_id;
  packSha = done.steps[3].output.sha256;
  packRunId = runId;
});
afterAll(async () => stack?.stop());

describe('evidence pack', () => {
  it('a third party verifies the pack from GET /evidence/:id alone, with the documented recipe', async () => {
    const res = await getJson(`/api/v1/evidence/${packId}`);
    expect(res.status).toBe(200);
    const pack = JSON.parse(res.text);
    expect(pack.sha256).toBe(packSha);
    expect(sha256(jcs(pack.content))).toBe(pack.sha256);
    expect(sha256(canonicalize(pack.content))).toBe(pack.sha256);
    // The text went through unchanged: not normalised (NFC), not escaped beyond JSON's own.
    expect(pack.content.submission.partner.name).toBe(NAME);
    expect(pack.content.partner_dossier.profile.sector).toBe(SECTOR);
    expect(pack.content.approval_packet.decisions).toEqual([expect.objectContaining({ decided_by: 'approver-1', comment: COMMENT, kind: 'human' })]);
    expect(pack.content.run).toMatchObject({ tenant_id: tenant, workflow: 'golden-path@v1', submitted_by: 'submitter-\u{1F600}' });
    expect(pack.content.economics_model).toMatchObject({ revenue_upside: 3e16, gross_profit: 1.05e16 });
    expect(res.text).toContain('"revenue_upside":30000000000000000');
    expect(Number.isSafeInteger(pack.content.economics_model.gross_profit)).toBe(false);
    expect((await getJson(`/api/v1/evidence/${packId}/verify`)).json).toEqual({ valid: true, sha256: packSha, recomputed_sha256: packSha, recorded_sha256: packSha, records: RECORDS_MATCH });
  });

  it('another tenant can neither read nor verify the pack: 404, as if it did not exist', async () => {
    for (const path of [`/api/v1/evidence/${packId}`, `/api/v1/evidence/${packId}/verify`, `/api/v1/evidence/${randomUUID()}/verify`]) {
      const res = await getJson(path, tok.other);
      expect(res.status, path).toBe(404);
      expect(res.json).toMatchObject({ code: 'not_found' });
    }
  });

  // The application role may insert packs (each sealed by its trigger), never change one. A copy of this
  // pack — its content and hash — inserted under another run of the tenant (one with no pack yet) is
  // refused (42501) at its commit: that run's evidence step's checkpoint does not name it (step-rows-bound.test.ts).
  // Committed with such a checkpoint (written here by the owner: the application role forging the step
  // too), it is sealed as written and claims this run (content.run): /verify must not call it valid, else a
  // run could have a second valid pack saying what its inserter liked (the unique (tenant, run) key holds
  // one pack per run id, not per run the content names). Under a run id that is no run of the tenant — a
  // made-up one, or this very run from another tenant — the insert's trigger refuses it (23503).
  it("verify reports a copy of the pack inserted under another run of the tenant (content.run is not the pack's run)", async () => {
    const [{ content }] = (await asOwner<{ content: string }>(`select content::text as content from evidence_packs where id = $1`, [packId])) as [{ content: string }];
    const copy = randomUUID();
    const otherRun = await seedRun(stack.db, tenant);
    const insertCopy = `insert into evidence_packs (id, tenant_id, run_id, content, sha256, created_at) values ($1, $2, $3, $4::jsonb, $5, now())`;
    await expect(asApp(tenant, insertCopy, [copy, tenant, otherRun, content, packSha])).rejects.toMatchObject({ code: '42501' });
    expect((await stack.db.admin(`select count(*)::int as n from evidence_packs where id = $1`, [copy])).rows[0].n).toBe(0);
    await stepCheckpointNames(stack.db, tenant, otherRun, 'evidence-pack', { evidence_pack_id: copy, sha256: packSha });
    await asApp(tenant, `insert into evidence_packs (id, tenant_id, run_id, content, sha256, created_at) values ($1, $2, $3, $4::jsonb, $5, now())`, [copy, tenant, otherRun, content, packSha]);
    const verify = await getJson(`/api/v1/evidence/${copy}/verify`);
    expect(verify.status).toBe(200);
    // Both hashes are the pack's: the run named tells it apart, and so do the records of the run it was
    // inserted under (a seeded run whose steps wrote nothing).
    expect(verify.json).toEqual(sealedButUnrecorded(packSha));
    // The pack itself still verifies.
    expect((await getJson(`/api/v1/evidence/${packId}/verify`)).json.valid).toBe(true);
  });

  it.each([
    ['a made-up run of the same tenant', () => [tenant, randomUUID()]],
    ['this run, into another tenant', () => [newTenant(), packRunId]],
  ])('the application role cannot insert a copy of the pack under %s', async (_where, target) => {
    const [into, runId] = target() as [string, string];
    const [{ content }] = (await asOwner<{ content: string }>(`select content::text as content from evidence_packs where id = $1`, [packId])) as [{ content: string }];
    const copy = randomUUID();
    const insert = asApp(into, `insert into evidence_packs (id, tenant_id, run_id, content, sha256, created_at) values ($1, $2, $3, $4::jsonb, $5, now())`, [copy, into, runId, content, packSha]);
    await expect(insert).rejects.toMatchObject({ code: '23503' });
    expect((await stack.db.admin(`select count(*)::int as n from evidence_packs where id = $1`, [copy])).rows[0].n).toBe(0);
  });

  // Each change the owner could make to the stored content: every one must read valid: false, then the content is restored.
  const changes: Array<[string, string, string]> = [
    ['the tenant', '{run,tenant_id}', JSON.stringify(randomUUID())],
    ['the workflow version', '{run,workflow}', '"golden-path@v2"'],
    ['the submitter', '{run,submitted_by}', '"someone-else"'],
    ['the submission time', '{run,submitted_at}', '"2020-01-01T00:00:00.000Z"'],
    ['the decider', '{approval_packet,decisions,0,decided_by}', '"approver-2"'],
    ['the decision time', '{approval_packet,decisions,0,decided_at}', '"2020-01-01T00:00:00.000Z"'],
    ['the decision comment, NFC for NFD', '{approval_packet,decisions,0,comment}', JSON.stringify(COMMENT.normalize('NFC'))],
    ['the class', '{approval_packet,approval_class}', '"A"'],
    ['the policy applied', '{approval_packet,policy,policy,class_a_max_cost}', '1e12'],
    ['the policy version', '{approval_packet,policy,version}', '99'],
    ['the partner name, NFC for NFD', '{submission,partner,name}', JSON.stringify(NAME.normalize('NFC'))],
    ['a dossier fact', '{partner_dossier,facts,completeness_score}', '0.5'],
    ['the outcome', '{outcome}', '"rejected"'],
    ['a key added', '{extra}', 'true'],
    // A number changed beyond a double's precision: JSON.parse reads the same double back, but the stored value differs.
    ['the cost, by less than a double tells apart', '{economics_model,cost}', '65000.0000000000000001'],
    ['a count made an integer beyond 2^53', '{submission,economics,expected_deals_per_year}', '9007199254740993'],
    ['a count, by a fraction a double drops', '{submission,economics,expected_deals_per_year}', '1000000.0000000000000001'],
    // Doubles are 4 apart at 3e16: 30000000000000001 reads back as the upside stored.
    ['the upside, by one where doubles are 4 apart', '{economics_model,revenue_upside}', '30000000000000001'],
  ];
  it.each(changes)('verify reports %s changed in the stored content', async (_what, path, value) => {
    const original = (await asOwner<{ original: string }>(`select content::text as original from evidence_packs where id = $1`, [packId]))[0]!.original;
    try {
      const [row] = await asOwner(`update evidence_packs set content = jsonb_set(content, $2::text[], $3::jsonb, true) where id = $1 returning content::text as c`, [packId, path, value]);
      expect(row.c).not.toBe(original);
      const verify = (await getJson(`/api/v1/evidence/${packId}/verify`)).json;
      expect(verify).toMatchObject({ valid: false, sha256: packSha, recorded_sha256: packSha });
      expect(verify.recomputed_sha256).not.toBe(packSha);
    } finally {
      await asOwner(`update evidence_packs set content = $2::jsonb where id = $1`, [packId, original]);
    }
    expect((await getJson(`/api/v1/evidence/${packId}/verify`)).json.valid).toBe(true);
  });

  it("verify reports the stored hash, the pack's run or time, or its seal's hash, run or time changed, or the seal removed", async () => {
    const forged = 'f'.repeat(64);
    const cases = [
      `update evidence_packs set sha256 = '${forged}' where id = $1`,
      `update evidence_packs set created_at = created_at - interval '1 day' where id = $1`,
      `update evidence_packs set run_id = gen_random_uuid() where id = $1`,
      `update evidence_seals set sha256 = '${forged}' where id = $1`,
      `update evidence_seals set created_at = created_at + interval '1 millisecond' where id = $1`,
      `update evidence_seals set run_id = gen_random_uuid() where id = $1`,
      `delete from evidence_seals where id = $1`,
    ];
    const [pack] = await asOwner<{ r: string }>(`select row_to_json(t)::text as r from evidence_packs t where id = $1`, [packId]);
    const [seal] = await asOwner<{ r: string }>(`select row_to_json(t)::text as r from evidence_seals t where id = $1`, [packId]);
    for (const sql of cases) {
      try {
        await asOwner(sql, [packId]);
        const res = await getJson(`/api/v1/evidence/${packId}/verify`);
        expect(res.json.valid, sql).toBe(false);
      } finally {
        // Both rows back as they were: the pack by update (an insert would fire its seal trigger), the seal re-inserted.
        await asOwner(`update evidence_packs t set (run_id, sha256, created_at) = (select r.run_id, r.sha256, r.created_at from json_populate_record(null::evidence_packs, $2::json) r) where id = $1`, [packId, pack!.r]);
        await asOwner(`delete from evidence_seals where id = $1`, [packId]);
        await asOwner(`insert into evidence_seals select * from json_populate_record(null::evidence_seals, $1::json)`, [seal!.r]);
      }
      expect((await getJson(`/api/v1/evidence/${packId}/verify`)).json, `restored after: ${sql}`).toEqual({ valid: true, sha256: packSha, recomputed_sha256: packSha, recorded_sha256: packSha, records: RECORDS_MATCH });
    }
  });
});
