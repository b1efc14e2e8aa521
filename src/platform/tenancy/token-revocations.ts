import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import pg from 'pg';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { MikroORM } from '@mikro-orm/postgresql';
import { AppError, ServiceUnavailableError } from '../errors/app-error.ts';
import { systemEm } from '../db/tenant-em.ts';
import { pgClientConfig } from '../db/pg-ssl.ts';
import { sqlStateOf } from '../durable/errors.ts';
import { TENANT_SETTING } from '../db/tenant-owned.ts';
import { tenantIdSchema } from './tenant-id.ts';
import { DECLARATIONS_FULL_HINT, TOKEN_AGE_DECLARATIONS_MAX, TOKEN_AGE_SEEN_WINDOW } from './token-age-limit.entity.ts';

export { TOKEN_AGE_SEEN_WINDOW };

/**
 * Token revocation (ADR 0018). PostgreSQL (`token_revocations`, written by `npm run token -- revoke`)
 * holds the truth; every API process holds all of it in memory and checks each request against that
 * copy, never the database. The copy is loaded from PostgreSQL at start (fail-closed: until it is, every
 * token is answered 503), and kept fresh by a Redis message per revocation, a full reload each time its
 * subscription is (re)established, and a full reload every TOKEN_REVOCATION_RECONCILE, which bounds a
 * missed message — and, Redis down, every revocation.
 */

/** What a request is checked by: the verified token's tenant, subject, and its `jti` and `iat` when it has them. */
export interface RevocableClaims {
  tenantId: string;
  sub: string;
  jti?: string | undefined;
  /** Seconds since the epoch; absent: issued at the beginning of time, refused by any not-before. */
  iat?: number | undefined;
}

/** A revocation's id (randomUUID at revoke): what `lift --id` names, checked as its announcement is. */
export const revocationIdSchema = z.string().uuid();

/** One row, as loaded and as announced: a token id, or a not-before (seconds) for the tenant or one subject. */
export const revocationSchema = z.union([
  z.object({ tenantId: tenantIdSchema, jti: z.string().min(1).max(255), expiresAtMs: z.number().nullable() }),
  z.object({ tenantId: tenantIdSchema, subject: z.string().min(1).max(255).nullable(), notBefore: z.number() }),
]);
export type Revocation = z.infer<typeof revocationSchema>;

/**
 * Announced when an operator lifts a revocation: every process reads the table again (the lifted row
 * is no longer loaded). A process of an earlier release, which does not know this message, reloads too
 * (an unreadable message makes it reload), but its loader does not skip lifted rows: it keeps refusing
 * until it is replaced.
 */
const liftSchema = z.object({ lifted: z.object({ tenantId: tenantIdSchema, id: revocationIdSchema }) });

/** A revoked token presented: 401 `token_revoked`, never retryable with the same token. */
export class TokenRevokedError extends AppError {
  constructor() {
    super('token_revoked', 'Token Revoked', {
      status: 401,
      retryable: false,
      detail: 'This token has been revoked by a platform operator. Obtain a new token from the identity provider.',
      headers: { 'WWW-Authenticate': 'Bearer error="invalid_token"' },
    });
  }
}

/** The Redis channel every API process of a deployment listens on. */
export const revocationChannel = (prefix: string) => `${prefix}:token-revocations`;

const key = (tenantId: string, part?: string | null) => (part == null ? tenantId : `${tenantId}\u0000${part}`);

/** An immutable-by-convention set of revocations: a lookup per request, two map reads at most three. */
export class RevocationSet {
  private readonly jtis = new Map<string, number>();
  private readonly notBefore = new Map<string, number>();

  add(r: Revocation): void {
    if ('jti' in r) {
      this.jtis.set(key(r.tenantId, r.jti), r.expiresAtMs ?? Number.POSITIVE_INFINITY);
    } else {
      const k = key(r.tenantId, r.subject);
      this.notBefore.set(k, Math.max(this.notBefore.get(k) ?? Number.NEGATIVE_INFINITY, r.notBefore));
    }
  }

  get size(): number {
    return this.jtis.size + this.notBefore.size;
  }

