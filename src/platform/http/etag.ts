import { hash } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';

/** The weak ETag of an empty body, as the `etag` package writes it. */
const EMPTY = 'W/"0-2jmj7l5rSw0yVb/vlWAYkK/YBwk"';

/**
 * Express's default ETag ('weak': `W/"<length in hex>-<SHA-1 in base64, 27 characters>"`, from the
 * `etag` package), byte for byte, with the one-shot `crypto.hash` instead of a Hash object per response:
 * Express computes it for every response with a body, a POST's 202 too, and building the Hash object
 * was most of its cost (docs/performance-history.md, session 23). Computed for reads only (readETags).
 */
export function weakETag(body: string | Buffer, encoding?: BufferEncoding): string {
  const buf = Buffer.isBuffer(body) ? body : Buffer.from(body, encoding);
  if (buf.length === 0) return EMPTY;
  return `W/"${buf.length.toString(16)}-${hash('sha1', buf, 'base64').slice(0, 27)}"`;
}

/**
 * A read's ETag: set on a GET's (and HEAD's) 2xx answer before Express sends it, so Express's freshness
 * check answers a matching If-None-Match 304 as before. Express's own `etag` setting is off (app.ts): it
 * put one on every answer with a body — a write's 202, a 201 holding a webhook secret, a replay, a
 * problem — where it validates nothing (there is nothing to send back in If-None-Match) and docs/api.md
 * and the OpenAPI document promise it on a read's 200 and 304 only.
 */
export function readETags(req: Request, res: Response, next: NextFunction): void {
  if (req.method === 'GET' || req.method === 'HEAD') {
    const send = res.send;
    res.send = function sendWithETag(this: Response, body?: unknown) {
      if ((typeof body === 'string' || Buffer.isBuffer(body)) && this.statusCode >= 200 && this.statusCode < 300 && !this.get('ETag')) {
        this.set('ETag', weakETag(body, 'utf8'));
      }
      return send.call(this, body);
    };
  }
  next();
}
