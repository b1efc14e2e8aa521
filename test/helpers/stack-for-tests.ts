import { afterAll, afterEach, beforeAll } from 'vitest';
import { capturedLog } from './log-capture.ts';
import { newTenant, runUsers, startStack, type StackOptions, type TestStack } from './stack.ts';

export interface StackForTestsOptions {
  /** What startStack is given; with `logs`, its `logDestination` is the captured log. */
  stack?: StackOptions;
  /** Keep the in-process API's log lines, parsed, in `logLines` (capturedLog; `stack.env.LOG_LEVEL` says from which level). */
  logs?: boolean;
  /** Sign `tok`, the tokens of `tenant`'s users (runUsers), once the stack has started. */
  users?: boolean;
  /** Spawn a worker process (the production worker, or `stack.workerEntry`) once the stack has started. */
  worker?: boolean;
  /** How long the start may take (ms). */
  timeoutMs?: number;
}

export interface StackForTests {
  /** The stack, started before the tests (set by then; read it inside hooks and tests). */
  stack: TestStack;
  /** A tenant of the tests' own (newTenant). */
  tenant: string;
  /** With `users`: the tokens of `tenant`'s users (runUsers), filled in before the tests; a test may add its own. */
  tok: Record<string, string>;
  /** With `logs`: the in-process API's log lines, parsed, as they are written. */
  logLines: Array<Record<string, any>>;
  /** What a test starts and leaves running (a run host): each stopped after the test, the last started first. */
  hosts: Array<{ stop(): Promise<void> }>;
}

/**
 * For the describe (or file) that calls it: a real stack (startStack) started before its tests and
 * stopped after them, with what `opts` asks for. Read `stack` from the returned object inside hooks
 * and tests; `tenant`, `tok`, `logLines` and `hosts` are the same objects throughout.
 */
export function stackForTests(opts: StackForTestsOptions = {}): StackForTests {
  const log = opts.logs ? capturedLog() : undefined;
  const suite = { tenant: newTenant(), tok: {}, logLines: log?.lines ?? [], hosts: [] } as Omit<StackForTests, 'stack'> as StackForTests;
  beforeAll(async () => {
    suite.stack = await startStack(log ? { ...opts.stack, logDestination: log.destination } : opts.stack);
    if (opts.users) Object.assign(suite.tok, await runUsers(suite.stack, suite.tenant));
    if (opts.worker) await suite.stack.spawnWorker();
  }, opts.timeoutMs ?? 120_000);
  afterEach(async () => {
    while (suite.hosts.length) await suite.hosts.pop()!.stop();
  });
  afterAll(async () => {
    await suite.stack?.stop();
  });
  return suite;
}
