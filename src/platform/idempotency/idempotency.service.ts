import { randomUUID } from 'node:crypto';
import type { EntityManager } from '@mikro-orm/postgresql';
import { ValidationError } from '../errors/app-error.ts';
import { canonicalJson, sha256Hex } from './canonical-json.ts';
import { DEFER_UNTIL_NEXT, Prelude } from '../db/coalescing-client.ts';
import { bindParameters } from '../db/binding-driver.ts';

export const IDEMPOTENCY_HEADER = 'Idempotency-Key';
export const REPLAYED_HEADER = 'Idempotent-Replayed';
/**
 * Response headers worth replaying; everything else is per-request (ids, dates, tracing). Cache-Control
 * too: an answer a route marks `no-store` (one holding a secret) is not cached in its replay either.
 */
export const REPLAYABLE_HEADERS = ['content-type', 'location', 'cache-control'] as const;

export interface IdempotencyRecord {
  id: string;
  tenantId: string;
  principal: string;
  key: string;
  method: string;
  route: string;
  fingerprint: string;
  status: 'in_progress' | 'completed';
  responseStatus: number | null;
  /** The stored body as the exact JSON text first sent (replayed byte for byte), or null for none. */
  responseBody: unknown;
  responseHeaders: Record<string, string> | null;
  lockedAt: Date | null;
  /**
   * How long before the read the claim was taken, by the database's clock (the one that stamped
   * locked_at; negative if it stamped it ahead of the read), or null with no claim. What a 409's
   * Retry-After is counted from, never the API's clock, which may run apart from the database's.
   */
  lockedForMs: number | null;
  /**
   * The claim's lease token: locked_at in epoch microseconds. Only the holder of the current lease may
   * complete or release the record, so a slow first attempt cannot overwrite or free a retry's takeover.
   */
  lease: string | null;
  createdAt: Date;
  expiresAt: Date;
}

/** What store and release need from a claimed record. */
/**
 * What completing or releasing a claim needs. Its statements name the key's unique index (tenant,
 * principal, key) rather than the id: the table's only tenant-leading index, so even a plan cached
 * before the table had statistics reaches the one row (a plan by id could be made onto that index by
 * tenant alone, and then read all of the tenant's keys on every request; docs/performance-history.md).
 */
export type HeldClaim = Pick<IdempotencyRecord, 'id' | 'lease' | 'tenantId' | 'principal' | 'key'>;

export type ClaimResult =
  | { outcome: 'claimed'; record: IdempotencyRecord; hash: string }
  | { outcome: 'replay'; record: IdempotencyRecord }
  /** No record when the holder's transaction kept the row locked past the lock timeout. */
  | { outcome: 'in_progress'; record?: IdempotencyRecord; retryAfterSeconds: number }
  | { outcome: 'mismatch'; record: IdempotencyRecord };

/** What a claim names: the record's key (tenant, principal, key) and the request it is for. */
export type ClaimInput = Pick<IdempotencyRecord, 'tenantId' | 'principal' | 'key' | 'method' | 'route' | 'fingerprint'>;

/**
 * Parses the Idempotency-Key header: an RFC 8941 sf-string (`"abc"`) or, leniently, a bare value
 * (`abc`), 1–255 printable ASCII characters, no comma in a bare one. Returns undefined when absent;
 * throws 400 when malformed.
 */
export function parseIdempotencyKey(raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  // HTTP's optional whitespace only (space, tab; RFC 9110 section 5.5), not String.prototype.trim's: that
  // would strip a no-break space too (a header's obs-text byte 0xA0), reading `abc<0xA0>` as the key `abc`.
  const trimmed = trimOws(raw);
  // A comma outside quotes separates two field values (RFC 9110 section 5.3): two header lines a proxy
  // folded into one, `k1, k2`, refused as the two lines are, never the one key "k1, k2".
  if (!trimmed.startsWith('"') && trimmed.includes(',')) throw sentMoreThanOnce();
  const value = trimmed.startsWith('"') ? parseSfString(trimmed) : trimmed;
  if (value.length === 0) throw badKey('is empty');
  if (value.length > 255) throw badKey('is longer than 255 characters');
  if (!/^[\x20-\x7e]+$/.test(value)) throw badKey('must be printable ASCII');
  return value;
}

