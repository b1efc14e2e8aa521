import { randomUUID } from 'node:crypto';
import { createLocalJWKSet, createRemoteJWKSet, errors, jwtVerify, SignJWT, UnsecuredJWT, type JWTClaimVerificationOptions, type JWTVerifyGetKey, type JSONWebKeySet } from 'jose';
import { z } from 'zod';
import type { Config } from '../config/config.ts';
import { ServiceUnavailableError, UnauthorizedError } from '../errors/app-error.ts';
import { isUnstorableText } from '../http/json-text.ts';
import { TokenRevokedError, type RevocableClaims } from './token-revocations.ts';

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
  tenant_id: z.string().uuid(),
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

/**
 * Verifies bearer tokens with `jose`: HS256 against JWT_SECRET in development, RS256/ES256 against
 * JWT_JWKS_URL in production; the algorithm allow-list, issuer, audience, exp and nbf are enforced.
 *
 * A client sends the same token with every request until it expires, and a signature check is about
 * 0.2 ms of CPU per request here (docs/performance.md): a token that verified is remembered, by its
 * exact text, until its exp or for JWT_VERIFIED_TOKEN_TTL (60 s at most), whichever comes first (at
 * most 10,000 tokens, the oldest forgotten first). Only successes are remembered; any other text is
 * verified.
 *
 * `revocations` (ADR 0018): checked on every call, a remembered token included, against the claims kept
 * with it (tenant, sub, jti, iat): a revoked token is refused (401 token_revoked) however it was verified.
 */
export function createTokenVerifier(config: Config, jwks?: JSONWebKeySet, revocations?: { refuses(c: RevocableClaims): boolean }): TokenVerifier {
  const verified = new Map<string, { principal: Principal; claims: RevocableClaims; untilMs: number }>();
  const checked = (principal: Principal, claims: RevocableClaims): Principal => {
    if (revocations?.refuses(claims)) throw new TokenRevokedError();
    return principal;
  };
  const algorithms = [...config.JWT_ALGORITHMS];
  let key: Uint8Array | JWTVerifyGetKey;
  if (jwks) key = createLocalJWKSet(jwks);
  else if (config.JWT_JWKS_URL) key = keysFromIdentityProvider(createRemoteJWKSet(new URL(config.JWT_JWKS_URL), { cooldownDuration: 30_000, cacheMaxAge: config.JWT_JWKS_CACHE_MAX_AGE }));
  else if (config.JWT_SECRET) key = new TextEncoder().encode(config.JWT_SECRET);
  else throw new Error('no JWT key configured');
  const options = {
    algorithms,
    issuer: config.JWT_ISSUER,
    audience: config.JWT_AUDIENCE,
    clockTolerance: Math.round(config.JWT_CLOCK_TOLERANCE / 1000),
    requiredClaims: ['exp', 'sub'],
  };
  return {
    async verify(token: string): Promise<Principal> {
      const known = verified.get(token);
      if (known) {
        if (Date.now() < known.untilMs) return checked(known.principal, known.claims);
        verified.delete(token);
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
      verified.set(token, { principal, claims: revocable, untilMs: Math.min(exp * 1000, Date.now() + config.JWT_VERIFIED_TOKEN_TTL) });
      return checked(principal, revocable);
    },
  };
}

/**
 * The identity provider's keys could not be fetched (JWT_JWKS_URL down, answering other than 200, no
 * key set, too slow) while no fresh copy is held: the token was not checked at all, so it is the API's
 * trouble, not the client's. 503 with Retry-After (retryable, same Idempotency-Key), never a 401 that
 * tells every client its token is bad. Never remembered: the next request fetches the keys again.
 */
export class KeysUnavailableError extends ServiceUnavailableError {
  constructor(cause: unknown) {
    super("The identity provider's signing keys (JWT_JWKS_URL) could not be fetched, so the token could not be checked. Retry after the indicated delay.", cause, 5);
  }
}

/**
 * The remote key set, with its fetch failures told apart from the token's faults. jose's remote set
 * throws, besides a token's own faults (a `kid` the set lacks, several keys matching), what fetching
 * the set threw: a timeout, a network error (not a JOSEError), a generic JOSEError (a status other
 * than 200, a body that is not JSON) or an invalid set (its members).
 *
 * A fetch failure is a 503 only while no fresh set is held, and for a token a key of a set could
 * verify. With a fresh one, jose fetches only for a token whose `kid` (or algorithm) no key held
 * matches, once its 30 s cooldown is past: that token is refused by the keys held (401, as with the
 * IdP up), or any made-up `kid` would turn a bad token into a retryable 503 and tell its sender
 * whether the identity provider is down.
 */
function keysFromIdentityProvider(remote: ReturnType<typeof createRemoteJWKSet>): JWTVerifyGetKey {
  const fetchFailed = (e: unknown) =>
    !(e instanceof errors.JOSEError) || e.code === errors.JOSEError.code || e instanceof errors.JWKSTimeout || e instanceof errors.JWKSInvalid;
  return async (header, token) => {
    // No key of a set is a shared secret: an HS token (JWT_ALGORITHMS may list HS256 beside a JWKS) never verifies, keys or not.
    if (/^HS/i.test(header.alg ?? '')) throw new errors.JOSENotSupported('Unsupported "alg" value for a JSON Web Key Set');
    const held = remote.fresh;
    try {
      return await remote(header, token);
    } catch (e) {
      if (!fetchFailed(e)) throw e;
      throw held ? new errors.JWKSNoMatchingKey(undefined, { cause: e }) : new KeysUnavailableError(e);
    }
  };
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
  if (e instanceof errors.JWTExpired) return 'The token has expired.';
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
