import { describe, expect, it } from 'vitest';
import { ConnectionException, DriverException } from '@mikro-orm/core';
import { ReplyError } from 'ioredis';
import { isBackendTimeout, isBackendUnavailable, isConnectivityError, isDatabaseTimeout } from '../../src/platform/errors/app-error.ts';
import { NoAnswerError } from '../../src/platform/db/coalescing-client.ts';

/** A socket's refusal as node raises it (net.connect, and under fetch's TypeError as its cause). */
const refused = () => Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9'), { code: 'ECONNREFUSED', errno: -111, syscall: 'connect', address: '127.0.0.1', port: 9 });

describe("the platform's database or Redis unavailable, told by who raised the error", () => {
  // A step's own call out: a connectivity error (BullMQ may retry it), but none of the platform's backing services.
  it.each([
    ['a bare socket refusal', refused()],
    ["fetch's TypeError over it", new TypeError('fetch failed', { cause: refused() })],
    ['a DNS failure', Object.assign(new Error('getaddrinfo ENOTFOUND partner.example'), { code: 'ENOTFOUND' })],
    ["a step's error wrapping a refusal", new Error('partner API down', { cause: new TypeError('fetch failed', { cause: refused() }) })],
    // Nothing of the platform's database client in the chain: what the text or a code says is the step's own.
    ["a step's error quoting node-postgres's connection loss", new Error('partner API 502: upstream said "Connection terminated unexpectedly"')],
    ["a step's error quoting ioredis's", new Error('partner cache: Connection is closed.')],
    ["a step's error quoting a command timeout", new Error('partner said: Command timed out')],
    ['an admin shutdown (57P01) of a database of its own', Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' })],
    ["its own Redis loading its dataset", new ReplyError('LOADING Redis is loading the dataset in memory') as Error],
    ["its own ioredis's offline queue refusal", new Error("Stream isn't writeable and enableOfflineQueue options is false")],
    ["a step's error quoting the connection loss, wrapping a DriverException that says no outage", new Error('Connection terminated', { cause: new DriverException(Object.assign(new Error('duplicate key'), { code: '23505' })) })],
  ])('%s is not', (_what, e) => {
    expect(isConnectivityError(e)).toBe(true);
    expect(isBackendUnavailable(e)).toBe(false);
  });

  it.each([
    ["MikroORM's DriverException over the driver's refusal (its code copied)", new DriverException(refused())],
    ['a DriverException whose cause is the refusal', new DriverException(Object.assign(new Error('query failed'), { cause: refused() }))],
    ["a step's error wrapping the DriverException", new Error('could not save', { cause: new DriverException(refused()) })],
    ["MikroORM's ConnectionException", new ConnectionException(new Error('no connection'))],
    ['a PostgreSQL admin shutdown (57P01) under a DriverException', new DriverException(Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' }))],
    ["node-postgres's connection loss under a DriverException", new DriverException(new Error('Connection terminated unexpectedly'))],
    ["a step's error wrapping node-postgres's connection loss under a DriverException", new Error('could not save', { cause: new DriverException(new Error('Connection terminated unexpectedly')) })],
    ["the coalescing client's NoAnswerError", new NoAnswerError(2000)],
  ])('%s is', (_what, e) => {
    expect(isConnectivityError(e)).toBe(true);
    expect(isBackendUnavailable(e)).toBe(true);
  });

  it('an error of neither kind is neither', () => {
    expect(isConnectivityError(new Error('boom'))).toBe(false);
    expect(isBackendUnavailable(new Error('boom'))).toBe(false);
  });
});

describe("the platform's database timing out, told by who raised the error", () => {
  const timeout = (code: string) => Object.assign(new Error('canceling statement due to statement timeout'), { code, severity: 'ERROR' });
  it.each([
    ['a statement timeout (57014) under a DriverException', new DriverException(timeout('57014'))],
    ['a lock timeout (55P03) under a DriverException', new DriverException(timeout('55P03'))],
    ["a hook's error wrapping the DriverException", new Error('could not close the request', { cause: new DriverException(timeout('57014')) })],
  ])('%s is', (_what, e) => {
    expect(isDatabaseTimeout(e)).toBe(true);
    expect(isBackendTimeout(e)).toBe(true);
  });

  it.each([
    ["a timeout code of a database of its own (no platform client in the chain)", timeout('57014')],
    ["an error quoting a timeout, wrapping a DriverException that says none", new Error('statement timeout', { cause: new DriverException(Object.assign(new Error('division by zero'), { code: '22012' })) })],
  ])('%s is not', (_what, e) => {
    expect(isBackendTimeout(e)).toBe(false);
  });
});
