import { randomUUID } from 'node:crypto';
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  customFetch,
  errors,
  jwksCache,
  jwtVerify,
  SignJWT,
  UnsecuredJWT,
  type ExportedJWKSCache,
  type JWKSCacheInput,
  type JWTClaimVerificationOptions,
  type JWTVerifyGetKey,
  type JSONWebKeySet,
} from 'jose';
import { z } from 'zod';
import type { Config } from '../config/config.ts';
import { ServiceUnavailableError, UnauthorizedError } from '../errors/app-error.ts';
import { isUnstorableText } from '../http/json-text.ts';
import { tenantIdSchema } from './tenant-id.ts';
import { TokenRevokedError, type RevocableClaims } from './token-revocations.ts';
import { untraced } from '../telemetry/trace-context.ts';

/**
 * Text a claim may hold: no control characters (C0, DEL, C1) and no unpaired UTF-16 surrogate. The
 * subject and roles reach logs and PostgreSQL (a run's principal, a decision's approver), whose text
 * cannot hold a NUL or a lone surrogate: such a token is refused here (401), not as a 500 later.
 */
const claimText = (min: number, max: number) =>
  z
    .string()
    .min(min)
    .max(max)
    .refine((v) => !/[\u0000-\u001f\u007f-\u009f]/.test(v) && !isUnstorableText(v), 'holds a control character or an unpaired surrogate');

/**
 * The claims the platform uses; everything else in a token is ignored. `sub` and `tenant_id` are taken
 * as sent, never trimmed: a subject with leading or trailing whitespace (all whitespace included) is
 * refused, as a tenant_id with any is not a UUID, so `" alice"` cannot pass for `alice` in the
 * four-eyes check (subjects are compared exactly, case included).
 */
export const principalClaims = z.object({
  sub: claimText(1, 255).refine((v) => v.trim() === v, 'is blank or has leading or trailing whitespace'),
  tenant_id: tenantIdSchema,
  roles: z.array(claimText(0, 64)).max(50).default([]),
});

export interface Principal {
  sub: string;
  tenantId: string;
  roles: readonly string[];
}

export interface TokenVerifier {
  verify(token: string): Promise<Principal>;
}

const VERIFIED_TOKEN_MAX = 10_000;

/** Where the verifier tells that it is using keys past JWT_JWKS_CACHE_MAX_AGE (a pino logger fits). */
export interface KeysLog {
  warn(obj: object, msg: string): void;
}

/**
 * Verifies bearer tokens with `jose`: HS256 against JWT_SECRET in development, RS256/ES256 against
 * JWT_JWKS_URL in production; the algorithm allow-list, issuer, audience, exp and nbf are enforced.
 *
 * A client sends the same token with every request until it expires, and a signature check is about
 * 0.2 ms of CPU per request here (docs/performance-history.md): a token that verified is remembered, by its
 * spelling, until its exp or for JWT_VERIFIED_TOKEN_TTL (60 s at most), whichever comes first (at
 * most 10,000 tokens, the oldest forgotten first). Only successes are remembered; any other text is
 * verified. A token has one spelling (canonicalSpelling): else one user could cycle look-alikes of
 * a token to cost a signature check each and push other tenants' tokens out of the memo.
 *
 * `revocations` (ADR 0018): checked on every call, a remembered token included, against the claims kept
 * with it (tenant, sub, jti, iat): a revoked token is refused (401 token_revoked) however it was verified.
 */
