import { hash } from 'node:crypto';

/** The weak ETag of an empty body, as the `etag` package writes it. */
const EMPTY = 'W/"0-2jmj7l5rSw0yVb/vlWAYkK/YBwk"';

/**
 * Express's default ETag ('weak': `W/"<length in hex>-<SHA-1 in base64, 27 characters>"`, from the
 * `etag` package), byte for byte, with the one-shot `crypto.hash` instead of a Hash object per response:
 * Express computes it for every response with a body, a POST's 202 too, and building the Hash object
 * was most of its cost (docs/performance.md, session 23). Set as the app's `etag` setting.
 */
export function weakETag(body: string | Buffer, encoding?: BufferEncoding): string {
  const buf = Buffer.isBuffer(body) ? body : Buffer.from(body, encoding);
  if (buf.length === 0) return EMPTY;
  return `W/"${buf.length.toString(16)}-${hash('sha1', buf, 'base64').slice(0, 27)}"`;
}
