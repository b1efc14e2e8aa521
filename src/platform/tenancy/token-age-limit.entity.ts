import { defineEntity, p } from '@mikro-orm/core';

/**
 * The token age each API process enforces (ADR 0018, amendment "The prune reads the APIs' limits"):
 * JWT_MAX_TOKEN_LIFETIME plus JWT_CLOCK_TOLERANCE in whole seconds, 0 for no limit. One row per API
 * process (`instance`, the container's instance id), written as its revocation list is first loaded and
 * seen again at every reconcile (TOKEN_REVOCATION_RECONCILE). `npm run token -- prune-revocations` deletes
 * a not-before revocation only past the longest age any API seen within TOKEN_AGE_SEEN_WINDOW declares,
 * and none while one declares no limit or none was seen: the command's own environment can lengthen that
 * age, never shorten it.
 * No tenant_id and no tenant data: APP_UNTENANTED_GRANTS lets the application role read and insert rows
 * and update `seen_at` alone (APP_UNTENANTED_UPDATE_COLUMNS), so no code of the application can shorten a
 * process's declared age; and the trigger `seen_now` makes every update's `seen_at` the database's time (an
 * insert's at most that), so none can age a row out of the window either, nor keep one in it for ever.
 */
export const TokenAgeLimitRow = defineEntity({
  name: 'TokenAgeLimit',
  tableName: 'token_age_limits',
  properties: {
    /** The API process's instance id (host, pid, a random part): a new row at each start. */
    instance: p.string().length(255).primary(),
    /** The age past which the process refuses every token, in seconds (limit plus tolerance); 0: no limit. */
    maxTokenAgeSeconds: p.bigint('number'),
    /** When the process first declared it (the database's time). */
    publishedAt: p.datetime(),
    /** When the process last declared it (the database's time): a row older than the window is ignored. */
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
  ],
});