export function createTokenVerifier(
  config: Config,
  jwks?: JSONWebKeySet,
  log?: KeysLog,
  revocations?: { refuses(c: RevocableClaims): boolean },
): TokenVerifier {
  const verified = new Map<string, { principal: Principal; claims: RevocableClaims; untilMs: number }>();
  const checked = (principal: Principal, claims: RevocableClaims): Principal => {
    if (revocations?.refuses(claims)) throw new TokenRevokedError();
    return principal;
  };
  const algorithms = [...config.JWT_ALGORITHMS];
  const maxTokenAge = Math.ceil(config.JWT_MAX_TOKEN_LIFETIME / 1000);
  let key: Uint8Array | JWTVerifyGetKey;
  if (jwks) key = createLocalJWKSet(jwks);
  else if (config.JWT_JWKS_URL) key = keysFromIdentityProvider(new URL(config.JWT_JWKS_URL), config, log);
  else if (config.JWT_SECRET) key = new TextEncoder().encode(config.JWT_SECRET);
  else throw new Error('no JWT key configured');
  const options = {
    algorithms,
    issuer: config.JWT_ISSUER,
    audience: config.JWT_AUDIENCE,
    clockTolerance: Math.round(config.JWT_CLOCK_TOLERANCE / 1000),
    requiredClaims: ['exp', 'sub'],
    // JWT_MAX_TOKEN_LIFETIME (ADR 0018): iat required, and no older than this (plus the tolerance).
    ...(maxTokenAge > 0 ? { maxTokenAge } : {}),
  };
  return {
    async verify(token: string): Promise<Principal> {
      // The exact text first: a remembered token was remembered in its one spelling.
      const spelling = verified.has(token) ? token : canonicalSpelling(token);
      const known = verified.get(spelling);
      if (known) {
        if (Date.now() < known.untilMs) return checked(known.principal, known.claims);
        verified.delete(spelling);
      }
      let payload: unknown;
      try {
        payload = (typeof key === 'function' ? await jwtVerify(token, key, options) : await jwtVerify(token, key, options)).payload;
      } catch (e) {
        // Keys unavailable: a token its claims refuse whatever its signature (expired, another audience…) is still 401.
        if (e instanceof KeysUnavailableError) throw refusedUnsigned(token, options) ?? e;
        throw new UnauthorizedError(describeJoseError(e), e);
      }
      const claims = principalClaims.safeParse(payload);
      if (!claims.success) throw lacksClaim(claims.error);
      const principal: Principal = Object.freeze({ sub: claims.data.sub, tenantId: claims.data.tenant_id.toLowerCase(), roles: Object.freeze([...claims.data.roles]) });
      const { exp, jti, iat } = payload as { exp: number; jti?: unknown; iat?: unknown };
      const revocable: RevocableClaims = {
        tenantId: principal.tenantId,
        sub: principal.sub,
        ...(typeof jti === 'string' && jti !== '' ? { jti } : {}),
        ...(typeof iat === 'number' ? { iat } : {}),
      };
      if (verified.size >= VERIFIED_TOKEN_MAX) verified.delete(verified.keys().next().value!);
      // Never past the token's age limit either: a not-before revocation pruned after it must not find it still remembered.
      const ageLimitMs = maxTokenAge > 0 && typeof iat === 'number' ? (iat + maxTokenAge + options.clockTolerance) * 1000 : Number.POSITIVE_INFINITY;
      verified.set(spelling, { principal, claims: revocable, untilMs: Math.min(exp * 1000, ageLimitMs, Date.now() + config.JWT_VERIFIED_TOKEN_TTL) });
      return checked(principal, revocable);
    },
  };
}

/**
 * The identity provider's keys could not be fetched (JWT_JWKS_URL down, answering other than 200, no
 * key set, too slow) while no usable copy is held (none yet, or one past JWT_JWKS_CACHE_MAX_AGE and
 * JWT_JWKS_MAX_STALE after it): the token was not checked at all, so it is the API's
 * trouble, not the client's. 503 with Retry-After (retryable, same Idempotency-Key), never a 401 that
 * tells every client its token is bad. Never remembered: the next request fetches the keys again.
 */
export class KeysUnavailableError extends ServiceUnavailableError {
  constructor(cause: unknown) {
    super("The identity provider's signing keys (JWT_JWKS_URL) could not be fetched, so the token could not be checked. Retry after the indicated delay.", cause, 5);
  }
}

/** jose's cooldown: a token naming a kid the keys lack refetches them at most this often. */
const KID_COOLDOWN_MS = 30_000;

/** A refetch not tried: the last one failed under KID_COOLDOWN_MS ago (the keys held are used meanwhile). */
class RefetchPutOff extends Error {}

/**
 * The remote key set (jose's createRemoteJWKSet), with its fetch failures told apart from the token's
 * faults, and used past JWT_JWKS_CACHE_MAX_AGE while it cannot be fetched again. jose's remote set
 * throws, besides a token's own faults (a `kid` the set lacks, several keys matching), what fetching
 * the set threw: a timeout, a network error (not a JOSEError), a generic JOSEError (a status other
 * than 200, a body that is not JSON) or an invalid set (its members).
 *
 * The age of the keys is judged here, not by jose (which would make every token wait for the refetch
 * once they are past it, and refuse them all when it fails): jose keeps the set it last fetched, and
 * when (its jwksCache option), with no expiry of its own.
 * - Keys within JWT_JWKS_CACHE_MAX_AGE: used.
 * - Past it by up to JWT_JWKS_MAX_STALE: fetched again. While the last fetch answered, the tokens wait
 *   for the refetch (one, shared), so a key removed from the JWKS is refused within the age, traffic
 *   or not. One that fails is warned about and the keys held are used; later refetches run in the
 *   background (no token waits for them), no sooner than 30 s after a failed one, until one answers.
 * - None fetched yet, or past both: the token waits for a fetch, and its failure is a 503.
 * A token whose `kid` (or algorithm) no key held matches refetches the keys, once jose's 30 s cooldown
 * since the last fetch is past and not within 30 s of a failed one: if that fails, a token the keys
 * within their age lack is refused (401, as with the IdP up), or any made-up `kid` would turn a bad
 * token into a retryable 503 and tell its sender whether the identity provider is down; keys past
 * their age may predate a rotation: 503.
 */
