import http from 'node:http';
import https from 'node:https';
import { Webhook } from 'standardwebhooks';
import { propagation } from '@opentelemetry/api';
import { addressRefusal, guardedLookup, hostOf, urlRefusal, type UrlPolicy } from './ssrf.ts';
import { isIP } from 'node:net';
import type { HostResolver } from './resolve.ts';

/** One delivery attempt's outcome, as the delivery row records it. */
export interface AttemptOutcome {
  ok: boolean;
  statusCode: number | null;
  error: string | null;
  durationMs: number;
}

/**
 * The Standard Webhooks headers of a message: id, timestamp (seconds), and one signature (`v1,<base64>`)
 * per secret, space-separated — the current one first, then a rotated-out one still in its overlap
 * (ADR 0013). A receiver's `verify` accepts the message if any one of them matches the secret it holds.
 */
export function signedHeaders(secrets: readonly string[], msgId: string, body: string, at = new Date()): Record<string, string> {
  return {
    'webhook-id': msgId,
    'webhook-timestamp': String(Math.floor(at.getTime() / 1000)),
    'webhook-signature': secrets.map((secret) => new Webhook(secret).sign(msgId, at, body)).join(' '),
  };
}

/** C0 and C1 control characters and DEL: none is kept in an attempt's error text. */
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f]/g;

/**
 * An attempt's error text as the delivery row records it (`last_error`, `attempt_log`): its control characters
 * each a space. The text is the receiver's side's words (a resolver's answer, a certificate's names): a NUL in it
 * was refused by PostgreSQL (22021 in text, 22P05 in jsonb), the attempt could not be recorded, and the delivery
 * was POSTed again and again without being counted (ADR 0013, *Attempt error text*).
 */
export function attemptErrorText(error: string | null): string | null {
  return error === null ? null : error.replace(CONTROL_CHARS, ' ');
}

/** Largest part of a receiver's answer read (and then dropped): the status code is what counts. */
const MAX_ANSWER_BYTES = 64 * 1024;

/**
 * POSTs one message signed with each of `secrets` (see signedHeaders): no redirect followed (a 3xx is a failed attempt), bounded by `timeoutMs`
 * from connect to the end of the answer, the receiver's host resolved by `resolver` (no threadpool thread,
 * its own bound: a DNS that never answers fails the attempt, retried, naming it) and its addresses checked as they are connected to.
 * 2xx is delivered; anything else, or no status within `timeoutMs`, is a failed attempt. The status
 * is the answer: a body that does not end by the deadline is cut off, and does not undo the status.
 */
export async function postWebhook(args: { url: string; secrets: readonly string[]; msgId: string; body: string; timeoutMs: number; policy: UrlPolicy; resolver: HostResolver }): Promise<AttemptOutcome> {
  const started = performance.now();
  const done = (ok: boolean, statusCode: number | null, error: string | null): AttemptOutcome => ({ ok, statusCode, error: attemptErrorText(error), durationMs: Math.round(performance.now() - started) });
  const refused = urlRefusal(args.url, args.policy);
  if (refused) return done(false, null, `refused: ${refused}`);
  const url = new URL(args.url);
  const host = hostOf(url);
  if (isIP(host)) {
    const why = addressRefusal(host, args.policy.allowPrivate);
    if (why) return done(false, null, `refused: ${why}`);
  }
  const headers = {
    'content-type': 'application/json',
    'user-agent': 'dealix-webhooks/1',
    'content-length': String(Buffer.byteLength(args.body)),
    ...signedHeaders(args.secrets, args.msgId, args.body),
  };
  const client = url.protocol === 'https:' ? https : http;
  return new Promise<AttemptOutcome>((resolve) => {
    // The receiver's status, once its headers arrived: what the attempt's outcome is, however its body ends.
    let status: number | undefined;
    const answered = (code: number) => resolve(done(code >= 200 && code < 300, code, code >= 200 && code < 300 ? null : `HTTP ${code}`));
    const req = client.request(
      url,
      { method: 'POST', headers, lookup: guardedLookup(args.policy.allowPrivate, args.resolver) as never, signal: AbortSignal.timeout(args.timeoutMs), agent: false },
      (res) => {
        let read = 0;
        res.on('data', (chunk: Buffer) => {
          read += chunk.length;
          if (read > MAX_ANSWER_BYTES) res.destroy();
        });
        const code = (status = res.statusCode ?? 0);
        const settle = () => answered(code);
        res.on('end', settle);
        res.on('close', settle);
        res.on('error', settle);
      },
    );
    // No trace context leaves for a tenant's receiver (ADR 0013): the HTTP instrumentation injected the
    // propagator's headers (traceparent, tracestate, baggage) into the request it made; they go before any
    // byte is sent. The receiver is a third party outside the platform's traces: our trace and span ids,
    // sampling decision and baggage are not its to read, and an instrumented receiver would otherwise
    // continue our trace in its own — as Stripe and Svix send none. The client span itself stays.
    for (const field of propagation.fields()) req.removeHeader(field);
    // A 101 Switching Protocols (or a CONNECT-style upgrade) is no answer to a webhook: node:http hands it to
    // 'upgrade' listeners only — no 'response', no 'error' — and, with none, destroys the socket silently, so
    // the deadline's abort found the request already destroyed and the attempt never settled: its job stayed
    // active for ever (a live worker renews its lock) and held one of the worker's webhook slots. Not 2xx: a failed attempt.
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      answered((status = res.statusCode ?? 0));
    });
    // The backstop of every path above: a request that closed without settling (a way node:http ends one that
    // none of these events report) is its status if one came, else a failed attempt — never a pending promise.
    // A settled one ignores it ('error' comes before 'close', with its reason).
    req.on('close', () => (status !== undefined ? answered(status) : resolve(done(false, null, 'connection closed without an answer'))));
    req.on('error', (err: NodeJS.ErrnoException) => {
      // The deadline (or a reset) in the middle of the body: the status already arrived and stands.
      if (status !== undefined) return answered(status);
      const msg = err.name === 'AbortError' || err.name === 'TimeoutError' ? `timed out after ${args.timeoutMs} ms` : `${err.code ?? err.name}: ${err.message}`;
      resolve(done(false, null, msg.slice(0, 500)));
    });
    req.end(args.body);
  });
}