  /** Whether the token is refused: its id is revoked, or it was issued before its tenant's (or its subject's) not-before. */
  refuses(c: RevocableClaims): boolean {
    const tenantId = c.tenantId.toLowerCase();
    if (c.jti !== undefined && this.jtis.has(key(tenantId, c.jti))) return true;
    if (this.notBefore.size === 0) return false;
    const iat = c.iat ?? Number.NEGATIVE_INFINITY;
    const tenantWide = this.notBefore.get(tenantId);
    if (tenantWide !== undefined && iat < tenantWide) return true;
    const ofSubject = this.notBefore.get(key(tenantId, c.sub));
    return ofSubject !== undefined && iat < ofSubject;
  }
}

/**
 * How long a token-id revocation is still loaded (and kept by the prune) after its `expires_at` by the
 * database's clock. The verifier (jose) judges the token's `exp` by the API host's clock: on a host
 * running behind the database, a row dropped at its expiry would let the revoked token through for
 * that lag. Rows past it are harmless to keep a little longer; a clock off by more is out of NTP.
 */
export const REVOKED_ID_KEPT_AFTER_EXPIRY = '5 minutes';

/** Every revocation still in force, read as the system role (its select policy and column grants). */
export async function loadRevocations(orm: MikroORM): Promise<Revocation[]> {
  const rows = await systemEm(orm).transactional((em) =>
    em.execute<Array<{ tenant_id: string; jti: string | null; subject: string | null; not_before: number | null; expires_at_ms: number | null }>>(
      `select tenant_id, jti, subject, extract(epoch from not_before)::float8 as not_before, (extract(epoch from expires_at) * 1000)::float8 as expires_at_ms
         from token_revocations where (expires_at is null or expires_at > now() - interval '${REVOKED_ID_KEPT_AFTER_EXPIRY}') and lifted_at is null`,
    ),
  );
  return rows.map((r) =>
    r.jti !== null ? { tenantId: r.tenant_id, jti: r.jti, expiresAtMs: r.expires_at_ms } : { tenantId: r.tenant_id, subject: r.subject, notBefore: r.not_before! },
  );
}

/**
 * The age past which the verifier refuses every token, in whole seconds: JWT_MAX_TOKEN_LIFETIME plus
 * JWT_CLOCK_TOLERANCE, each rounded up (jose applies both in whole seconds); 0: no limit.
 */
export function tokenMaxAgeSeconds(limits: { maxTokenLifetimeMs: number; clockToleranceMs: number }): number {
  return limits.maxTokenLifetimeMs > 0 ? Math.ceil(limits.maxTokenLifetimeMs / 1000) + Math.ceil(limits.clockToleranceMs / 1000) : 0;
}

/** What an API process declares: tokenMaxAgeSeconds of its settings (the row's key), and its instance id (kept with a new age's row). */
export interface TokenAgeDeclaration {
  instance: string;
  maxAgeSeconds: number;
}

/**
 * Declares or confirms (`seen_at` only, the database's time) the token age this API process enforces, as the
 * application role (token_age_limits holds no tenant data): one row per age, shared by the processes that
 * enforce it, so a restart adds none (the trigger `declarations_capped` refuses a new age past
 * TOKEN_AGE_DECLARATIONS_MAX rows). Waits while a
 * prune runs (it holds the table in SHARE ROW EXCLUSIVE mode): a process is never serving with an age the prune in
 * progress did not read.
 */
export async function declareTokenAge(orm: MikroORM, declaration: TokenAgeDeclaration): Promise<void> {
  try {
    await orm.em.fork({ clear: true, useContext: false }).transactional((tx) =>
      tx.execute(
        `insert into token_age_limits (instance, max_token_age_seconds, published_at, seen_at) values (?, ?, now(), now())
         on conflict (max_token_age_seconds) do update set seen_at = now()`,
        [declaration.instance, declaration.maxAgeSeconds],
      ),
    );
  } catch (e) {
    if (sqlStateOf(e) === '54000') throw new TokenAgeDeclarationsFullError(declaration.maxAgeSeconds, e);
    throw e;
  }
}

/**
 * This process's age is new and token_age_limits is full (`declarations_capped`, 54000): it cannot declare
 * it, so it checks no token (503) until an operator deletes rows; logged as an error at every reconcile, with
 * which rows are safe to delete and how to see them (DECLARATIONS_FULL_HINT).
 */