/** `s` without leading and trailing spaces and tabs (a loop: a regex for the trailing run is quadratic on a long run of them). */
function trimOws(s: string): string {
  const ows = (c: string | undefined) => c === ' ' || c === '\t';
  let start = 0;
  let end = s.length;
  while (start < end && ows(s[start])) start++;
  while (end > start && ows(s[end - 1])) end--;
  return s.slice(start, end);
}

/**
 * The parameters RFC 8941 allows after an Item's bare item (section 3.1.2): `;key` or `;key=value`, each
 * value a bare item (integer, decimal, string, token, byte sequence, boolean). They say nothing the key
 * needs, so they are accepted and ignored; anything else after the closing quote is refused.
 */
const SF_PARAMETER =
  /;[ ]*[a-z*][a-z0-9_.*-]*(?:=(?:-?(?:\d{1,12}\.\d{1,3}|\d{1,15})|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"|[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*|:[A-Za-z0-9+/=]*:|\?[01]))?/.source;
const SF_PARAMETERS = new RegExp(`^(?:${SF_PARAMETER})+$`);
/** The string's parameters, if any, then a list's comma (RFC 8941 section 3.1): a second member follows. */
const SF_LIST_CONTINUES = new RegExp(`^(?:${SF_PARAMETER})*[ \\t]*,`);

/** RFC 8941 section 4.2.5: a quoted string whose only escapes are \" and \\, then nothing but the Item's parameters. */
function parseSfString(input: string): string {
  let out = '';
  for (let i = 1; i < input.length; i++) {
    const ch = input[i]!;
    if (ch === '\\') {
      const next = input[++i];
      if (next !== '"' && next !== '\\') throw badKey('is not a valid Structured Field string');
      out += next;
    } else if (ch === '"') {
      const rest = input.slice(i + 1);
      if (rest !== '' && !SF_PARAMETERS.test(rest)) throw SF_LIST_CONTINUES.test(rest) ? sentMoreThanOnce() : badKey('is not a valid Structured Field string');
      return out;
    } else {
      if (ch < '\x20' || ch > '\x7e') throw badKey('must be printable ASCII');
      out += ch;
    }
  }
  throw badKey('is not a valid Structured Field string');
}

function badKey(why: string): ValidationError {
  return new ValidationError(`The ${IDEMPOTENCY_HEADER} header ${why}.`, [{ path: IDEMPOTENCY_HEADER, message: why }]);
}

/**
 * Two keys: two header lines, or one holding a list (`k1, k2`, `"k1", "k2"`), which is what a proxy makes
 * of two lines (RFC 9110 section 5.3) and is not one Structured Field string.
 */
export function sentMoreThanOnce(): ValidationError {
  return new ValidationError(`Send exactly one ${IDEMPOTENCY_HEADER} header.`, [
    { path: IDEMPOTENCY_HEADER, message: 'sent more than once (two header lines, or a comma-separated list in one: not a single Structured Field string)' },
  ]);
}

/**
 * What a keyed request's fingerprint covers besides its method and route (docs/api.md): its validated
 * path parameters, query and body. An empty query is left out, so a request without one fingerprints
 * exactly as before the query was covered: every key stored until then was for a request without one
 * (a mutating route takes no query parameter: one sent is refused, 400, before the key is looked at), so
 * its faithful retry still matches — no fingerprint version needed. A route that declares a query
 * parameter has it in its fingerprint, in any order (RFC 8785 sorts the keys).
 */
export function fingerprintedParts(params: unknown, query: Record<string, unknown> | undefined, body: unknown): Record<string, unknown> {
  return { params, body: body ?? null, ...(query && Object.keys(query).length > 0 ? { query } : {}) };
}

/** SHA-256 over the canonical form of method + route + JSON body: key order and whitespace do not matter. */
export function requestFingerprint(method: string, route: string, body: unknown): string {
  return sha256Hex(canonicalJson({ method: method.toUpperCase(), route, body: body ?? null }));
}

/**
 * The submission's idempotency hash: what keys its durable run and its BullMQ job ids. Derived from
 * the record's id, so a retry that takes over an abandoned record (crash window) maps to the same run,
 * while a key reused after its TTL is a new submission.
 */
export function submissionHash(tenantId: string, recordId: string): string {
  return sha256Hex(`${tenantId}\n${recordId}`);
}

const COLUMNS = `id, tenant_id, principal, idempotency_key, method, route, fingerprint, status, response_status, response_body,
  response_headers, locked_at, (extract(epoch from locked_at) * 1000000)::bigint::text as lease,
  (extract(epoch from now() - locked_at) * 1000)::float8 as locked_for_ms, created_at, expires_at`;
/** Matches a record only while the given lease is still the current one. */
const LEASE_IS = `(extract(epoch from locked_at) * 1000000)::bigint = ?::bigint`;
const LOCK_NOT_AVAILABLE = '55P03';
/** In the error PostgreSQL raises when a completion finds its lease lost (see store). */
export const LEASE_LOST = 'idempotency record vanished, or its lease passed to a retry, while in progress';

/** Whether `e` is the error of a completion that found its lease lost (see store): its transaction rolled back. */
export function isLeaseLost(e: unknown): boolean {
  return inCauses(e, (cur) => String((cur as { message?: unknown }).message ?? '').includes(LEASE_LOST));
}

interface Row {
  id: string;
  tenant_id: string;
  principal: string;
  idempotency_key: string;
  method: string;
  route: string;
  fingerprint: string;
  status: 'in_progress' | 'completed';
  response_status: number | null;
  response_body: unknown;
  response_headers: Record<string, string> | null;
  locked_at: Date | string | null;
  lease: string | null;
  locked_for_ms: number | null;
  created_at: Date | string;
  expires_at: Date | string;
  inserted?: boolean;
  expired?: boolean;
  lease_expired?: boolean;
}

const toDate = (v: Date | string) => (v instanceof Date ? v : new Date(v));
function toRecord(r: Row): IdempotencyRecord {
  return {
    id: r.id,
    tenantId: r.tenant_id,
    principal: r.principal,
    key: r.idempotency_key,
    method: r.method,
    route: r.route,
    fingerprint: r.fingerprint,
    status: r.status,
    responseStatus: r.response_status,
    responseBody: r.response_body,
    responseHeaders: r.response_headers,
    lockedAt: r.locked_at === null ? null : toDate(r.locked_at),
    lease: r.lease,
    lockedForMs: r.locked_for_ms,
    createdAt: toDate(r.created_at),
    expiresAt: toDate(r.expires_at),
  };
}

export interface IdempotencyServiceOptions {
  /** How long a key is kept (published TTL). */
  ttlMs: number;
  /** How long an in-progress claim stands before a retry may take it over. */
  leaseMs: number;
  /** Lock timeout of the claim, so a concurrent duplicate gets 409 at once. */
  lockTimeoutMs?: number;
  /**
   * How far ahead of the database's clock a claim's locked_at may be and still hold its key (default
   * 1 s); one further ahead was never taken at that time, and a retry takes it over at once (see
   * LEASE_EXPIRED).
   */
  clockStepToleranceMs?: number;
}

/**
 * Whether a claim no longer holds its key (parameters: the lease, then the clock-step tolerance, in ms):
 * it has none, its lease ran out by the database's clock, or it is stamped further ahead of that clock
 * than the tolerance. The database stamps every claim with its own now() (a transaction's start), which
 * is never ahead of its clock_timestamp() later on, so a locked_at past that was not stamped when it
 * says: an older release stamped it with an API process's clock running ahead, or the database's clock
 * stepped back since (a failover to a server whose clock is behind; its connections, the claim holder's
 * with them, ended). Counted from such a time, the lease would hold the key for the lease plus however
 * far ahead it is (an hour, for a clock an hour off) while nothing works on it. The tolerance keeps a
 * claim of an attempt in flight across a small step back (an NTP step). Taking over a claim that was in
 * fact alive is safe, only wasted: its holder's completion finds the lease gone and rolls back (store).
 * clock_timestamp(), not now(): a takeover transaction's now() may predate a claim a concurrent request
 * stamped and committed since, which is not ahead of anything.
 */
const LEASE_EXPIRED = `(locked_at is null or locked_at < now() - ? * interval '1 millisecond'
                        or locked_at > clock_timestamp() + ? * interval '1 millisecond')`;

/** The claim: insert the key, or return the record that holds it (with whether it expired or its lease ran out). */
const INSERT_OR_FIND = `with ins as (
           insert into idempotency_keys (id, tenant_id, principal, idempotency_key, method, route, fingerprint, status, locked_at, created_at, expires_at)
           values (?, ?, ?, ?, ?, ?, ?, 'in_progress', now(), now(), now() + ? * interval '1 millisecond')
           on conflict (tenant_id, principal, idempotency_key) do nothing
           returning ${COLUMNS})
         select ins.*, true as inserted, false as expired, false as lease_expired from ins
         union all
         select ${COLUMNS}, false as inserted, expires_at <= now() as expired,
                ${LEASE_EXPIRED} as lease_expired
           from idempotency_keys
          where tenant_id = ? and principal = ? and idempotency_key = ? and not exists (select 1 from ins)`;

/** In the error a claim sent as a prelude raises when the key is already there (see claimPrelude). */
const KEY_TAKEN = 'idempotency key already claimed';

/** A claim sent ahead of the handler's transaction (claimPrelude), and what it will be known as. */
export interface PendingClaim {
  prelude: Prelude;
  /** The record's id if the claim inserts it, and the submission hash derived from it. */
  recordId: string;
  hash: string;
}

/** Idempotency keys, stored per tenant under RLS: claim, get_existing, store, release. */
export class IdempotencyService {
  readonly ttlMs: number;
  readonly leaseMs: number;
  readonly lockTimeoutMs: number;
  readonly clockStepToleranceMs: number;
  constructor(opts: IdempotencyServiceOptions) {
    this.ttlMs = opts.ttlMs;
    this.leaseMs = opts.leaseMs;
    this.lockTimeoutMs = opts.lockTimeoutMs ?? 250;
    this.clockStepToleranceMs = opts.clockStepToleranceMs ?? 1000;
  }

  /**
   * Claims a key with one INSERT … ON CONFLICT DO NOTHING RETURNING in its own short transaction,
   * returning the existing record in the same statement when the key is taken. A duplicate whose
   * first attempt still holds the row (past the lock timeout) is answered in_progress at once.
   */
  async claim(em: EntityManager, input: ClaimInput): Promise<ClaimResult> {
    let row: Row | undefined;
    try {
      // The common case, a new key or a plain duplicate, in one message and one round trip; the rare
      // ones (an expired key, a lease to take over, a snapshot that missed a concurrent winner) in a
      // transaction of their own.
      row = await this.claimInOneMessage(em, input);
      if (!row || (!row.inserted && (row.expired || (row.lease_expired && row.status === 'in_progress' && row.fingerprint === input.fingerprint)))) {
        const claimEm = em.fork({ clear: true, useContext: false });
        claimEm.setSessionContext({ variables: { lock_timeout: `${this.lockTimeoutMs}ms`, synchronous_commit: 'off' } });
        row = await claimEm.transactional((tx) => this.claimRow(tx, input));
      }
    } catch (e) {
      if (hasCode(e, LOCK_NOT_AVAILABLE)) return { outcome: 'in_progress', retryAfterSeconds: 1 };
      throw e;
    }
    const record = toRecord(row);
    if (row.inserted) return { outcome: 'claimed', record, hash: submissionHash(record.tenantId, record.id) };
    return this.heldBy(record, input.fingerprint);
  }

  /**
   * What the key holds now, for an attempt whose completion found its lease lost (isLeaseLost): its
   * work rolled back, and it answers as a duplicate would — the stored outcome of the attempt that took
   * the key over, 409 while that one still runs (or the key was forgotten meanwhile), 422 if the key
   * now holds another request.
   */
  async afterLeaseLost(em: EntityManager, held: IdempotencyRecord): Promise<Exclude<ClaimResult, { outcome: 'claimed' }>> {
    const now = await this.get_existing(em, held.tenantId, held.principal, held.key);
    return now ? this.heldBy(now, held.fingerprint) : { outcome: 'in_progress', retryAfterSeconds: 1 };
  }

  /**
   * What a request under `input`'s key is answered from the key alone, when that is already settled: the
   * stored outcome (replay), or 422 when another request holds the key (mismatch). Undefined when the key
   * is free, past its TTL, or still in progress (the claim decides those: a takeover, or 409). One read,
   * no lock, nothing claimed: for a route whose slow `prepare` (a webhook URL's DNS) a replay must not wait for.
   */
  async settled(em: EntityManager, input: ClaimInput): Promise<Extract<ClaimResult, { outcome: 'replay' | 'mismatch' }> | undefined> {
    const record = await this.get_existing(em, input.tenantId, input.principal, input.key);
    if (!record) return undefined;
    const held = this.heldBy(record, input.fingerprint);
    return held.outcome === 'in_progress' ? undefined : held;
  }

  /** The answer to a request with `fingerprint` whose key `record` holds. */
  private heldBy(record: IdempotencyRecord, fingerprint: string): Exclude<ClaimResult, { outcome: 'claimed' }> {
    if (record.fingerprint !== fingerprint) return { outcome: 'mismatch', record };
    if (record.status === 'completed') return { outcome: 'replay', record };
    // The lease's time left by the database's clock, at least 1 s and at most the lease: a locked_at
    // stamped ahead of the read (a database clock stepped back since) never asks for more than a lease.
    const lease = Math.max(1, Math.ceil(this.leaseMs / 1000));
    const left = Math.ceil((this.leaseMs - (record.lockedForMs ?? 0)) / 1000);
    return { outcome: 'in_progress', record, retryAfterSeconds: Math.min(lease, Math.max(1, left)) };
  }

  /**
   * The common claim — a new key — as a prelude to the handler's transaction (coalescing-client.ts):
   * its own short transaction, committed asynchronously, with the lock timeout, sent in the same
   * message as the handler's first statements, so a keyed request costs no round trip more than an
   * unkeyed one. The claim inserts the key or raises: when the key is already there, PostgreSQL skips
   * the rest of the message, so nothing of the handler runs (not even its per-tenant lock, which a
   * duplicate must never wait for), and `claim` then says what the key holds (replay, 409, 422, or a
   * takeover). The record id is chosen here, so the handler knows its submission hash up front.
   */
  claimPrelude(em: EntityManager, input: ClaimInput): PendingClaim {
    const recordId = randomUUID();
    const platform = em.getPlatform();
    // Two statements with bound values (prepared once per connection, like every statement MikroORM
    // sends here: binding-driver.ts); written in as one text if they cannot be bound.
    const settings = ['app.tenant_id', input.tenantId, 'lock_timeout', `${this.lockTimeoutMs}ms`, 'synchronous_commit', 'off'];
    const settingsSql = 'select set_config(?, ?, true), set_config(?, ?, true), set_config(?, ?, true)';
    const claimSql = `with ins as (
           insert into idempotency_keys (id, tenant_id, principal, idempotency_key, method, route, fingerprint, status, locked_at, created_at, expires_at)
           values (?, ?, ?, ?, ?, ?, ?, 'in_progress', now(), now(), now() + ? * interval '1 millisecond')
           on conflict (tenant_id, principal, idempotency_key) do nothing
           returning ${COLUMNS})
       select ins.*, (case when ins.id is null then '${KEY_TAKEN}' else '1' end)::int = 1 as inserted
         from (select 1) one left join ins on true`;
    const claimParams = [recordId, input.tenantId, input.principal, input.key, input.method, input.route, input.fingerprint, this.ttlMs];
    const bound = [bindParameters(settingsSql, settings, platform), bindParameters(claimSql, claimParams, platform)];
    const sql = bound.every((b) => b !== undefined) ? bound : `${platform.formatQuery(settingsSql, settings)};\n${platform.formatQuery(claimSql, claimParams)}`;
    return { prelude: new Prelude(sql, 2), recordId, hash: submissionHash(input.tenantId, recordId) };
  }

  /**
   * What a sent prelude claim found: `claimed` (with its record), `in_progress` (the key's row was
   * locked past the lock timeout), `taken` (the key exists: ask `claim`), or `unknown` (not sent, or
   * the message failed for another reason — the claim may or may not have committed; its lease then
   * lets a retry take it over).
   */
  preludeOutcome(pending: PendingClaim): { outcome: 'claimed'; record: IdempotencyRecord } | { outcome: 'in_progress' | 'taken' | 'unknown' } {
    const { prelude } = pending;
    const row = prelude.result?.rows[0] as Row | undefined;
    if (row?.inserted) return { outcome: 'claimed', record: toRecord(row) };
    if (prelude.failed) {
      if (hasCode(prelude.error, LOCK_NOT_AVAILABLE)) return { outcome: 'in_progress' };
      if (String((prelude.error as { message?: unknown }).message ?? '').includes(KEY_TAKEN)) return { outcome: 'taken' };
    }
    return { outcome: 'unknown' };
  }

  /**
   * The claim's insert-or-find as one simple-protocol message of two statements, which PostgreSQL runs
   * as one implicit transaction: the first sets the tenant (RLS), the lock timeout and an asynchronous
   * commit for it alone, the second claims. The commit does not wait for the WAL flush: the handler's
   * transaction commits synchronously after it, and flushing its own commit record flushes the claim's
   * too. A crash before that loses the claim together with everything it guarded, and the client's
   * retry simply claims again (docs/performance-history.md). Undefined when the snapshot missed a winner.
   */
  private async claimInOneMessage(em: EntityManager, input: ClaimInput): Promise<Row | undefined> {
    const rows = await em.getConnection().execute<Row[]>(
      `select set_config('app.tenant_id', ?, true), set_config('lock_timeout', ?, true), set_config('synchronous_commit', 'off', true);
       ${INSERT_OR_FIND}`,
      [input.tenantId, `${this.lockTimeoutMs}ms`, ...this.insertOrFindParams(input)],
    );
    return rows[0];
  }

  /**
   * Inserts the key, takes it over (past its TTL, or a lease that ran out), or returns what holds it.
   * A takeover that matches nothing found the key changed since the statement that read it (another
   * request took it over, or the expiry job deleted it): the next statement's fresh snapshot reads it
   * again, never answering from the stale read (which would replay a forgotten response, or answer 422
   * to a duplicate of the request that now holds the key).
   */
  private async claimRow(tx: EntityManager, input: ClaimInput): Promise<Row> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const found = await this.insertOrFind(tx, input);
      if (found.inserted) return found;
      let taken: Row[];
      if (found.expired) {
        // Past its TTL the key is forgotten: the request is new, with a new record id (so a new run).
        taken = await tx.execute<Row[]>(
          `update idempotency_keys set id = ?, method = ?, route = ?, fingerprint = ?, status = 'in_progress', response_status = null,
                  response_body = null, response_headers = null, locked_at = now(), created_at = now(),
                  expires_at = now() + ? * interval '1 millisecond'
            where id = ? and expires_at <= now() returning ${COLUMNS}, true as inserted`,
          [randomUUID(), input.method, input.route, input.fingerprint, this.ttlMs, found.id],
        );
      } else if (found.fingerprint === input.fingerprint && found.status === 'in_progress' && found.lease_expired) {
        // The first attempt died (or its lease ran out): take over the same record, so the handler's
        // own idempotency (run unique per submission hash) repairs rather than duplicates.
        taken = await tx.execute<Row[]>(
          `update idempotency_keys set locked_at = now() where id = ? and status = 'in_progress'
              and ${LEASE_EXPIRED} returning ${COLUMNS}, true as inserted`,
          [found.id, this.leaseMs, this.clockStepToleranceMs],
        );
      } else return found;
      if (taken[0]) return taken[0];
    }
    throw new Error('idempotency claim found its key changing on every attempt to take it over');
  }

  /**
   * The insert, or the record that blocked it. Under READ COMMITTED the statement's snapshot predates
   * a concurrent claim that committed while the insert waited on it, so the fallback select can come
   * back empty; the next statement has a fresh snapshot and sees the winner.
   */
  private async insertOrFind(tx: EntityManager, input: ClaimInput): Promise<Row> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const rows = await tx.execute<Row[]>(INSERT_OR_FIND, this.insertOrFindParams(input));
      if (rows[0]) return rows[0];
    }
    throw new Error('idempotency claim found neither a free key nor its holder');
  }

  private insertOrFindParams(input: ClaimInput): unknown[] {
    return [randomUUID(), input.tenantId, input.principal, input.key, input.method, input.route, input.fingerprint, this.ttlMs,
      this.leaseMs, this.clockStepToleranceMs, input.tenantId, input.principal, input.key];
  }

  /** The stored record for (tenant, principal, key), or null. RLS also scopes it to the em's tenant. */
  async get_existing(em: EntityManager, tenantId: string, principal: string, key: string): Promise<IdempotencyRecord | null> {
    const rows = await em.execute<Row[]>(
      `select ${COLUMNS} from idempotency_keys where tenant_id = ? and principal = ? and idempotency_key = ? and expires_at > now()`,
      [tenantId, principal, key],
    );
    return rows[0] ? toRecord(rows[0]) : null;
  }

  /**
   * Stores the final response and completes the key: the last statement of the handler's transaction.
   * The body is kept as the exact JSON text the client received, so a replay is byte for byte the same.
   * The statement travels with the `commit` (one round trip for both, ADR 0004) and fails inside
   * PostgreSQL when the lease was lost (a retry took over, or the record vanished), which fails the
   * commit and rolls the handler's work back.
   */
  async store(em: EntityManager, claim: HeldClaim, response: { status: number; body: unknown; headers: Record<string, string> }): Promise<void> {
    const text = response.body === undefined ? null : JSON.stringify(response.body);
    // No RAISE outside PL/pgSQL: a cast that fails only when no row was updated aborts the transaction
    // with a message that says why (its operand depends on the update, so the planner cannot fold it).
    await em.execute(
      `${DEFER_UNTIL_NEXT}with done as (
         update idempotency_keys set status = 'completed', response_status = ?, response_body = ?::jsonb, response_headers = ?::jsonb, locked_at = null
          where tenant_id = ? and principal = ? and idempotency_key = ? and id = ? and status = 'in_progress' and ${LEASE_IS}
          returning id)
       select case when (select count(*) from done) = 1 then 1
                   else ('${LEASE_LOST}: ' || (select count(*) from done))::int end`,
      [response.status, text === null ? null : JSON.stringify(text), JSON.stringify(response.headers), claim.tenantId, claim.principal, claim.key, claim.id, claim.lease],
      'run',
    );
  }

  /** Releases a claim whose handler failed with a 5xx, so a retry runs again; a no-op once the lease moved on. */
  async release(em: EntityManager, claim: HeldClaim): Promise<void> {
    await em.execute(
      `delete from idempotency_keys where tenant_id = ? and principal = ? and idempotency_key = ? and id = ? and status = 'in_progress' and ${LEASE_IS}`,
      [claim.tenantId, claim.principal, claim.key, claim.id, claim.lease],
      'run',
    );
  }

  /**
   * Deletes expired keys of every tenant in batches (maintenance job, as the system role): at most
   * `maxBatches` of them, so one pass is bounded; `complete` is false when it stopped there with more,
   * perhaps, to delete (the maintenance job then queues the next pass at once).
   *
   * A batch is judged short by the keys it picked, not those it deleted (as run and webhook-delivery
   * retention, ADR 0013): a picked key can change before the batch gets its row — taken over as new by a
   * request reusing it after its TTL (a new record id and TTL), or deleted by a pass running beside this
   * one — and is then passed over. Counted by deleted keys, such a batch ended the pass as complete with
   * expired keys left and no follow-up queued: they waited for the next scheduled pass, 10 minutes on.
   * A batch that deleted none of its picks (another pass took them all) ends the pass, as complete,
   * rather than go on beside the pass that is deleting them.
   */
  async deleteExpired(systemEm: EntityManager, batchSize = 1000, maxBatches = 100): Promise<{ deleted: number; complete: boolean }> {
    let total = 0;
    for (let i = 0; i < maxBatches; i++) {
      const [batch] = await systemEm.transactional((tx) =>
        tx.execute<{ picked: number; deleted: number }[]>(
          `with picked as materialized (select id from idempotency_keys where expires_at < now() limit ?),
                gone as (delete from idempotency_keys where id in (select id from picked) returning 1)
           select (select count(*) from picked)::int as picked, (select count(*) from gone)::int as deleted`,
          [batchSize],
        ),
      );
      const { picked, deleted } = batch ?? { picked: 0, deleted: 0 };
      total += deleted;
      if (picked < batchSize || deleted === 0) return { deleted: total, complete: true };
    }
    return { deleted: total, complete: false };
  }
}

function hasCode(e: unknown, code: string): boolean {
  return inCauses(e, (cur) => (cur as { code?: unknown }).code === code);
}

/** Whether `e`, or an error in its chain of causes, is one `test` accepts. */
function inCauses(e: unknown, test: (cur: unknown) => boolean): boolean {
  for (let cur: unknown = e, depth = 0; cur && depth < 5; depth++) {
    if (test(cur)) return true;
    cur = (cur as { cause?: unknown }).cause;
  }
  return false;
}
