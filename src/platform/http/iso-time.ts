import { z } from 'zod';

/** An instant as every API body writes it: ISO 8601 in UTC with milliseconds (Date.prototype.toISOString). */
export const isoTime = z.iso.datetime({ precision: 3 }).describe('ISO 8601 in UTC with milliseconds, e.g. 2026-11-24T00:34:16.083Z');

/** PostgreSQL's timestamps (a Date, or the text json_agg writes: …852947+00:00) in the API's form. */
export function toIsoTime(v: Date | string): string {
  return new Date(v).toISOString();
}

export function toIsoTimeOrNull(v: Date | string | null | undefined): string | null {
  return v === null || v === undefined ? null : toIsoTime(v);
}
