import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';

/** Where a job is: ended (completed or failed), still there (any other state: alive), or gone. */
export type JobPresence = 'ended' | 'exists' | 'unknown';

/**
 * The presence of each of `jobIds` in `queue`, in one pipeline of O(1) commands per job: in the
 * `completed` or `failed` set, else its hash exists (waiting, delayed, active, prioritized,
 * waiting-children, paused…), else gone. Not Queue.getJobState: for a job that is not in a sorted set
 * it walks the `active`, `wait` and `paused` lists (LPOS), so every job that waits, or is gone (a
 * finished job removeOnComplete took), costs the length of the list — over a backlog of N waiting
 * jobs, a page of such look-ups costs O(N) of Redis's single thread each (the webhook redelivery
 * pass: some 30 s of Redis time a pass with 50,000 waiting; the recovery sweeper: seconds a sweep,
 * every SWEEPER_INTERVAL). A hash in no state answers `exists`: the add would not replace it either
 * (BullMQ keeps a job whose id exists).
 */
export async function jobPresence(redis: Redis, queue: Queue, jobIds: readonly string[]): Promise<JobPresence[]> {
  if (jobIds.length === 0) return [];
  const completed = queue.toKey('completed');
  const failed = queue.toKey('failed');
  const pipeline = redis.pipeline();
  for (const id of jobIds) pipeline.zscore(completed, id).zscore(failed, id).exists(queue.toKey(id));
  const replies = (await pipeline.exec()) ?? [];
  return jobIds.map((_, i) => {
    const [c, f, e] = replies.slice(3 * i, 3 * i + 3).map(([err, value]) => {
      if (err) throw err;
      return value;
    });
    return c !== null || f !== null ? 'ended' : e === 1 ? 'exists' : 'unknown';
  });
}
