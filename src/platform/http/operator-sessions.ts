import { createHash, randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';

/** What a session id looks like: 32 random bytes, base64url (256 bits, no padding). */
export const SESSION_ID = /^[A-Za-z0-9_-]{43}$/;

/**
 * A `?token=` exchange, in one step: refused if the token was signed out meanwhile, or if its link was
 * exchanged before (SET NX: of two sign-ins at once, one wins); else records the exchange (its value:
 * the session's key suffix, so a later sign-out of the token finds the session), ends the session the
 * browser had before (its cookies are replaced: no sign-out could reach those sessions any more) and opens the new one.
 * KEYS: revoked, exchanged, session, then the previous sessions (none, one, or several: a browser may
 * send several cookies of the name); ARGV: session key suffix, exchange TTL, session TTL, token.
 */
const EXCHANGE = `if redis.call('EXISTS', KEYS[1]) == 1 then return 'revoked' end
if not redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2], 'NX') then return 'used' end
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[3])
return 'ok'`;

/**
 * Revokes a token and ends the session its link started, if any, in one step: an exchange of the
 * same token is either before it (its session is ended here) or after it (refused as revoked).
 * KEYS: revoked, exchanged; ARGV: TTL, the sessions' key prefix (the session's key is known only from
 * the exchange record, so the script names it undeclared: fine on one Redis server, and on Redis Cluster
 * only because every key here shares QUEUE_PREFIX, whose hash tag docs/architecture.md requires there).
 */
const REVOKE = `redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
local session = redis.call('GET', KEYS[2])
if session then redis.call('DEL', ARGV[2] .. session) end
return 1`;

type SessionRedis = Redis & {
  dealixOperatorExchange(numberOfKeys: number, ...keysThenArgs: Array<string | number>): Promise<'revoked' | 'used' | 'ok'>;
  dealixOperatorRevoke(revoked: string, exchanged: string, ttl: number, sessionPrefix: string): Promise<number>;
};

/**
 * The dashboard's server-side record of operator tokens, in Redis so that every API process shares it:
 * tokens signed out (revoked), tokens whose `?token=` link was exchanged, and the browser sessions those
 * exchanges started (ADR 0017). A JWT cannot be recalled once issued; these lists refuse one at the
 * dashboard before its `exp`.
 *
 * Each revocation and exchange expires when its token would stop verifying anyway (`exp`, plus the
 * verifier's clock tolerance, which still accepts a token that far past its `exp`), so nothing
 * accumulates; a session lasts the token's remaining life, at most what its caller gives. Only tokens
 * that verified are ever written: an unverified text must not let a client choose what Redis keeps.
 * A Redis error is thrown to the caller (the dashboard answers 503): the check is never skipped.
 */
export class OperatorSessions {
  private readonly redis: SessionRedis;
  private readonly keyPrefix: string;
  private readonly graceSeconds: number;
  /** `graceSeconds`: the verifier's clock tolerance (JWT_CLOCK_TOLERANCE), for which a token outlives its `exp`. */
  constructor(redis: Redis, keyPrefix: string, graceSeconds: number) {
    if (!('dealixOperatorExchange' in redis)) redis.defineCommand('dealixOperatorExchange', { lua: EXCHANGE });
    if (!('dealixOperatorRevoke' in redis)) redis.defineCommand('dealixOperatorRevoke', { numberOfKeys: 2, lua: REVOKE });
    this.redis = redis as SessionRedis;
    this.keyPrefix = keyPrefix;
    this.graceSeconds = Math.max(0, Math.ceil(graceSeconds));
  }

  /**
   * Refuses `token` from now until it expires (keyed by its `jti` when it has one: every copy of it),
   * and ends the session its `?token=` link started, if any: signing out a leaked link's token ends
   * the session of whoever exchanged it.
   */
  async revoke(token: string): Promise<void> {
    await this.redis.dealixOperatorRevoke(this.revokedKey(token), this.exchangedKey(token), this.ttl(token), `${this.keyPrefix}:sid:`);
  }

  /**
   * Why a token presented as itself (a bearer header, a `?token=` link) is refused, if it is: signed
   * out, or exchanged by a link (its only use then: a link is read from histories and logs). One MGET.
   */
  async refusal(token: string): Promise<'revoked' | 'exchanged' | undefined> {
    const [revoked, exchanged] = await this.redis.mget(this.revokedKey(token), this.exchangedKey(token));
    return revoked !== null ? 'revoked' : exchanged !== null ? 'exchanged' : undefined;
  }

  /**
   * Exchanges a `?token=` link's token (verified) for a session lasting `seconds`: the new session's id,
   * for the cookie; or why not — `revoked` (signed out), `used` (exchanged before: a link works once,
   * until the token expires). One script: the exchange and the session are written together or not at all,
   * and the sessions `previous` (the ids the browser's cookies held, if any) end with it: the browser keeps
   * one session, the one its sign-out ends. Ending it takes only its id, which is the session's credential.
   * Redis keeps the token under the id's hash, never the id: reading Redis (a dump, MONITOR, a replica)
   * yields no cookie to present, and the token it yields is refused, being exchanged.
   */
  async exchange(token: string, seconds: number, previous: readonly string[] = []): Promise<{ id: string } | 'revoked' | 'used'> {
    const id = randomBytes(32).toString('base64url');
    const keys = [this.revokedKey(token), this.exchangedKey(token), this.sessionKey(id), ...previous.map((p) => this.sessionKey(p))];
    const answer = await this.redis.dealixOperatorExchange(keys.length, ...keys, digest(id), this.ttl(token), Math.max(1, Math.floor(seconds)), token);
    return answer === 'ok' ? { id } : answer;
  }

  /** The token the session `id` was opened with; undefined for an id never issued, ended or expired. One GET. */
  async tokenOf(id: string): Promise<string | undefined> {
    return (await this.redis.get(this.sessionKey(id))) ?? undefined;
  }

  /** `tokenOf` for each of `ids` (a request may carry several cookies of the session's name), in one MGET. */
  async tokensOf(ids: readonly string[]): Promise<Array<string | undefined>> {
    return (await this.redis.mget(ids.map((id) => this.sessionKey(id)))).map((token) => token ?? undefined);
  }

  /** Ends the session `id` on every API process: the token it held, if it was open. */
  async close(id: string): Promise<string | undefined> {
    return (await this.redis.getdel(this.sessionKey(id))) ?? undefined;
  }

  private sessionKey(id: string): string {
    return `${this.keyPrefix}:sid:${digest(id)}`;
  }

  private exchangedKey(token: string): string {
    return `${this.keyPrefix}:exchanged:${digest(signedPart(token))}`;
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
