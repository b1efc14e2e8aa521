import { z, type ZodType } from 'zod';
import { ValidationError } from '../errors/app-error.ts';

/**
 * Keyset cursors for lists ordered newest first by (created_at, id): opaque to clients (base64url of
 * the last item's time and id), stable while new items arrive.
 */
export interface Cursor {
  at: string;
  id: string;
}

const isIssuedTime = (at: string) => /^[12]\d{3}-/.test(at) && !Number.isNaN(Date.parse(at)) && new Date(at).toISOString() === at;

/** A page of a newest-first list, as the API answers it: `next_cursor` reads the page after it. */
export function pageSchema<T extends ZodType>(item: T) {
  return z.strictObject({
    items: z.array(item),
    next_cursor: z.string().nullable().describe('Pass as `cursor` for the next page; null on the last page'),
  });
}

const PAGE_LIMIT_MAX = 100;

/**
 * A list's `limit` query parameter: plain decimal digits, 1 to 100, `fallback` when absent. Not
 * z.coerce.number(): Number() also reads `0x10`, `1e1`, `+5`, `5.0` and ` 5`, which no client means as
 * a page size. Published as an integer 1–100 (the string is turned into a number before that schema).
 */
export function pageLimit(fallback: number) {
  const digits = (v: unknown) => (typeof v === 'string' && /^[0-9]+$/.test(v) ? Number(v) : v);
  return z
    .preprocess(digits, z.number({ error: `a whole number from 1 to ${PAGE_LIMIT_MAX}, in decimal digits` }).int().min(1).max(PAGE_LIMIT_MAX))
    .default(fallback);
}

/** The cursor after `last`, when the page was full and more may follow; null otherwise. */
export function nextCursor(last: { created_at: Date | string; id: string } | undefined, more: boolean): string | null {
  return more && last ? Buffer.from(`${new Date(last.created_at).toISOString()}|${last.id}`).toString('base64url') : null;
}

/**
 * The 400 of a cursor not shaped as this API encodes one. Its words claim only what is checked: the
 * shape. Not "not a cursor returned by this API": a well-shaped cursor the API never issued passes
 * (readCursor), and a client whose issued cursor was altered on its way back (re-encoded, truncated,
 * padded) should be told to send it unchanged, not that the API never gave it.
 */
const malformed = () => new ValidationError('Invalid cursor', [{ path: 'cursor', message: "malformed cursor: pass a page's next_cursor unchanged" }]);

/**
 * The fields of a cursor as this API encodes them (base64url, no padding, `|` between fields), or a
 * 400. Node's base64url decoder skips what is not in its alphabet (`.`, `~`, `=`) and ignores a
 * truncated last character, so text that only decodes to a cursor is not one: it must be exactly the
 * encoding of what it decodes to.
 */
function cursorFields(raw: string): string[] {
  const text = Buffer.from(raw, 'base64url').toString('utf8');
  if (Buffer.from(text, 'utf8').toString('base64url') !== raw) throw malformed();
  return text.split('|');
}

/**
 * Reads a cursor shaped as this API encodes one; anything else is a 400 (Date.parse accepts much
 * PostgreSQL refuses: "1", year 275760; a field more). The shape only, not who issued it: a well-shaped
 * cursor the API never issued, or another newest-first list's, is a position like any (RLS still applies).
 */
export function readCursor(raw: string | undefined): Cursor | undefined {
  if (raw === undefined) return undefined;
  const [at, id, ...rest] = cursorFields(raw);
  if (!at || !id || rest.length || !isIssuedTime(at) || !z.string().uuid().safeParse(id).success) throw malformed();
  return { at, id };
}

/**
 * The `where` of a newest-first page: the caller's conditions, then the status filter and the raw
 * cursor's keyset condition when given (a cursor not shaped as this API encodes one is a 400); their values are
 * appended to `params`, followed by the page size plus one (the extra row says whether more follow).
 */
export function pageWhere(where: string, params: unknown[], query: { status?: string | undefined; cursor?: string | undefined; limit: number }): string {
  const after = readCursor(query.cursor);
  let out = where;
  if (query.status) {
    out += ' and status = ?';
    params.push(query.status);
  }
  if (after) {
    out += ' and (created_at, id) < (?::timestamptz, ?::uuid)';
    params.push(after.at, after.id);
  }
  params.push(query.limit + 1);
  return out;
}

/**
 * Cursors for lists ordered by a UUID key ascending (the operator's tenant-limits list, by tenant id):
 * as opaque as the others (base64url of the last item's key), stable under any write that does not
 * change a key. The cursor after `lastKey` when the page was full; null otherwise.
 */
export function nextKeyCursor(lastKey: string | undefined, more: boolean): string | null {
  return more && lastKey ? Buffer.from(`k|${lastKey}`).toString('base64url') : null;
}

/** Reads a key cursor shaped as this API encodes one; anything else (a time cursor of another list included) is a 400. */
export function readKeyCursor(raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  const [tag, key, ...rest] = cursorFields(raw);
  if (tag !== 'k' || !key || rest.length || !z.string().uuid().safeParse(key).success) throw malformed();
  return key.toLowerCase();
}
