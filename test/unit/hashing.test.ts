import { createHash, randomBytes } from 'node:crypto';
import express from 'express';
import { describe, expect, it } from 'vitest';
import { weakETag } from '../../src/platform/http/etag.ts';
import { sha256Hex } from '../../src/platform/idempotency/canonical-json.ts';

// The one-shot hashes that replaced Hash objects on the POST path (docs/performance-history.md, session 23)
// must give exactly what the code they replaced gave.
const bodies: Array<string | Buffer> = [
  '',
  Buffer.alloc(0),
  '{"run_id":"0b7c3c1e-8f0e-4c1a-9a55-0d6f1e2f3a4b","status":"pending"}',
  'Grüße, 世界 — 🙂 and a lone \ud800 surrogate',
  'x'.repeat(70_000),
  randomBytes(1024),
];

describe('one-shot hashes', () => {
  it("weakETag writes Express's default (weak) ETag byte for byte", () => {
    const expressDefault = express().get('etag fn') as (body: string | Buffer, encoding?: BufferEncoding) => string;
    for (const body of bodies) {
      expect(weakETag(body, 'utf8')).toBe(expressDefault(body, 'utf8'));
      if (typeof body === 'string') expect(weakETag(body, 'latin1')).toBe(expressDefault(body, 'latin1'));
    }
    // A different body, a different tag.
    expect(weakETag('a', 'utf8')).not.toBe(weakETag('b', 'utf8'));
  });

  it('sha256Hex is the SHA-256 of its input in lower-case hex', () => {
    for (const body of bodies) expect(sha256Hex(body)).toBe(createHash('sha256').update(body).digest('hex'));
  });
});
