import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import pg from 'pg';
import { newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { rawGet } from '../helpers/raw-http.ts';

/**
 * What the API does with a request's bytes and what its answers carry, at the HTTP level against the
 * real stack (no worker: a run accepted stays pending). A JSON body sent as UTF-8 whose bytes are not
 * UTF-8 is refused before anything is stored (docs/api.md, Conventions), not read with U+FFFD in
 * their place; and an ETag is a read's (its 200 and 304), never a write's or a problem's.
 */

const RUN = '/api/v1/golden-path/run';
const PROBLEM = /^application\/problem\+json/;

let stack: TestStack;
let db: pg.Client;

beforeAll(async () => {
  stack = await startStack();
  // Superuser connection for counting what a request left behind (observation only).
  db = new pg.Client({ connectionString: stack.db.adminUrl });
  await db.connect();
});
afterAll(async () => {
  await db?.end();
  await stack?.stop();
});

async function stored(tenant: string): Promise<{ runs: number; keys: number }> {
  const { rows } = await db.query(
    `select (select count(*)::int from durable_runs where tenant_id = $1) as runs, (select count(*)::int from idempotency_keys where tenant_id = $1) as keys`,
    [tenant],
  );
  return rows[0] as { runs: number; keys: number };
}

/** A golden-path submission whose partner name is `Ac<bytes>me`, the bytes spliced in raw. */
function submissionWithName(bytes: Buffer): Buffer {
  const [before, after] = JSON.stringify({ ...SAMPLE_SUBMISSION, partner: { ...SAMPLE_SUBMISSION.partner, name: 'Ac@@me' } }).split('@@') as [string, string];
  return Buffer.concat([Buffer.from(before), bytes, Buffer.from(after)]);
}

/** POSTs `body` as its bytes (fetch sends a Uint8Array unchanged). */
async function post(token: string, path: string, body: Buffer | string, headers: Record<string, string> = {}) {
  const res = await fetch(`${stack.baseUrl}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': randomUUID(), ...headers },
    body: typeof body === 'string' ? body : new Uint8Array(body),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, json: text ? JSON.parse(text) : undefined };
}

async function actor(roles: string[] = []) {
  const tenant = newTenant();
  return { tenant, token: await stack.token({ tenantId: tenant, sub: `user-${randomUUID().slice(0, 8)}`, roles }) };
}

describe('a JSON body sent as UTF-8 whose bytes are not UTF-8', () => {
  it.each([
    ['0xFF 0xFE', [0xff, 0xfe]],
    ['a lone 0xFF', [0xff]],
    ['a lone continuation byte', [0x80]],
    ['a truncated multi-byte sequence (the first two of €)', [0xe2, 0x82]],
    ['an overlong encoding of "/"', [0xc0, 0xaf]],
    ['an encoded UTF-16 surrogate', [0xed, 0xa0, 0x80]],
  ])('is 400 malformed_json, and nothing is stored (%s)', async (_what, bytes) => {
    const who = await actor();
    for (const contentType of ['application/json', 'application/json; charset=UTF-8']) {
      const res = await post(who.token, RUN, submissionWithName(Buffer.from(bytes)), { 'content-type': contentType });
      expect(res.status, `${contentType}: ${res.text}`).toBe(400);
      expect(res.headers.get('content-type')).toMatch(PROBLEM);
      expect(res.json).toMatchObject({ status: 400, code: 'malformed_json', detail: expect.stringContaining('UTF-8') });
    }
    expect(await stored(who.tenant)).toEqual({ runs: 0, keys: 0 });
  });

  it('is refused under one Idempotency-Key whatever its bad bytes: no 202 stored, so no replay of another body', async () => {
    const who = await actor();
    const key = randomUUID();
    for (const bytes of [[0xff, 0xfe], [0x80, 0x81]]) {
      const res = await post(who.token, RUN, submissionWithName(Buffer.from(bytes)), { 'idempotency-key': key });
      expect(res.status, res.text).toBe(400);
      expect(res.headers.get('idempotent-replayed')).toBeNull();
      expect(res.json.code).toBe('malformed_json');
    }
    expect(await stored(who.tenant)).toEqual({ runs: 0, keys: 0 });
  });

  it('is checked once decompressed: gzip of bad bytes is 400, gzip of valid UTF-8 (whose compressed bytes are not UTF-8) is accepted with its text intact', async () => {
    const who = await actor();
    const bad = await post(who.token, RUN, gzipSync(submissionWithName(Buffer.from([0xff, 0xfe]))), { 'content-encoding': 'gzip' });
    expect(bad.status, bad.text).toBe(400);
    expect(bad.json.code).toBe('malformed_json');
    expect(await stored(who.tenant)).toEqual({ runs: 0, keys: 0 });
    const good = await post(who.token, RUN, gzipSync(submissionWithName(Buffer.from('é€😀'))), { 'content-encoding': 'gzip' });
    expect(good.status, good.text).toBe(202);
    const { rows } = await db.query(`select input->'partner'->>'name' as name from durable_runs where tenant_id = $1`, [who.tenant]);
    expect(rows).toEqual([{ name: 'Acé€😀me' }]);
  });

  it('a body sent in another charset the API decodes (utf-16) is not held to UTF-8', async () => {
    const who = await actor();
    const json = JSON.stringify({ ...SAMPLE_SUBMISSION, partner: { ...SAMPLE_SUBMISSION.partner, name: 'Acmé' } });
    // With its byte order mark (FF FE: not UTF-8), as UTF-16 is sent.
    const res = await post(who.token, RUN, Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(json, 'utf16le')]), { 'content-type': 'application/json; charset=utf-16' });
    expect(res.status, res.text).toBe(202);
    expect(await stored(who.tenant)).toEqual({ runs: 1, keys: 1 });
  });
});
describe('ETag: on a read, never on a write', () => {
  it("a submission's 202, its replay and a write's problems carry none; the run's read carries one, which answers 304; a read's problem carries none", async () => {
    const who = await actor();
    const key = randomUUID();
    const body = JSON.stringify(SAMPLE_SUBMISSION);
    const accepted = await post(who.token, RUN, body, { 'idempotency-key': key });
    expect(accepted.status, accepted.text).toBe(202);
    const replayed = await post(who.token, RUN, body, { 'idempotency-key': key });
    expect(replayed.headers.get('idempotent-replayed')).toBe('true');
    const reused = await post(who.token, RUN, JSON.stringify({ ...SAMPLE_SUBMISSION, currency: 'USD' }), { 'idempotency-key': key });
    expect(reused.json.code).toBe('idempotency_key_reused');
    const invalid = await post(who.token, RUN, '{}');
    expect(invalid.status).toBe(422);
    const malformed = await post(who.token, RUN, '{');
    expect(malformed.status).toBe(400);
    const etags = Object.fromEntries(Object.entries({ accepted, replayed, reused, invalid, malformed }).map(([what, res]) => [what, res.headers.get('etag')]));
    expect(etags).toEqual({ accepted: null, replayed: null, reused: null, invalid: null, malformed: null });

    const auth = { authorization: `Bearer ${who.token}` };
    const read = await rawGet(`${stack.baseUrl}/api/v1/golden-path/runs/${accepted.json.run_id}`, auth);
    expect(read.status).toBe(200);
    const etag = read.headers.get('etag');
    expect(etag).toMatch(/^W\/"/);
    const again = await rawGet(`${stack.baseUrl}/api/v1/golden-path/runs/${accepted.json.run_id}`, { ...auth, 'if-none-match': etag! });
    expect({ status: again.status, etag: again.headers.get('etag'), text: again.text }).toEqual({ status: 304, etag, text: '' });
    const missing = await rawGet(`${stack.baseUrl}/api/v1/golden-path/runs/${randomUUID()}`, auth);
    expect(missing.status).toBe(404);
    expect(missing.headers.get('etag')).toBeNull();
  });
});
