import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';

/**
 * The dashboard's server-side record of operator tokens, in Redis so that every API process shares it:
 * tokens signed out (revoked) and `?token=` links already exchanged for a cookie. A JWT cannot be
 * recalled once issued; these lists refuse one at the dashboard before its `exp`.
 *
 * Each entry expires when its token would stop verifying anyway (`exp`, plus the verifier's clock
 * tolerance, which still accepts a token that far past its `exp`), so nothing accumulates. Only tokens
 * that verified are ever written: an unverified text must not let a client choose what Redis keeps.
 * A Redis error is thrown to the caller (the dashboard answers 503): the check is never skipped.
 */
export class OperatorSessions {
  private readonly redis: Redis;
  private readonly keyPrefix: string;
  private readonly graceSeconds: number;
  /** `graceSeconds`: the verifier's clock tolerance (JWT_CLOCK_TOLERANCE), for which a token outlives its `exp`. */
  constructor(redis: Redis, keyPrefix: string, graceSeconds: number) {
    this.redis = redis;
    this.keyPrefix = keyPrefix;
    this.graceSeconds = Math.max(0, Math.ceil(graceSeconds));
  }

  /** Refuses `token` from now until it expires (keyed by its `jti` when it has one: every copy of it). */
  async revoke(token: string): Promise<void> {
    await this.redis.set(this.revokedKey(token), '1', 'EX', this.ttl(token));
  }

  async isRevoked(token: string): Promise<boolean> {
    return (await this.redis.exists(this.revokedKey(token))) === 1;
  }

  /**
   * Records that a `?token=` link was exchanged for a cookie: true the first time, false ever after
   * (until the token expires). One SET NX: two visits at once cannot both be first.
   */
  async claimExchange(token: string): Promise<boolean> {
    return (await this.redis.set(`${this.keyPrefix}:exchanged:${digest(signedPart(token))}`, '1', 'EX', this.ttl(token), 'NX')) === 'OK';
  }

  private revokedKey(token: string): string {
    const { jti } = claimsOf(token);
    return `${this.keyPrefix}:revoked:${jti ? `jti:${digest(jti)}` : `token:${digest(signedPart(token))}`}`;
  }

  /**
   * How long the entry must last: until the token stops verifying, by this process's clock (the one
   * the verifier reads), so a duration, not a Unix time Redis would read by its own clock. At least a
   * second (EX must be > 0), and whole seconds (EX refuses any other; a NumericDate `exp` may have a fraction).
   */
  private ttl(token: string): number {
    const now = Math.floor(Date.now() / 1000);
    return Math.max(1, Math.ceil(claimsOf(token).exp ?? now) + this.graceSeconds + 1 - now);
  }
}

const digest = (text: string) => createHash('sha256').update(text).digest('base64url');

/**
 * What identifies a token that verified: its header and claims as sent (`header.payload`), which the
 * signature covers, so no one without the key can change them. Not the whole text: its signature has
 * many spellings that verify alike (jose decodes it with `=` padding, the `+/` alphabet, whitespace
 * or other spare low bits in its last character; and an ECDSA signature (r, s) verifies as (r, n − s)),
 * any of which would be a fresh key for a revoked token or a used link.
 */
const signedPart = (jwt: string) => jwt.slice(0, jwt.lastIndexOf('.'));

/**
 * The token's `exp` and `jti`, read without verifying: call it only for a token that verified (the
 * text is the same, so are its claims).
 */
export function claimsOf(jwt: string): { exp?: number; jti?: string } {
  try {
    const payload = JSON.parse(Buffer.from(jwt.split('.')[1] ?? '', 'base64url').toString('utf8')) as { exp?: unknown; jti?: unknown };
    return {
      ...(typeof payload.exp === 'number' ? { exp: payload.exp } : {}),
      ...(typeof payload.jti === 'string' && payload.jti !== '' ? { jti: payload.jti } : {}),
    };
  } catch {
    return {};
  }
}