export class TokenAgeDeclarationsFullError extends Error {
  constructor(maxAgeSeconds: number, cause: unknown) {
    super(
      `this API process cannot declare the token age it enforces (max_token_age_seconds ${maxAgeSeconds}): token_age_limits holds ${TOKEN_AGE_DECLARATIONS_MAX} other ages, the most it takes (ADR 0018), so it answers 503 to every token until it can. ${DECLARATIONS_FULL_HINT.replaceAll("''", "'")}`,
      { cause },
    );
    this.name = 'TokenAgeDeclarationsFullError';
  }
}

export interface TokenRevocationsOptions {
  orm: MikroORM;
  /** The token age this process enforces, declared before its list is first loaded and again at every reconcile (the prune reads it). */
  tokenAge: TokenAgeDeclaration;
  redisUrl: string;
  prefix: string;
  logger: Logger;
  /** How often the whole list is read again, whatever the notifications said (TOKEN_REVOCATION_RECONCILE). */
  reconcileMs: number;
  /** How long start() waits for the first load before it lets the API start without it (503 to every token until loaded). */
  startTimeoutMs?: number;
}

/**
 * The list not loaded yet (PostgreSQL unreachable since the process started): every token is
 * answered 503, retryable, never let through unchecked (fail-closed, ADR 0018).
 */
export class RevocationsUnavailableError extends ServiceUnavailableError {
  constructor() {
    super('The token revocation list is not loaded yet (the database is unreachable), so no token can be checked. Retry after the indicated delay.', undefined, 1);
  }
}

/** How long close() waits for a reload in progress. */
const CLOSE_WAIT_MS = 2_000;

/** An API process's copy of the revocation list (see the module comment). */
export class TokenRevocations {
  private current = new RevocationSet();
  /** Messages received while a reload reads the table: applied again to its result, so none is lost to it. */
  private readonly inFlight = new Set<Revocation[]>();
  /** The reloads reading the table now (close waits for them). */
  private readonly reloads = new Set<Promise<void>>();
  private subscriber: Redis | undefined;
  private timer: NodeJS.Timeout | undefined;
  private started = false;
  private loaded = false;
  private markLoaded: () => void = () => {};
  private readonly firstLoad = new Promise<void>((resolve) => (this.markLoaded = resolve));
  private reconciling = false;
  /** Whether this process's token age is declared (token_age_limits): required before the first load. */
  private declared = false;
  /** Reloads started, and the newest one whose result is installed: an older read never replaces a newer one. */
  private reloadsStarted = 0;
  private installedReload = 0;
  private readonly opts: TokenRevocationsOptions;

  constructor(opts: TokenRevocationsOptions) {
    this.opts = opts;
  }

  /** Throws RevocationsUnavailableError (503) until the list has been loaded once. */
  refuses(c: RevocableClaims): boolean {
    if (!this.loaded) throw new RevocationsUnavailableError();
    return this.current.refuses(c);
  }

  get isLoaded(): boolean {
    return this.loaded;
  }

  /**
   * Loads the table from PostgreSQL and subscribes, independently: Redis only carries the announcements,
   * so a Redis that is down delays none of the loads (the reconcile bounds what a missed message costs),
   * and every (re)established subscription is followed by a reload (a revocation committed before it is
   * in that load, one after it in a message). Never throws: until the first load the process serves 503
   * to every token, retried every reconcile tick (at most a second apart until loaded).
   */
  async start(): Promise<void> {
    const { redisUrl, logger } = this.opts;
    const sub = new Redis(redisUrl, {
      // Resubscribed by hand on every 'ready' (below), so the reload follows a confirmed subscription.
      autoResubscribe: false,
      maxRetriesPerRequest: null,
      connectionName: 'dealix-api-revocations',
      retryStrategy: (n) => Math.min(n * 200, 2000),
      lazyConnect: true,
    });
    this.subscriber = sub;
    sub.on('error', () => {});
    sub.on('message', (_channel, message) => this.onMessage(message));
    this.started = true;
    sub.on('ready', () => void this.resubscribe());
    // ioredis keeps reconnecting after a failed first attempt; each 'ready' subscribes and reloads.
    sub.connect().catch(() => {});
    void this.reconcile();
    try {
      await withTimeout(this.firstLoad, this.opts.startTimeoutMs ?? 5_000, 'PostgreSQL did not answer');
    } catch (err) {
      logger.error({ err }, 'token revocations not loaded: every token is answered 503 until they are');
    }
    // Until the first load: a retry every second (or every reconcile period, if shorter); then every reconcile period.
    const tick = () => {
      this.timer = setTimeout(() => void this.reconcile().finally(() => this.started && tick()), this.loaded ? this.opts.reconcileMs : Math.min(1000, this.opts.reconcileMs));
      this.timer.unref();
    };
    tick();
  }

