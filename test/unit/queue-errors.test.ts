import { describe, expect, it } from 'vitest';
import { EventEmitter } from 'node:events';
import { throttle, warnOnQueueErrors } from '../../src/platform/queue/queue-errors.ts';

describe('queue error warnings, throttled', () => {
  it('logs the first at once, suppresses the rest within the period and hands their count to the next one logged', () => {
    let now = 1_000;
    const logged: { at: number; suppressed: number }[] = [];
    const warn = throttle(10_000, () => now);
    const tick = (ms: number) => {
      now += ms;
      warn((suppressed) => logged.push({ at: now, suppressed }));
    };
    tick(0);
    // About four a second (an API with Redis unreachable): none logged before the period is up.
    for (let i = 0; i < 39; i++) tick(250);
    expect(logged).toEqual([{ at: 1_000, suppressed: 0 }]);
    tick(250); // 10 s after the first
    expect(logged).toEqual([{ at: 1_000, suppressed: 0 }, { at: 11_000, suppressed: 39 }]);
    // After a quiet spell, the next is logged at once, with nothing suppressed.
    tick(60_000);
    expect(logged.at(-1)).toEqual({ at: 71_000, suppressed: 0 });
  });

  it('each queue has its own throttle; the warning keeps its message and fields, with `suppressed` only when some were', () => {
    const lines: { obj: Record<string, unknown>; msg: string }[] = [];
    const logger = { warn: (obj: Record<string, unknown>, msg: string) => void lines.push({ obj, msg }) };
    const [a, b] = [new EventEmitter(), new EventEmitter()];
    warnOnQueueErrors(a, 'a', logger as never, 60_000);
    warnOnQueueErrors(b, 'b', logger as never, 60_000);
    const err = new Error('connect ECONNREFUSED');
    for (let i = 0; i < 5; i++) a.emit('error', err);
    b.emit('error', err);
    expect(lines).toEqual([
      { obj: { err, queue: 'a' }, msg: 'queue error' },
      { obj: { err, queue: 'b' }, msg: 'queue error' },
    ]);
    const c = new EventEmitter();
    warnOnQueueErrors(c, 'c', logger as never, 0);
    c.emit('error', err);
    c.emit('error', err);
    expect(lines.slice(2).map((l) => l.obj)).toEqual([{ err, queue: 'c' }, { err, queue: 'c' }]);
  });
});

describe('queue error warnings after a recovery', () => {
  it('the first error after the connection is ready again is logged at once, with the count of those suppressed before', () => {
    const lines: Record<string, unknown>[] = [];
    const logger = { warn: (obj: Record<string, unknown>) => void lines.push(obj) };
    const backend = new EventEmitter();
    const queue = Object.assign(new EventEmitter(), { getBackend: () => backend });
    warnOnQueueErrors(queue, 'q', logger as never, 60_000);
    const down = new Error('connect ECONNREFUSED');
    queue.emit('error', down);
    queue.emit('error', down);
    expect(lines).toEqual([{ err: down, queue: 'q' }]);
    // Redis is back, then down again within the period: the operator sees it go down again now.
    backend.emit('ready');
    const again = new Error('Connection is closed.');
    queue.emit('error', again);
    expect(lines).toEqual([{ err: down, queue: 'q' }, { err: again, queue: 'q', suppressed: 1 }]);
    queue.emit('error', again);
    expect(lines).toHaveLength(2);
  });
});
