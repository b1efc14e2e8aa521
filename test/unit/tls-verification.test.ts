/**
 * NODE_TLS_REJECT_UNAUTHORIZED=0 turns off certificate verification for every TLS connection of the process
 * (the https JWKS fetch, webhooks, PostgreSQL and Redis over TLS). Node reads exactly '0' as off (checked
 * against Node 24: 'false', ' 0', '00' still verify). In production the API and worker say so at start, once;
 * the readiness row `tls-verification` fails on it (readiness.test.ts).
 */
import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { createLogger } from '../../src/platform/telemetry/logger.ts';
import { tlsVerificationOff, warnWhenTlsVerificationOff } from '../../src/platform/process/tls-verification.ts';

function capture() {
  const lines: Array<Record<string, unknown>> = [];
  const destination = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { lines, logger: createLogger({ level: 'info', name: 'test', destination }) };
}

describe('NODE_TLS_REJECT_UNAUTHORIZED', () => {
  it("is off only when it is exactly '0', as Node reads it", () => {
    expect(tlsVerificationOff({ NODE_TLS_REJECT_UNAUTHORIZED: '0' })).toBe(true);
    for (const v of [undefined, '', '1', 'false', 'no', ' 0', '00', '0 ']) expect(tlsVerificationOff({ NODE_TLS_REJECT_UNAUTHORIZED: v }), String(v)).toBe(false);
  });

  it('is one warning at start in production when 0; none otherwise, nor outside production', () => {
    const prod = capture();
    warnWhenTlsVerificationOff(prod.logger, 'production', { NODE_TLS_REJECT_UNAUTHORIZED: '0' });
    expect(prod.lines).toHaveLength(1);
    expect(prod.lines[0]).toMatchObject({ level: 40, security_event: 'tls_verification_off', msg: expect.stringMatching(/NODE_TLS_REJECT_UNAUTHORIZED=0: .*certificates are not verified/) });
    const quiet = capture();
    warnWhenTlsVerificationOff(quiet.logger, 'production', { NODE_TLS_REJECT_UNAUTHORIZED: '1' });
    warnWhenTlsVerificationOff(quiet.logger, 'production', {});
    warnWhenTlsVerificationOff(quiet.logger, 'development', { NODE_TLS_REJECT_UNAUTHORIZED: '0' });
    warnWhenTlsVerificationOff(quiet.logger, 'test', { NODE_TLS_REJECT_UNAUTHORIZED: '0' });
    expect(quiet.lines).toEqual([]);
  });
});