  /**
   * Reads the whole table again and replaces the copy (messages arriving meanwhile are kept); with
   * `declare` (the reconcile), first confirms this process's token age (always before the first load).
   */
  async reload(declare = false): Promise<void> {
    const read = this.readAndInstall(declare);
    this.reloads.add(read);
    try {
      await read;
    } finally {
      this.reloads.delete(read);
    }
  }

  private async readAndInstall(declare: boolean): Promise<void> {
    const arrived: Revocation[] = [];
    const seq = ++this.reloadsStarted;
    this.inFlight.add(arrived);
    try {
      // No token is checked before the prune can see this process's age: a not-before it still needs is never pruned.
      if (declare || !this.declared) {
        await declareTokenAge(this.opts.orm, this.opts.tokenAge);
        this.declared = true;
      }
      const rows = await loadRevocations(this.opts.orm);
      // A reconcile's read and a resubscription's can overlap: the one started later read the table later
      // (a row stored between the two, unannounced while Redis was away, is only in its result).
      if (seq < this.installedReload) return;
      const next = new RevocationSet();
      for (const r of rows) next.add(r);
      for (const r of arrived) next.add(r);
      this.current = next;
      this.installedReload = seq;
      if (!this.loaded) {
        this.loaded = true;
        this.markLoaded();
        this.opts.logger.info({ revocations: next.size, max_token_age_seconds: this.opts.tokenAge.maxAgeSeconds }, 'token revocations loaded');
      }
    } finally {
      this.inFlight.delete(arrived);
    }
  }

  /**
   * Stops the reloads and the subscription, and waits (up to CLOSE_WAIT_MS) for a reload in progress:
   * the container closes the ORM next, and a transaction cut off by that close left the pool's end
   * waiting for ever (an API whose port was taken, closing right after its subscriber's first reload
   * began, hung its failed start's close past its deadline).
   */
  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.started = false;
    this.subscriber?.disconnect();
    if (this.reloads.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    const waited = new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_WAIT_MS)));
    await Promise.race([Promise.allSettled([...this.reloads]), waited]);
    clearTimeout(timer);
  }

  private onMessage(message: string): void {
    let parsed;
    try {
      const json: unknown = JSON.parse(message);
      if (liftSchema.safeParse(json).success) {
        // Not through reconcile(): one in progress may have read the table before the lift committed.
        this.reload().catch((err: unknown) => this.opts.logger.warn({ err }, 'token revocations could not be reloaded after a lift; the periodic reconcile retries'));
        return;
      }
      parsed = revocationSchema.safeParse(json);
    } catch {
      parsed = undefined;
    }
    if (!parsed?.success) {
      this.opts.logger.warn({ message: message.slice(0, 200) }, 'unreadable token revocation message: reloading the list');
      void this.reconcile();
      return;
    }
    this.current.add(parsed.data);
    for (const arrived of this.inFlight) arrived.push(parsed.data);
  }

  /** At each (re)connection: messages sent while the subscriber was away are lost, the table is not. */
  private async resubscribe(): Promise<void> {
    if (!this.started) return;
    try {
      const first = !this.loaded;
      await this.subscriber!.subscribe(revocationChannel(this.opts.prefix));
      await this.reload();
      if (!first) this.opts.logger.info({ revocations: this.current.size }, 'token revocations reloaded after Redis reconnected');
    } catch (err) {
      this.opts.logger.warn({ err }, 'token revocations could not be reloaded; the periodic reconcile retries');
    }
  }

  private async reconcile(): Promise<void> {
    // Whatever Redis's state: a load while it is down misses no announcement that a later load (this
    // tick's next, or the reload after the resubscription) would not find in the table.
    if (!this.started || this.reconciling) return;
    this.reconciling = true;
    try {
      await this.reload(true);
    } catch (err) {
      // The copy held stays in force (nothing is ever dropped on a failure); the next tick retries. A full
      // token_age_limits needs an operator: an error, whose message says what to run.
      this.opts.logger[err instanceof TokenAgeDeclarationsFullError ? 'error' : 'warn']({ err }, 'token revocations could not be reloaded; the periodic reconcile retries');
    } finally {
      this.reconciling = false;
    }
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms)))]).finally(() => clearTimeout(timer));
}

