/**
 * The operator's token revocations (ADR 0018), as the owner role (MIGRATION_DATABASE_URL): the
 * application role may read the table, never write it.
 *
 *   npm run token -- revoke --tenant <uuid> --jti <id> [--expires <ISO time>] [--by <name>] [--reason <text>]
 *   npm run token -- revoke --token <jwt> [--by <name>] [--reason <text>]
 *   npm run token -- revoke --tenant <uuid> [--sub <id>] --issued-before <ISO time|now> [--by <name>] [--reason <text>]
 *   npm run token -- revocations --tenant <uuid>
 *   npm run token -- lift --tenant <uuid> --id <revocation id> [--by <name>]
 *   npm run token -- prune-revocations
 */
import { userInfo } from 'node:os';
import { parseArgs } from 'node:util';
import { loadConfig } from '../config/config.ts';
import { createRedis, untilReady } from '../queue/connections.ts';
import { databaseProblem } from '../db/connection-problem.ts';
import { claimsOf } from '../http/operator-sessions.ts';
import { isTenantId, TENANT_ID_PROBLEM } from './tenant-id.ts';
import { liftRevocation, listRevocations, PruneLockTimeoutError, pruneRevocations, revocationIdSchema, revokeTokens, TOKEN_AGE_SEEN_WINDOW, type PruneResult, type RevocationRequest } from './token-revocations.ts';

export const REVOCATION_USAGE = `usage: npm run token -- revoke --tenant <uuid> --jti <id> [--expires <ISO time>] [--by <name>] [--reason <text>]
       npm run token -- revoke --token <jwt> [--by <name>] [--reason <text>]
       npm run token -- revoke --tenant <uuid> [--sub <id>] --issued-before <ISO time|now> [--by <name>] [--reason <text>]
       npm run token -- revocations --tenant <uuid>
       npm run token -- lift --tenant <uuid> --id <revocation id> [--by <name>]
       npm run token -- prune-revocations`;

class UsageError extends Error {}

/**
 * The tenant given, checked with the verifier's tenant_id schema: a looser pattern stored revocations
 * for a tenant that can never sign in, and announced them in a message every API process discarded.
 */
function tenantOption(tenant: string | undefined, required: string): string {
  if (tenant === undefined || tenant === '') throw new UsageError(required);
  if (!isTenantId(tenant)) throw new UsageError(`--tenant: "${tenant}" ${TENANT_ID_PROBLEM}`);
  return tenant;
}

type Command =
  | { kind: 'revoke'; request: RevocationRequest }
  | { kind: 'list'; tenantId: string }
  | { kind: 'lift'; tenantId: string; id: string; liftedBy: string }
  | { kind: 'prune' };

