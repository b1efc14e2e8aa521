import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { sha256Hex } from '../../src/platform/idempotency/canonical-json.ts';

// The one-shot hashes that replaced Hash objects on the POST path (docs/performance.md, session 23)
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
  it('sha256Hex is the SHA-256 of its input in lower-case hex', () => {
    for (const body of bodies) expect(sha256Hex(body)).toBe(createHash('sha256').update(body).digest('hex'));
  });
});