/** What an operator revokes: a token id of a tenant, or every token of the tenant (or of one subject) issued before a time. */
export type RevocationRequest =
  | { tenantId: string; jti: string; expiresAt?: Date | undefined; revokedBy: string; reason?: string | undefined }
  | {
      tenantId: string;
      subject?: string | undefined;
      /**
       * `now`: every token issued so far — the database's time (not the operator machine's) plus
       * `clockToleranceMs`, as an identity provider whose clock runs up to JWT_CLOCK_TOLERANCE ahead
       * stamps a token issued just before the revocation with an `iat` up to that much later.
       */
      issuedBefore: Date | 'now';
      clockToleranceMs?: number | undefined;
      revokedBy: string;
      reason?: string | undefined;
    };

/**
 * Records a revocation (as the owner role: the application role may not write the table) and announces
 * it to every API process. Stored first, announced after the commit: an announcement that fails
 * (`announced: false`) still takes effect at each process's next reconcile.
 */
export async function revokeTokens(
  target: { ownerUrl: string; redis?: Redis | undefined; prefix: string },
  req: RevocationRequest,
): Promise<{ id: string; revocation: Revocation; announced: boolean; error?: string }> {
  const tenantId = req.tenantId.toLowerCase();
  const id = randomUUID();
  const jti = 'jti' in req ? req.jti : null;
  const notBefore = 'issuedBefore' in req && req.issuedBefore !== 'now' ? req.issuedBefore : null;
  const now = 'issuedBefore' in req && req.issuedBefore === 'now';
  const subject = 'issuedBefore' in req ? (req.subject ?? null) : null;
  const expiresAt = 'jti' in req ? (req.expiresAt ?? null) : null;
  // The isolation policy admits the row of the tenant bound here, as for any tenant write.
  const row = await asOwnerFor(target.ownerUrl, tenantId, async (client) => {
    const { rows } = await client.query<{ not_before: number | null; expires_at_ms: number | null }>(
      `insert into token_revocations (tenant_id, id, jti, subject, not_before, expires_at, revoked_by, reason, created_at)
       values ($1, $2, $3, $4, case when $9::float8 is null then $5::timestamptz else now() + $9::float8 * interval '1 millisecond' end, $6, $7, $8, now())
       returning extract(epoch from not_before)::float8 as not_before, (extract(epoch from expires_at) * 1000)::float8 as expires_at_ms`,
      [tenantId, id, jti, subject, notBefore, expiresAt, req.revokedBy, req.reason ?? null, now ? ('clockToleranceMs' in req ? (req.clockToleranceMs ?? 0) : 0) : null],
    );
    return rows[0]!;
  });
  const revocation: Revocation = jti !== null ? { tenantId, jti, expiresAtMs: row.expires_at_ms } : { tenantId, subject, notBefore: row.not_before! };
  return { id, revocation, ...(await announce(target, revocation)) };
}

/** Publishes a message to every API process; a failure is reported, not thrown (the reconcile bounds it). */
async function announce(target: { redis?: Redis | undefined; prefix: string }, message: unknown): Promise<{ announced: boolean; error?: string }> {
  if (!target.redis) return { announced: false, error: 'no Redis connection' };
  try {
    await target.redis.publish(revocationChannel(target.prefix), JSON.stringify(message));
    return { announced: true };
  } catch (e) {
    return { announced: false, error: (e as Error).message };
  }
}

/** A tenant's revocation as the operator's listing shows it (`npm run token -- revocations`). */
export interface RevocationRecord {
  id: string;
  jti: string | null;
  subject: string | null;
  not_before: string | null;
  expires_at: string | null;
  revoked_by: string;
  reason: string | null;
  created_at: string;
  lifted_at: string | null;
  lifted_by: string | null;
}

/** Runs `fn` on a connection of the owner role bound to `tenantId` (the isolation policy admits its rows), in one transaction. */
async function asOwnerFor<T>(ownerUrl: string, tenantId: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client(pgClientConfig(ownerUrl));
  await client.connect();
  try {
    await client.query('begin');
    await client.query(`select set_config('${TENANT_SETTING}', $1, true)`, [tenantId.toLowerCase()]);
    const result = await fn(client);
    await client.query('commit');
    return result;
  } catch (e) {
    await client.query('rollback').catch(() => {});
    throw e;
  } finally {
    await client.end();
  }
}

