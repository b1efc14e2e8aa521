import { Redis } from 'ioredis';
import { TEST_REDIS_URL } from './env.ts';
import { waitFor } from './poll.ts';

/**
 * Watches the shared Redis with MONITOR for commands naming a key that starts with `keyPrefix` (a
 * feature's keys, to show it sends none when off). `settle` sends a marker on `redis` and waits for
 * MONITOR to report it: every command sent before (by a process since stopped) is in `seen` by then.
 */
export async function monitorKeys(keyPrefix: string) {
  const monitor = await new Redis(TEST_REDIS_URL).monitor();
  const seen: string[] = [];
  const markers: string[] = [];
  monitor.on('monitor', (_time: string, args: string[]) => {
    if (args.some((a) => a.startsWith(keyPrefix))) seen.push(args.join(' '));
    if (args[0]?.toLowerCase() === 'echo') markers.push(args[1] ?? '');
  });
  return {
    seen,
    async settle(redis: Redis, marker: string) {
      await redis.echo(marker);
      await waitFor(() => markers.includes(marker), { what: 'MONITOR to report the marker' });
    },
    stop: () => monitor.disconnect(),
  };
}
