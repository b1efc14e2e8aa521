import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { parseConfig } from '../../src/platform/config/config.ts';
import { createTokenVerifier, signDevToken } from '../../src/platform/tenancy/jwt.ts';
import { RevocationSet, TokenRevokedError } from '../../src/platform/tenancy/token-revocations.ts';
import { TEST_JWT_SECRET } from '../helpers/env.ts';

/** The revocation rules (ADR 0018) and the verifier's memo (ADR 0006) under them. */

const config = parseConfig({ JWT_SECRET: TEST_JWT_SECRET });
const T = randomUUID();
const U = randomUUID();

describe('RevocationSet', () => {
  it('a jti is revoked for its tenant only', () => {
    const set = new RevocationSet();
    set.add({ tenantId: T, jti: 'j1', expiresAtMs: null });
    expect(set.refuses({ tenantId: T, sub: 'a', jti: 'j1', iat: 100 })).toBe(true);
    expect(set.refuses({ tenantId: T.toUpperCase(), sub: 'a', jti: 'j1', iat: 100 })).toBe(true);
    expect(set.refuses({ tenantId: U, sub: 'a', jti: 'j1', iat: 100 })).toBe(false);
    expect(set.refuses({ tenantId: T, sub: 'a', jti: 'j2', iat: 100 })).toBe(false);
    expect(set.refuses({ tenantId: T, sub: 'a', iat: 100 })).toBe(false);
  });

  it('a not-before refuses tokens issued strictly before it; a token without iat counts as issued at the beginning of time', () => {
    const set = new RevocationSet();
    set.add({ tenantId: T, subject: null, notBefore: 1000 });
    expect(set.refuses({ tenantId: T, sub: 'a', iat: 999 })).toBe(true);
    expect(set.refuses({ tenantId: T, sub: 'a' })).toBe(true);
    expect(set.refuses({ tenantId: T, sub: 'a', iat: 1000 })).toBe(false);
    expect(set.refuses({ tenantId: U, sub: 'a', iat: 1 })).toBe(false);
  });

  it('a not-before in milliseconds refuses every token whose iat (whole seconds) is in its second: one issued just before it cannot be told from one just after', () => {
    const set = new RevocationSet();
    set.add({ tenantId: T, subject: null, notBefore: 1000.25 });
    expect(set.refuses({ tenantId: T, sub: 'a', iat: 1000 })).toBe(true);
    expect(set.refuses({ tenantId: T, sub: 'a', iat: 1001 })).toBe(false);
  });

  it("a subject's not-before applies to that subject alone; the later of two not-befores holds", () => {
    const set = new RevocationSet();
    set.add({ tenantId: T, subject: 'leaver', notBefore: 2000 });
    set.add({ tenantId: T, subject: 'leaver', notBefore: 1000 });
    expect(set.refuses({ tenantId: T, sub: 'leaver', iat: 1500 })).toBe(true);
    expect(set.refuses({ tenantId: T, sub: 'stayer', iat: 1500 })).toBe(false);
  });
});

describe('the verifier with a revocation list', () => {
  it('refuses a token it remembers (ADR 0006) once it is revoked: the memo never skips the check', async () => {
    const set = new RevocationSet();
    const verifier = createTokenVerifier(config, undefined, undefined, set);
    const token = await signDevToken(config, { tenantId: T, sub: 'a' });
    await expect(verifier.verify(token)).resolves.toMatchObject({ sub: 'a', tenantId: T });
    const jti = (JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { jti: string }).jti;
    set.add({ tenantId: T, jti, expiresAtMs: null });
    const refused = await verifier.verify(token).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(TokenRevokedError);
    expect(refused).toMatchObject({ status: 401, code: 'token_revoked' });
  });
});