/** A tenant's revocations, lifted ones included, newest first (as the owner role). */
export async function listRevocations(ownerUrl: string, tenantId: string): Promise<RevocationRecord[]> {
  return asOwnerFor(ownerUrl, tenantId, async (client) => {
    const { rows } = await client.query<RevocationRecord>(
      `select id, jti, subject, to_json(not_before)#>>'{}' as not_before, to_json(expires_at)#>>'{}' as expires_at, revoked_by, reason,
              to_json(created_at)#>>'{}' as created_at, to_json(lifted_at)#>>'{}' as lifted_at, lifted_by
         from token_revocations where tenant_id = $1 order by created_at desc, id`,
      [tenantId.toLowerCase()],
    );
    return rows;
  });
}

/**
 * Lifts a revocation made in error (as the owner role): the row is kept, stamped `lifted_at`/`lifted_by`
 * (the record of both acts), no longer loaded; every API process is told to reload. Returns null when
 * the tenant has no such revocation in force (unknown id, or already lifted).
 */
export async function liftRevocation(
  target: { ownerUrl: string; redis?: Redis | undefined; prefix: string },
  req: { tenantId: string; id: string; liftedBy: string },
): Promise<{ revocation: RevocationRecord; announced: boolean; error?: string } | null> {
  const tenantId = req.tenantId.toLowerCase();
  const lifted = await asOwnerFor(target.ownerUrl, tenantId, async (client) => {
    const { rows } = await client.query<RevocationRecord>(
      `update token_revocations set lifted_at = now(), lifted_by = $3 where tenant_id = $1 and id = $2 and lifted_at is null
       returning id, jti, subject, to_json(not_before)#>>'{}' as not_before, to_json(expires_at)#>>'{}' as expires_at, revoked_by, reason,
                 to_json(created_at)#>>'{}' as created_at, to_json(lifted_at)#>>'{}' as lifted_at, lifted_by`,
      [tenantId, req.id.toLowerCase(), req.liftedBy],
    );
    return rows[0] ?? null;
  });
  if (!lifted) return null;
  return { revocation: lifted, ...(await announce(target, { lifted: { tenantId, id: lifted.id } })) };
}

/**
 * The setting a prune binds (in its transaction) to the age past which every API process refuses every
 * token (the longest JWT_MAX_TOKEN_LIFETIME plus clock tolerance they declare: pruneRevocations): the
 * prune policy admits a not-before row only past it, and none while it is unset.
 */
export const TOKEN_MAX_AGE_SETTING = 'app.token_max_age';

/** How long the prune waits for a lock (token_age_limits, or a revocation row) before it gives up: PruneLockTimeoutError. */
export const PRUNE_LOCK_TIMEOUT_MS = 5_000;

/** The prune gave up waiting for a lock (PRUNE_LOCK_TIMEOUT_MS) and deleted nothing. */
export class PruneLockTimeoutError extends Error {
  constructor(lockTimeoutMs: number) {
    super(
      `gave up after ${lockTimeoutMs} ms waiting for a lock on token_age_limits or on a revocation row, and deleted nothing: another prune, or a transaction left open on those tables, holds it (API processes declaring their token age queue behind a waiting prune, so it does not wait longer). Run it again; if it keeps failing, find the holder: select pid, state, xact_start, query from pg_stat_activity where pid = any (select pid from pg_locks where relation in ('token_age_limits'::regclass, 'token_revocations'::regclass))`,
    );
    this.name = 'PruneLockTimeoutError';
  }
}

/** What a prune did, and by which token age it judged not-before rows. */
export interface PruneResult {
  /** Rows deleted: expired token ids, and not-before rows past `maxAgeSeconds`. */
  pruned: number;
  /** The token age not-before rows were judged by (seconds); null: none was deleted, `keptBecause` says why. */
  maxAgeSeconds: number | null;
  /** `no-limit`: an API process seen (or the command's own settings) enforces no limit; `none-declared`: no API process was seen within TOKEN_AGE_SEEN_WINDOW. */
  keptBecause?: 'no-limit' | 'none-declared';
  /** Distinct token ages API processes declared within TOKEN_AGE_SEEN_WINDOW (one row each), and the longest (0: no limit; null: none seen). */
  agesSeen: number;
  longestDeclared: number | null;
}

