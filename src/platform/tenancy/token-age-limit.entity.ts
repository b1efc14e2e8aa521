import { defineEntity, p } from '@mikro-orm/core';

/**
 * The most rows `token_age_limits` takes (the trigger `declarations_capped`): a new declared age past it is
 * refused (54000), a declaration of an age already there (every process's upsert) never is. The API processes
 * of a deployment declare one row per distinct token age in the window (a handful, a limit changed now and
 * then); the application role inserting rows of its own makes it no larger than this.
 */
export const TOKEN_AGE_DECLARATIONS_MAX = 100;

/**
 * How long after an API process last declared the token age it enforces (token_age_limits) the prune
 * still goes by it. A live process declares again at every reconcile (TOKEN_REVOCATION_RECONCILE, 1 h at
 * most), so a row this old is a process gone for days; one stopped for less still counts, in case it
 * comes back with its settings (ADR 0018, amendment "The prune reads the APIs' limits").
 */
export const TOKEN_AGE_SEEN_WINDOW = '7 days';

/**
 * What a refused new age (54000) tells the operator: the rows not seen within TOKEN_AGE_SEEN_WINDOW are
 * safe to delete (the prune reads none of them, and deletes them itself), how to see them, and what a
 * table full of ages seen within the window means. The trigger's hint, and the API's error (declareTokenAge).
 */
export const DECLARATIONS_FULL_HINT =
  `Rows not seen within ${TOKEN_AGE_SEEN_WINDOW} are safe to delete (the prune ignores them): as the owner (MIGRATION_DATABASE_URL), ` +
  `see them with select * from token_age_limits where seen_at <= now() - interval ''${TOKEN_AGE_SEEN_WINDOW}'' order by seen_at; ` +
  `npm run token -- prune-revocations deletes them (or: delete from token_age_limits where seen_at <= now() - interval ''${TOKEN_AGE_SEEN_WINDOW}''). ` +
  `None: every row was declared within ${TOKEN_AGE_SEEN_WINDOW}, far more ages than web processes declare, so the application role inserted them: ` +
  `delete only ages no web process enforces (each logs its max_token_age_seconds in "token revocations loaded"), and find what inserts them. ` +
  `A refused process declares again at its next reconcile (TOKEN_REVOCATION_RECONCILE)`;

/** A declaration of an age already there: its row's seen_at moved (seen_now), the insert skipped. */
const SEEN_AGAIN =
  'if exists (select 1 from token_age_limits where max_token_age_seconds = new.max_token_age_seconds) then ' +
  'update token_age_limits set seen_at = now() where max_token_age_seconds = new.max_token_age_seconds; return null; end if; ';

/**
 * The token age the API processes enforce (ADR 0018, amendments "The prune reads the APIs' limits" and
 * "One row per declared age"): JWT_MAX_TOKEN_LIFETIME plus JWT_CLOCK_TOLERANCE in whole seconds, 0 for no
 * limit. One row per distinct age (the key): every API process upserts its age's row as its revocation list
 * is first loaded, and moves its `seen_at` at every reconcile (TOKEN_REVOCATION_RECONCILE) — a restart, or a
 * second process with the same settings, adds no row. `npm run token -- prune-revocations` deletes a
 * not-before revocation only past the longest age seen within TOKEN_AGE_SEEN_WINDOW, and none while one is
 * 0 or none was seen: the command's own environment can lengthen that age, never shorten it.
 * No tenant_id and no tenant data: APP_UNTENANTED_GRANTS lets the application role read and insert rows
 * and update `seen_at` alone (APP_UNTENANTED_UPDATE_COLUMNS), so no code of the application can shorten a
 * declared age; the trigger `seen_now` makes every update's `seen_at` the database's time (an insert's at
 * most that), so none can age a row out of the window either, nor keep one in it for ever; and
 * `declarations_capped` bounds the rows it can insert (TOKEN_AGE_DECLARATIONS_MAX).
 */
export const TokenAgeLimitRow = defineEntity({
  name: 'TokenAgeLimit',
  tableName: 'token_age_limits',
  properties: {
    /** The age past which the processes refuse every token, in seconds (limit plus tolerance); 0: no limit. */
    maxTokenAgeSeconds: p.bigint('number').primary().autoincrement(false),
    /**
     * The instance id (host, pid, a random part) of the API process that first declared it: for the operator.
     * Unique: the previous release's declaration (`on conflict (instance)`) needs it to plan (see declarations_capped).
     */
    instance: p.string().length(255).unique(),
    /** When it was first declared (the database's time). */
    publishedAt: p.datetime(),
    /** When an API process last declared it (the database's time): a row older than the window is ignored. */
    seenAt: p.datetime(),
  },
  checks: [{ name: 'token_age_limits_max_token_age_seconds_check', expression: 'max_token_age_seconds >= 0' }],
  triggers: [
    {
      name: 'seen_now',
      timing: 'before',
      events: ['insert', 'update'],
      // An update's seen_at is now(); an insert's at most now(): a row seen in the future would count for
      // ever (never past the window, never removed). One in the past only counts less.
      body: "new.seen_at := case when tg_op = 'INSERT' then least(new.seen_at, now()) else now() end; return new;",
    },
    {
      // An age already there is seen again (its seen_at moved, by seen_now) and the insert skipped: what the
      // upsert's conflict does, and what makes the previous release's per-process insert (on conflict
      // (instance), during a roll) land on its age's row. Checked again once the lock is held: two first
      // declarations of one age at once both passed the first check, and the second to get the lock inserted
      // after the first had committed the row — 23505 on the key, which the previous release's statement does
      // not absorb. A new age past TOKEN_AGE_DECLARATIONS_MAX rows is refused; the count is taken under a
      // transaction lock, so inserts of new ages are counted one after the other. (A READ COMMITTED statement
      // sees the rows committed before it got the lock; a REPEATABLE READ transaction may not: at most one row
      // over per such transaction running at once, and each later one counts them.) Rows not seen within the
      // window count too: the application role may not delete them (the refusal's hint says who does).
      name: 'declarations_capped',
      timing: 'before',
      events: ['insert'],
      body:
        SEEN_AGAIN +
        "perform pg_advisory_xact_lock(hashtext('dealix:token_age_limits')); " +
        SEEN_AGAIN +
        `if (select count(*) from token_age_limits) >= ${TOKEN_AGE_DECLARATIONS_MAX} then ` +
        `raise exception using errcode = '54000', message = 'token_age_limits holds ${TOKEN_AGE_DECLARATIONS_MAX} declared token ages, the most it takes (ADR 0018): a new one is refused', ` +
        `hint = '${DECLARATIONS_FULL_HINT}'; end if; ` +
        'return new;',
    },
  ],
});
