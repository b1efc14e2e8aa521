/**
 * `/verify` on genuine packs whose stored jsonb is not the text they were written as: jsonb keeps numbers
 * as exact decimals (1e21 as 22 digits, 5e-324 as 324 decimals), sorts and orders keys its own way, and
 * stores escaped text as characters; the pack's time has microseconds when PostgreSQL sets it. `/verify`
 * compares the stored content with the canonical JSON it hashes (jsonb equality, in PostgreSQL) and
 * matches the seal on the pack's created_at there too: a pack written as the evidence step writes it, or
 * by SQL under another time zone, must still read as intact (hash recomputed, seal found) whatever its
 * numbers and text. (Their content is made up: no records of their runs' steps agree with it, so they
 * read `valid: false` for that alone — `records`, evidence-records.test.ts.)
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { seedRun } from '../helpers/db.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { insertRow } from '../../src/platform/db/insert-row.ts';
import { EvidencePackRow } from '../../src/modules/evidence/evidence-pack.entity.ts';
import { evidenceHash, verifyEvidence } from '../../src/modules/evidence/evidence.service.ts';
import { sealedButUnrecorded, stepCheckpointNames } from '../helpers/evidence.ts';

let stack: TestStack;
beforeAll(async () => {
  stack = await startStack({ api: false });
});
afterAll(async () => stack?.stop());


const CONTENTS: Record<string, unknown> = {
  'numbers jsonb writes out in full or by value': {
    a: 1e21, b: 1e-7, c: 5e-324, d: Number.MAX_VALUE, e: -0, f: 0.1 + 0.2, g: 2 ** 53 + 2, h: 1.2345678901234568e20,
    i: 1e16, j: -1e-300, k: 123.456e-10, l: 1e300, m: 65000, n: 1e6 * 1e11 * 0.3, o: 1.5, p: -2.5e-7,
  },
  'text JSON escapes or jsonb stores as characters': {
    a: '\u2028\u2029', b: '\u0001\u007f\u001f\t\n\b\f\r', c: '\u{1F600}', d: "'", e: '\\', f: '?', g: '$1', h: ':name ?? ? \\?', i: "E'x'\\'",
    j: 'x'.repeat(100_000), k: '\uFEFF', l: '\uFFFF', m: 'e\u0301', n: '\u00e9', o: '</script>', p: '"',
  },
  'keys jsonb orders by length': JSON.parse('{"bb": 1, "": 2, "\u{1F600}": 3, "\u00e9": 4, "e\u0301": 5, "__proto__": {"x": 1}, "?": 6, "\\u0001": 7, "aaa": 8, "a": 9, "\uFB33": 10}'),
  'nesting and empty values': { a: [[[]], {}, [{}], null, true, false, [1, [2, [3]]], ''] },
};

describe('/verify on genuine packs', () => {
  it.each(Object.entries(CONTENTS))('%s: hash and seal intact, written by the evidence step or by SQL with created_at = clock_timestamp() in another time zone', async (_what, values) => {
    const tenant = newTenant();
    const orm = stack.container.orm;
    // Each pack names its own run and tenant, as the evidence step's do (/verify requires it).
    const packOf = (runId: string) => ({ ...(values as object), run: { id: runId, tenant_id: tenant } });
    const written = { id: randomUUID(), tenantId: tenant, runId: await seedRun(stack.db, tenant), createdAt: new Date() };
    const content = packOf(written.runId);
    // Each run's evidence step's checkpoint names its pack: a pack commits only with it (step-rows-bound.test.ts).
    await stepCheckpointNames(stack.db, tenant, written.runId, 'evidence-pack', { evidence_pack_id: written.id, sha256: evidenceHash(content) });
    await tenantEm(orm, tenant).transactional((tx) => insertRow(tx, EvidencePackRow, { ...written, content: content as never, sha256: evidenceHash(content) }));
    const bySql = { id: randomUUID(), content: packOf(await seedRun(stack.db, tenant)) };
    await stepCheckpointNames(stack.db, tenant, bySql.content.run.id, 'evidence-pack', { evidence_pack_id: bySql.id, sha256: evidenceHash(bySql.content) });
    await tenantEm(orm, tenant).transactional(async (tx) => {
      await tx.execute(`select set_config('TimeZone', 'Pacific/Chatham', true)`);
      await tx.execute(`insert into evidence_packs (id, tenant_id, run_id, content, sha256, created_at) values (?, ?, ?, ?::jsonb, ?, clock_timestamp())`, [bySql.id, tenant, bySql.content.run.id, JSON.stringify(bySql.content), evidenceHash(bySql.content)], 'run');
    });
    for (const [id, c] of [[written.id, content], [bySql.id, bySql.content]] as const) {
      const sha256 = evidenceHash(c);
      const verified = await tenantEm(orm, tenant).transactional((tx) => verifyEvidence(tx, id));
      expect(verified, id === bySql.id ? 'written by SQL' : 'written by insertRow').toEqual(sealedButUnrecorded(sha256));
    }
  });
});