/** Runs `revoke`, `revocations`, `lift` or `prune-revocations` (argv from the subcommand on); the exit code. */
export async function revocationCommand(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  let command: Command;
  try {
    command = parse(name, rest);
  } catch (e) {
    console.error(`${(e as Error).message}\n${REVOCATION_USAGE}`);
    return 2;
  }
  const config = loadConfig();
  try {
    if (command.kind === 'prune') {
      // The not-before rows go by the longest token age the API processes declare (ADR 0018), this command's own settings only lengthening it.
      const done = await pruneRevocations(config.MIGRATION_DATABASE_URL, { maxTokenLifetimeMs: config.JWT_MAX_TOKEN_LIFETIME, clockToleranceMs: config.JWT_CLOCK_TOLERANCE });
      console.log(`pruned ${done.pruned} revocation(s) of expired tokens${pruneSummary(done)}`);
      if (done.keptBecause === 'none-declared') {
        console.error(
          `no API process has declared the token age it enforces in the last ${TOKEN_AGE_SEEN_WINDOW} (table token_age_limits): every not-before revocation was kept. Start the API of this release (it declares its JWT_MAX_TOKEN_LIFETIME as it starts), then prune again`,
        );
      }
      return 0;
    }
    if (command.kind === 'list') {
      for (const r of await listRevocations(config.MIGRATION_DATABASE_URL, command.tenantId)) console.log(JSON.stringify(r));
      return 0;
    }
    const redis = createRedis(config.REDIS_URL, 'producer', 'dealix-token-cli');
    try {
      await untilReady(redis, 5_000);
      const target = { ownerUrl: config.MIGRATION_DATABASE_URL, redis, prefix: config.QUEUE_PREFIX };
      let announced: { announced: boolean; error?: string | undefined };
      if (command.kind === 'revoke') {
        const done = await revokeTokens(target, command.request);
        console.log(JSON.stringify({ id: done.id, revoked: done.revocation, announced: done.announced }));
        announced = done;
      } else {
        const done = await liftRevocation(target, command);
        if (!done) {
          console.error(`token lift: tenant ${command.tenantId} has no revocation ${command.id} in force (unknown, or already lifted: npm run token -- revocations --tenant ${command.tenantId})`);
          return 1;
        }
        console.log(JSON.stringify({ lifted: done.revocation, announced: done.announced }));
        announced = done;
      }
      if (!announced.announced) {
        console.error(`stored, but not announced over Redis (${announced.error}): every API process applies it at its next reload, within TOKEN_REVOCATION_RECONCILE`);
      }
      return 0;
    } finally {
      redis.disconnect();
    }
  } catch (e) {
    if (e instanceof PruneLockTimeoutError) {
      console.error(`token ${name} failed: ${e.message}`);
      return 1;
    }
    const problem = databaseProblem(e, 'MIGRATION_DATABASE_URL', config.MIGRATION_DATABASE_URL);
    if (!problem) throw e;
    console.error(`token ${name} failed: ${problem}`);
    return 1;
  }
}

/** What the prune judged not-before rows by: the age, or why every one was kept. */
function pruneSummary(done: PruneResult): string {
  const ages = `the ${done.agesSeen} token age(s) API processes declared in the last ${TOKEN_AGE_SEEN_WINDOW}`;
  if (done.maxAgeSeconds !== null) return ` and not-before revocations older than ${done.maxAgeSeconds} s (the longest of ${ages}, or of this command's settings)`;
  if (done.keptBecause === 'no-limit') return `; every not-before revocation kept: JWT_MAX_TOKEN_LIFETIME=0 (no limit) among ${ages}, or in this command's settings`;
  return '; every not-before revocation kept';
}

function parse(name: string | undefined, args: string[]): Command {
  if (name === 'revoke') return { kind: 'revoke', request: parseRevoke(args) };
  if (name === 'prune-revocations') {
    parseArgs({ args, options: {} });
    return { kind: 'prune' };
  }
  const { values: v } = parseArgs({ args, options: { tenant: { type: 'string' }, id: { type: 'string' }, by: { type: 'string' } } });
  const tenantId = tenantOption(v.tenant, '--tenant <uuid> is required');
  if (name === 'revocations') {
    if (v.id !== undefined || v.by !== undefined) throw new UsageError('revocations takes --tenant only');
    return { kind: 'list', tenantId };
  }
  if (!revocationIdSchema.safeParse(v.id).success) throw new UsageError('--id <revocation id> is required (the id revoke printed, or: npm run token -- revocations --tenant <uuid>)');
  return { kind: 'lift', tenantId, id: v.id!, liftedBy: v.by ?? operatorName() };
}