function keysFromIdentityProvider(url: URL, config: Pick<Config, 'JWT_JWKS_CACHE_MAX_AGE' | 'JWT_JWKS_MAX_STALE'>, log?: KeysLog): JWTVerifyGetKey {
  const fetchFailed = (e: unknown) =>
    !(e instanceof errors.JOSEError) || e.code === errors.JOSEError.code || e instanceof errors.JWKSTimeout || e instanceof errors.JWKSInvalid;
  const held: Partial<ExportedJWKSCache> = {}; // jose writes uat (when) and jwks on each fetch that succeeds
  const age = () => (held.uat === undefined ? Infinity : Date.now() - held.uat);
  const usable = () => age() <= config.JWT_JWKS_CACHE_MAX_AGE + config.JWT_JWKS_MAX_STALE;
  let triedAt = -Infinity; // the last fetch started: failed if no set arrived since (jose never runs two at once)
  const remote = createRemoteJWKSet(url, {
    cooldownDuration: KID_COOLDOWN_MS,
    cacheMaxAge: Infinity,
    [jwksCache]: held as JWKSCacheInput,
    [customFetch]: (href, init) => {
      const now = Date.now();
      if (usable() && triedAt > (held.uat ?? -Infinity) && now - triedAt < KID_COOLDOWN_MS) return Promise.reject(new RefetchPutOff());
      triedAt = now;
      // Not in the request's trace: the undici instrumentation would send the identity provider its
      // traceparent and its baggage, the request's correlation id (docs/operations.md, Traces).
      return untraced(() => fetch(href, init));
    },
  });
  // The keys held when a fetch last failed (not one merely started: tokens wait for a pending one): the refetches
  // are failing until a set arrives. -1: none held then.
  let failedWith: number | null = null;
  const failed = (e: unknown) => {
    if (!(e instanceof RefetchPutOff)) failedWith = held.uat ?? -1;
  };
  const failing = () => failedWith !== null && failedWith === (held.uat ?? -1);
  /** The refetch of keys past their age, one at a time; never rejects: one that fails leaves the keys held in use, with a warning. */
  let stale: Promise<void> | undefined;
  const refetchStale = () =>
    (stale ??= remote
      .reload()
      .catch((e: unknown) => {
        failed(e);
        if (e instanceof RefetchPutOff) return;
        const minutes = (ms: number) => Math.round(ms / 60_000);
        log?.warn(
          { ops_event: 'jwks_stale', err: e, keys_age_minutes: minutes(age()), stale_for_minutes: minutes(config.JWT_JWKS_CACHE_MAX_AGE + config.JWT_JWKS_MAX_STALE - age()) },
          `JWT_JWKS_URL could not be fetched: still using the keys fetched ${minutes(age())} min ago, past JWT_JWKS_CACHE_MAX_AGE, for up to JWT_JWKS_MAX_STALE more (ADR 0006)`,
        );
      })
      .finally(() => {
        stale = undefined;
      }));
  return async (header, token) => {
    // No key of a set is a shared secret: an HS token (JWT_ALGORITHMS may list HS256 beside a JWKS) never verifies, keys or not.
    if (/^HS/i.test(header.alg ?? '')) throw new errors.JOSENotSupported('Unsupported "alg" value for a JSON Web Key Set');
    if (!usable()) await remote.reload().catch((e: unknown) => Promise.reject((failed(e), new KeysUnavailableError(e))));
    else if (age() > config.JWT_JWKS_CACHE_MAX_AGE) {
      // While the last fetch answered, the token waits for the refetch (tokens arriving meanwhile share it): keys
      // past their age never verify a token while the IdP answers, however long no request came (a removed key).
      // Once one failed, no token waits for the next: they are tried in the background (at most every 30 s).
      if (!failing()) await refetchStale();
      else if (!remote.reloading) void refetchStale();
    }
    try {
      return await remote(header, token);
    } catch (e) {
      if (!fetchFailed(e)) throw e;
      failed(e);
      // The refetch a kid (or algorithm) the keys lack prompted failed, or was put off. Keys within their age are
      // the IdP's current set: the token is refused (401). Past it they may predate a rotation: it was not checked (503).
      throw age() > config.JWT_JWKS_CACHE_MAX_AGE ? new KeysUnavailableError(e) : new errors.JWKSNoMatchingKey(undefined, { cause: e });
    }
  };
}

/** The order of P-256's group: ECDSA's (r, s) and (r, n − s) verify alike. */
const P256_ORDER = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;

