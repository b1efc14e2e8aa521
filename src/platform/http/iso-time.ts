import { z } from 'zod';

/** An instant as every API body writes it: ISO 8601 in UTC with milliseconds (Date.prototype.toISOString). */
export const isoTime = z.iso.datetime({ precision: 3 }).describe('ISO 8601 in UTC with milliseconds, e.g. 2026-11-24T00:34:16.083Z');

/**
 * An instant a client sends as a filter's bound: ISO 8601 with an offset (`Z` or ±hh:mm), narrowed to
 * what PostgreSQL's timestamptz reads — no year 0000 (ISO's 1 BC, which it refuses in this form) and
 * an offset within ±15:59 — so such a value is the client's 4xx (validation_failed), not a statement
 * that fails (22008, 22009) and answers 500.
 */
export const instantInput = () =>
  z.iso
    .datetime({ offset: true })
    .refine((v) => !v.startsWith('0000-'), 'must be in year 0001 or later (PostgreSQL reads no year 0000)')
    .refine((v) => Number(/[+-](\d{2}):\d{2}$/.exec(v)?.[1] ?? 0) <= 15, 'must have an offset within ±15:59 (the widest PostgreSQL reads)');

/**
 * A `+` the query parser ('simple': querystring, app.ts) read as a space, in the one place an instant
 * has one: before the offset's hh:mm at its end, after the seconds (or their fraction). Nowhere else.
 */
const OFFSET_PLUS_READ_AS_SPACE = /(?<=\d) (\d{2}:\d{2})$/;

/**
 * instantInput for a query parameter: `?created_after=2026-01-01T00:00:00+02:00` sent unencoded (the
 * canonical form is `%2B02:00`) arrives as `…00:00:00 02:00`; that one space is read back as the `+`
 * it was, and the value is then validated as strictly as any instant (any other space is refused).
 */
export const queryInstantInput = () => z.preprocess((v) => (typeof v === 'string' ? v.replace(OFFSET_PLUS_READ_AS_SPACE, '+$1') : v), instantInput());

/** PostgreSQL's timestamps (a Date, or the text json_agg writes: …852947+00:00) in the API's form. */
export function toIsoTime(v: Date | string): string {
  return new Date(v).toISOString();
}

export function toIsoTimeOrNull(v: Date | string | null | undefined): string | null {
  return v === null || v === undefined ? null : toIsoTime(v);
}