function parseRevoke(args: string[]): RevocationRequest {
  const { values: v } = parseArgs({
    args,
    options: {
      tenant: { type: 'string' },
      jti: { type: 'string' },
      token: { type: 'string' },
      sub: { type: 'string' },
      'issued-before': { type: 'string' },
      expires: { type: 'string' },
      by: { type: 'string' },
      reason: { type: 'string' },
    },
  });
  const revokedBy = v.by ?? operatorName();
  const reason = v.reason;
  const config = loadConfig();
  // The verifier accepts a token this long past its exp: its revocation must last as long. jose takes
  // the tolerance in whole seconds (jwt.ts rounds it): rounded up here, the row never ends before it.
  const expiry = (expSeconds: number) => new Date(expSeconds * 1000 + Math.ceil(config.JWT_CLOCK_TOLERANCE / 1000) * 1000);
  if (v.token !== undefined) {
    if (v.tenant || v.jti || v.sub || v['issued-before'] || v.expires) throw new UsageError('--token names the tenant, token id and expiry itself: give none of --tenant, --jti, --sub, --issued-before, --expires with it');
    const { jti, exp } = claimsOf(v.token);
    const tenant = tenantOf(v.token);
    if (!jti || typeof tenant !== 'string') throw new UsageError('--token: not a JWT with a jti and a tenant_id claim (a token without jti is revoked by --issued-before)');
    if (!isTenantId(tenant)) throw new UsageError(`--token: its tenant_id claim ${JSON.stringify(tenant)} ${TENANT_ID_PROBLEM}: the API refuses the token (401) already`);
    return { tenantId: tenant, jti, ...(exp !== undefined ? { expiresAt: expiry(exp) } : {}), revokedBy, reason };
  }
  const tenantId = tenantOption(v.tenant, '--tenant <uuid> is required (or --token)');
  // An unset shell variable gives '' (or a stray space): such a row would revoke no token while the
  // command reported success.
  for (const option of ['jti', 'sub'] as const) {
    const value = v[option];
    if (value !== undefined && (value === '' || value.trim() !== value)) throw new UsageError(`--${option}: empty or padded with spaces ("${value}"): name the token id or subject exactly`);
  }
  if (v.jti !== undefined) {
    if (v.sub || v['issued-before']) throw new UsageError('--jti revokes one token: --sub and --issued-before go without it');
    let expiresAt: Date | undefined;
    if (v.expires !== undefined) expiresAt = expiry(parseTime('--expires', v.expires).getTime() / 1000);
    return { tenantId, jti: v.jti, expiresAt, revokedBy, reason };
  }
  if (v['issued-before'] === undefined) throw new UsageError('give --jti <id>, or --issued-before <ISO time|now>');
  if (v.expires !== undefined) throw new UsageError('--expires goes with --jti');
  if (v['issued-before'] === 'now') {
    // The database's time, plus the clock tolerance (rounded up as the verifier applies it): a token an
    // identity provider whose clock runs ahead stamped just before now is still refused (ADR 0018).
    return { tenantId, subject: v.sub, issuedBefore: 'now', clockToleranceMs: Math.ceil(config.JWT_CLOCK_TOLERANCE / 1000) * 1000, revokedBy, reason };
  }
  return { tenantId, subject: v.sub, issuedBefore: parseTime('--issued-before', v['issued-before']), revokedBy, reason };
}

function parseTime(option: string, text: string): Date {
  if (text === 'now') return new Date();
  // A time zone is required: a bare local time would mean another instant on another operator's machine.
  const ms = /(?:Z|[+-]\d{2}:?\d{2})$/i.test(text) ? Date.parse(text) : Number.NaN;
  if (Number.isNaN(ms)) throw new UsageError(`${option}: "${text}" is not an ISO 8601 time with a time zone (e.g. 2026-12-06T09:00:00Z) or "now"`);
  return new Date(ms);
}

function tenantOf(jwt: string): unknown {
  try {
    return (JSON.parse(Buffer.from(jwt.split('.')[1] ?? '', 'base64url').toString('utf8')) as { tenant_id?: unknown } | null)?.tenant_id;
  } catch {
    return undefined;
  }
}

function operatorName(): string {
  try {
    return userInfo().username || 'operator';
  } catch {
    return 'operator';
  }
}
