import { isUtf8 } from 'node:buffer';
import type { NextFunction, Request, Response } from 'express';
import { AppError, ValidationError } from '../errors/app-error.ts';

// NUL, or a UTF-16 surrogate without its partner: valid in JSON text, but PostgreSQL text and jsonb
// cannot hold either, so such a body would fail deep inside a handler's transaction as a 500.
const UNSTORABLE = /\u0000|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** True when `text` holds what PostgreSQL text cannot: a NUL or an unpaired UTF-16 surrogate. */
export const isUnstorableText = (text: string): boolean => UNSTORABLE.test(text);

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/**
 * `text` as PostgreSQL text and jsonb can store it, at most `max` UTF-16 code units long: its NULs
 * removed, each unpaired surrogate replaced by U+FFFD (String.prototype.toWellFormed's), and cut on a
 * character's boundary — a plain `slice(0, max)` cuts a character outside the BMP in two when its pair
 * straddles `max`, leaving a lone surrogate that jsonb refuses (22P02), as it refuses a NUL (22P05).
 */
export function storableText(text: string, max: number): string {
  let s = text.replaceAll('\u0000', '').replace(LONE_SURROGATE, '\ufffd');
  if (s.length > max) s = s.slice(0, /[\ud800-\udbff]/.test(s[max - 1] ?? '') ? max - 1 : max);
  return s;
}

/** The path of the first key or string in `value` that PostgreSQL cannot store, or undefined. */
export function findUnstorableText(value: unknown): string | undefined {
  // Iterative: a body of 64 kB can nest tens of thousands of levels deep.
  const stack: Array<[unknown, string]> = [[value, '']];
  while (stack.length > 0) {
    const [v, path] = stack.pop()!;
    if (typeof v === 'string') {
      if (UNSTORABLE.test(v)) return path || '(root)';
    } else if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) stack.push([v[i], join(path, String(i))]);
    } else if (v !== null && typeof v === 'object') {
      for (const [k, child] of Object.entries(v)) {
        if (UNSTORABLE.test(k)) return join(path, '(key)');
        stack.push([child, join(path, k)]);
      }
    }
  }
  return undefined;
}

const join = (path: string, key: string) => (path.length > 200 ? path : path ? `${path}.${key}` : key);

/** Refuses a parsed JSON body holding text the database cannot store: 400, before any handler runs. */
export function rejectUnstorableText(req: Request, _res: Response, next: NextFunction): void {
  const path = req.body === undefined ? undefined : findUnstorableText(req.body);
  if (path === undefined) return next();
  next(
    new ValidationError('Invalid request body', [
      { path: path.slice(0, 200), message: 'contains a NUL character or an unpaired UTF-16 surrogate, which cannot be stored' },
    ]),
  );
}

/**
 * express.json()'s `verify`: refuses a body sent as UTF-8 (the default charset) whose bytes are not
 * UTF-8 — a stray `0xFF`, a truncated multi-byte sequence, an overlong form (`C0 AF`), an encoded
 * surrogate. Decoding would read each as U+FFFD: the text stored would not be the text sent, and two
 * bodies differing only in their bad bytes would be one request under one Idempotency-Key. It sees the
 * bytes after any Content-Encoding is undone (body-parser inflates first), and not a body sent in
 * another charset (`utf-16`). 400 malformed_json: JSON text is UTF-8 (RFC 8259, section 8.1).
 */
export function refuseInvalidUtf8(_req: unknown, _res: unknown, buf: Buffer, encoding: string): void {
  if (encoding !== 'utf-8' || isUtf8(buf)) return;
  throw new AppError('malformed_json', 'Bad Request', {
    status: 400,
    retryable: false,
    detail: 'The request body is not valid UTF-8 (JSON text is UTF-8; its bytes are not repeated here).',
  });
}

/** What a body-parser parse error says instead of V8's message, which quotes the body it failed on. */
export const UNPARSEABLE_BODY_MESSAGE = 'The request body is not valid JSON (its text is not repeated here).';

/**
 * `parse` (express.json()) with its parse error's message and stack no longer quoting the body. V8's
 * JSON.parse error quotes the input around the failure (a short body whole), and Express's
 * instrumentation records what a route hands to `next()` as an exception event and status message: a
 * fragment of a tenant's submission would reach the collector. The error keeps its type, status and
 * `body` (to-problem.ts answers it 400 malformed_json as before); only its text changes.
 */
export function withoutQuotedBody(parse: (req: Request, res: Response, next: NextFunction) => void) {
  return function parseJsonBody(req: Request, res: Response, next: NextFunction): void {
    parse(req, res, (err?: unknown) => {
      const e = err as { type?: unknown; message?: unknown; stack?: unknown } | undefined;
      if (e && e.type === 'entity.parse.failed' && typeof e.message === 'string') {
        const quoted = e.message;
        e.message = UNPARSEABLE_BODY_MESSAGE;
        if (typeof e.stack === 'string') e.stack = quoted ? e.stack.split(quoted).join(UNPARSEABLE_BODY_MESSAGE) : e.stack;
      }
      next(err);
    });
  };
}