/**
 * The one spelling of a token the memo knows it by. jose decodes base64url loosely: a segment with
 * `=` padding, or with the spare low bits of its last character set, decodes to the same bytes, so is
 * the same token; such a token is refused (401) before any signature check: RFC 7515 spells a JWS
 * unpadded, and no encoder sets those bits. An ES256 signature (r, s) has a twin (r, n − s) that
 * verifies too: both are known by the one with the lower s (and only an ES256 token has it changed:
 * the twin of a valid signature is valid, so no invalid one can pass for a remembered one).
 */
function canonicalSpelling(token: string): string {
  const segments = token.split('.');
  if (segments.length !== 3) return token; // jose refuses it
  if (segments.some((s) => Buffer.from(s, 'base64url').toString('base64url') !== s)) throw new UnauthorizedError('The token is not spelt in unpadded base64url.');
  const signature = Buffer.from(segments[2]!, 'base64url');
  if (signature.length !== 64 || algorithmOf(segments[0]!) !== 'ES256') return token;
  const s = BigInt(`0x${signature.subarray(32).toString('hex')}`);
  if (s <= P256_ORDER / 2n) return token;
  const low = Buffer.from((P256_ORDER - s).toString(16).padStart(64, '0'), 'hex');
  return `${segments[0]}.${segments[1]}.${Buffer.concat([signature.subarray(0, 32), low]).toString('base64url')}`;
}

function algorithmOf(header: string): unknown {
  try {
    return (JSON.parse(Buffer.from(header, 'base64url').toString()) as { alg?: unknown } | null)?.alg;
  } catch {
    return undefined; // jose refuses it
  }
}

/** A header for jose's UnsecuredJWT.decode: the claims checks of jwtVerify, without a signature. */
const UNSIGNED_HEADER = Buffer.from('{"alg":"none"}').toString('base64url');

/**
 * The 401 a token gets whatever its signature, read without the keys: its payload is no claims set, it
 * has expired or is not yet valid, names another issuer or audience, or lacks a claim the platform
 * needs — exactly jwtVerify's checks (jose's own, same options) and principalClaims. Undefined when
 * only the signature could refuse it. Refuses only: an unverified token is never accepted from here.
 */
function refusedUnsigned(token: string, options: JWTClaimVerificationOptions): UnauthorizedError | undefined {
  let payload: unknown;
  try {
    payload = UnsecuredJWT.decode(`${UNSIGNED_HEADER}.${token.split('.')[1] ?? ''}.`, options).payload;
  } catch (e) {
    return new UnauthorizedError(describeJoseError(e), e);
  }
  const claims = principalClaims.safeParse(payload);
  return claims.success ? undefined : lacksClaim(claims.error);
}

function lacksClaim(error: z.ZodError): UnauthorizedError {
  return new UnauthorizedError(`The token lacks a valid ${String(error.issues[0]?.path[0] ?? 'sub')} claim (sub, tenant_id as a UUID, roles).`);
}

function describeJoseError(e: unknown): string {
  if (e instanceof errors.JWTExpired) return e.claim === 'iat' ? 'The token was issued longer ago than JWT_MAX_TOKEN_LIFETIME allows.' : 'The token has expired.';
  if (e instanceof errors.JWTClaimValidationFailed && e.claim === 'iat' && e.reason === 'missing') return 'The token lacks an iat claim, which is required (JWT_MAX_TOKEN_LIFETIME).';
  if (e instanceof errors.JWTClaimValidationFailed) return `The token's ${e.claim} claim is not acceptable.`;
  if (e instanceof errors.JOSEAlgNotAllowed) return 'The token is signed with an algorithm that is not allowed.';
  if (e instanceof errors.JWSSignatureVerificationFailed) return 'The token signature is invalid.';
  return 'The token is not valid.';
}

/**
 * Signs a development token with JWT_SECRET (npm run token, the demo and tests). Each carries a random
 * `jti`, as an identity provider's do: two tokens signed in the same second for the same claims are
 * still two tokens (the dashboard's sign-out and one-time `?token=` link tell them apart).
 */
export async function signDevToken(
  config: Pick<Config, 'JWT_SECRET' | 'JWT_ISSUER' | 'JWT_AUDIENCE'>,
  claims: { sub: string; tenantId: string; roles?: string[]; ttlSeconds?: number; issuedAt?: number },
): Promise<string> {
  if (!config.JWT_SECRET) throw new Error('JWT_SECRET is not configured: refusing to sign a development token');
  return new SignJWT({ tenant_id: claims.tenantId, roles: claims.roles ?? [] })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(claims.sub)
    .setIssuer(config.JWT_ISSUER)
    .setAudience(config.JWT_AUDIENCE)
    .setIssuedAt(claims.issuedAt)
    .setJti(randomUUID())
    .setExpirationTime(Math.floor(Date.now() / 1000) + (claims.ttlSeconds ?? 3600))
    .sign(new TextEncoder().encode(config.JWT_SECRET));
}
