import { describe, expect, it } from 'vitest';
import { urlWithoutQuery } from '../../src/platform/telemetry/attributes.ts';
import { attemptErrorType } from '../../src/platform/webhooks/delivery-trace.ts';

const outcome = (statusCode: number | null, error: string | null) => ({ ok: statusCode !== null && statusCode < 300 && error === null, statusCode, error, durationMs: 1 });

describe('webhook attempt spans', () => {
  it("an outgoing request's url.full keeps scheme, host, port and path, never the query or user info", () => {
    expect(urlWithoutQuery({ protocol: 'https:', hostname: 'hooks.example.com', port: 443, path: '/in?token=s3cret' })).toBe('https://hooks.example.com/in');
    expect(urlWithoutQuery({ protocol: 'http:', hostname: '127.0.0.1', host: '127.0.0.1:8080', port: '8080', path: '/a/b?x=1&y=2' })).toBe('http://127.0.0.1:8080/a/b');
    expect(urlWithoutQuery({ protocol: 'http:', hostname: '::1', port: '9000', path: '/' })).toBe('http://[::1]:9000/');
    expect(urlWithoutQuery({ hostname: 'example.com', path: null })).toBe('http://example.com/');
  });

  it("error.type is the status code or a short class, never the error's message (which names addresses)", () => {
    expect(attemptErrorType(outcome(200, null))).toBeUndefined();
    expect(attemptErrorType(outcome(503, 'HTTP 503'))).toBe('503');
    expect(attemptErrorType(outcome(null, 'timed out after 10000 ms'))).toBe('timeout');
    expect(attemptErrorType(outcome(null, 'refused: resolves to a non-public address'))).toBe('refused');
    expect(attemptErrorType(outcome(null, 'ECONNREFUSED: connect ECONNREFUSED 10.0.0.7:443'))).toBe('ECONNREFUSED');
    expect(attemptErrorType(outcome(null, 'endpoint disabled'))).toBe('_OTHER');
  });
});
