import { describe, expect, it } from 'vitest';
import { ReplyError } from 'ioredis';
import { isConnectivityError } from '../../src/platform/errors/app-error.ts';
import { toProblem } from '../../src/platform/errors/to-problem.ts';

/** An error reply as ioredis raises it (its ReplyError, the message led by Redis's code). */
const reply = (message: string): Error => new ReplyError(message) as Error;

describe('Redis error replies', () => {
  // Redis cannot serve now (restarting, failed over, running a long script, full, resharding): the
  // request is fine and may go through later, so the API answers 503 with Retry-After, not 500, and
  // a step's last attempt leaves its run for the sweeper instead of failing it.
  it.each([
    'LOADING Redis is loading the dataset in memory',
    "READONLY You can't write against a read only replica.",
    'BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.',
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    'TRYAGAIN Multiple keys request during rehashing of slot',
    'CLUSTERDOWN The cluster is down',
    'NOREPLICAS Not enough good replicas to write.',
    "OOM command not allowed when used memory > 'maxmemory'.",
    "OOM command not allowed when used memory > 'maxmemory'. script: 756928dd, on @user_script:1.",
  ])('%s is Redis unavailable: 503 with Retry-After', (message) => {
    expect(isConnectivityError(reply(message))).toBe(true);
    expect(isConnectivityError(new Error('enqueue failed', { cause: reply(message) }))).toBe(true);
    const { problem, headers } = toProblem(reply(message), 'r1');
    expect(problem).toMatchObject({ status: 503, code: 'service_unavailable', request_id: 'r1' });
    expect(headers['Retry-After']).toBeTruthy();
  });

  it('a MULTI Redis discarded for such a reply (EXECABORT) is Redis unavailable too', () => {
    const abort = Object.assign(reply('EXECABORT Transaction discarded because of previous errors.'), { previousErrors: [reply("OOM command not allowed when used memory > 'maxmemory'.")] });
    expect(isConnectivityError(abort)).toBe(true);
    const wrong = Object.assign(reply('EXECABORT Transaction discarded because of previous errors.'), { previousErrors: [reply("ERR wrong number of arguments for 'set' command")] });
    expect(isConnectivityError(wrong)).toBe(false);
  });

  // The command's own fault: a retry fails the same way. BUSYKEY and BUSYGROUP start like BUSY.
  it.each([
    'BUSYKEY Target key name already exists.',
    'BUSYGROUP Consumer Group name already exists',
    'WRONGTYPE Operation against a key holding the wrong kind of value',
    'NOSCRIPT No matching script. Please use EVAL.',
    "ERR wrong number of arguments for 'set' command",
    'ERR user_script:1: Script attempted to access nonexistent global variable',
  ])('%s is not: 500', (message) => {
    expect(isConnectivityError(reply(message))).toBe(false);
    expect(toProblem(reply(message)).problem).toMatchObject({ status: 500, code: 'internal' });
  });

  it('only a Redis reply: an error of our own whose message happens to start so is not', () => {
    expect(isConnectivityError(new Error('BUSY tenant has too many webhooks'))).toBe(false);
  });
});