/**
 * Deletes, as the owner role, the revocations that can no longer refuse a token:
 * - a token id whose token has expired (`expires_at` passed by REVOKED_ID_KEPT_AFTER_EXPIRY);
 * - a not-before (lifted or not) older than the longest token age any API process declared within
 *   TOKEN_AGE_SEEN_WINDOW (token_age_limits: JWT_MAX_TOKEN_LIFETIME plus the clock tolerance, as that
 *   process enforces it), or `ownLimits`' if longer, plus REVOKED_ID_KEPT_AFTER_EXPIRY: every token it
 *   refuses was issued before it, and every API refuses a token that much after its `iat` anyway (the
 *   margin is for an API host whose clock runs behind the database's). None while any of them declares no
 *   limit (0), nor while no API process was seen: the command's own settings never shorten the age.
 * A not-before superseded by a later one is not deleted: lifting the later one would revive the tokens
 * only the earlier one refused (and the API holds one not-before per tenant or subject, the latest, anyway).
 * The declarations are read under a SHARE ROW EXCLUSIVE lock, so an API process declaring meanwhile waits
 * for the commit (and then loads the list as pruned), and so does a second prune: under SHARE both took the
 * lock, and each then waited for the other's to delete the rows of processes not seen within the window
 * (deleted here), "deadlock detected".
 */
export async function pruneRevocations(
  ownerUrl: string,
  ownLimits: { maxTokenLifetimeMs: number; clockToleranceMs: number },
  { lockTimeoutMs = PRUNE_LOCK_TIMEOUT_MS }: { lockTimeoutMs?: number } = {},
): Promise<PruneResult> {
  const client = new pg.Client(pgClientConfig(ownerUrl));
  await client.connect();
  try {
    await client.query('begin');
    // Every lock the prune waits for, the table's and the revocation rows', is given up after lockTimeoutMs: a
    // queued SHARE ROW EXCLUSIVE request (behind a transaction left open on the table) holds up every API
    // process's declaration behind it, so a new process would serve 503 for as long as the prune waited.
    await client.query(`select set_config('lock_timeout', $1, true)`, [`${lockTimeoutMs}ms`]);
    await client.query('lock table token_age_limits in share row exclusive mode');
    const window = `interval '${TOKEN_AGE_SEEN_WINDOW}'`;
    const { rows } = await client.query<{ apis: number; longest: number | null; unlimited: boolean | null }>(
      `select count(*)::int as apis, max(max_token_age_seconds)::float8 as longest, bool_or(max_token_age_seconds = 0) as unlimited
         from token_age_limits where seen_at > now() - ${window}`,
    );
    const seen = rows[0]!;
    const own = tokenMaxAgeSeconds(ownLimits);
    const keptBecause = seen.apis === 0 ? 'none-declared' : seen.unlimited || own === 0 ? 'no-limit' : undefined;
    const maxAgeSeconds = keptBecause ? null : Math.max(seen.longest!, own);
    // The system role's prune policy (the owner is a member of it) admits only rows past their expiry,
    // and not-before rows past the token age bound here; a row is kept as long as the loader reads it.
    if (maxAgeSeconds !== null) await client.query(`select set_config('${TOKEN_MAX_AGE_SETTING}', $1, true)`, [`${maxAgeSeconds} seconds`]);
    const { rowCount } = await client.query(
      `delete from token_revocations
        where expires_at < now() - interval '${REVOKED_ID_KEPT_AFTER_EXPIRY}'
           or not_before < now() - $1::float8 * interval '1 second' - interval '${REVOKED_ID_KEPT_AFTER_EXPIRY}'`,
      [maxAgeSeconds],
    );
    await client.query(`delete from token_age_limits where seen_at <= now() - ${window}`);
    await client.query('commit');
    return { pruned: rowCount ?? 0, maxAgeSeconds, ...(keptBecause ? { keptBecause } : {}), agesSeen: seen.apis, longestDeclared: seen.longest };
  } catch (e) {
    await client.query('rollback').catch(() => {});
    if ((e as { code?: string }).code === '55P03') throw new PruneLockTimeoutError(lockTimeoutMs);
    throw e;
  } finally {
    await client.end();
  }
}
