import type { MikroORM } from '@mikro-orm/postgresql';
import type { JobType, Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { randomUUID } from 'node:crypto';
import { systemEm, tenantEm } from '../db/tenant-em.ts';
import { stepJobId } from '../queue/job-ids.ts';
import { retiredByWorkerError } from './errors.ts';
import { jobPresence } from '../queue/job-presence.ts';
import { TIMER_QUEUE } from '../queue/timers.ts';
import { COMPLETED_STEPS_SQL, RUN_COLUMNS, type DurableRuntime, type IncompleteRun, type RunRow } from './runtime.ts';
import type { RunStatus } from './durable-run.entity.ts';
import type { WorkflowDef } from './workflow.ts';
import { versionLabel } from './registry.ts';

export interface SweeperOptions {
  orm: MikroORM;
  runtime: DurableRuntime;
  redis: Redis;
  logger: Logger;
  lockKey: string;
  /** A key with no expiry: its absence means Redis lost its data (flushed, replaced) since the last sweep. */
  markerKey?: string;
  intervalMs: number;
  /** Runs untouched for less than this are presumed alive (a worker may be on them right now). */
  minAgeMs: number;
  /** Rows per cross-tenant read. */
  batch?: number;
  /**
   * Upper bound of runs of each kind (waiting; pending or running) examined in one sweep; a sweep that
   * stops at it leaves the rest to the next, which goes on after the last run examined, and starts
   * again from the oldest once it has reached the newest. The repair of waiting runs after a loss has
   * the same bound, its place kept in Redis (`<lockKey>:loss-repair`): the next sweep goes on with it
   * whichever worker makes it.
   */
  maxPerSweep?: number;
  /** Above this many live jobs in a queue, a sweep looks its runs' jobs up one by one (O(1) each) instead of listing them (default LIVE_SNAPSHOT_MAX). */
  liveSnapshotMax?: number;
  /**
   * How long a sweep keeps renewing its lock (default SWEEP_LOCK_MAX_MS, or 20 intervals if longer):
   * past it the lock is left to lapse, so a sweep hung on a wedged connection cannot stop every worker
   * from sweeping for as long as its process lives.
   */
  lockMaxMs?: number;
  /**
   * Called when Redis lost its data, after the first stretch of the repair of waiting runs (at most
   * `maxPerSweep` of them; later sweeps go on with the rest) (e.g. re-create Job Schedulers).
   */
  afterRedisLoss?(): Promise<void>;
  /**
   * Called at every sweep, after the repair of a loss (e.g. make Redis's copy of what PostgreSQL holds
   * right again: a key can be lost alone, with the marker kept). Its failure is logged; the sweep goes on.
   */
  eachSweep?(): Promise<void>;
}

export interface SweepReport {
  examined: number;
  reenqueued: number;
  repairedWaiting: number;
  /**
   * Pending or running runs of a version this process declares retired for good
   * (WORKFLOW_VERSIONS_RETIRED) that this sweep failed (`workflow_version_retired`): no worker will
   * ever run them, and one whose run job Redis lost would otherwise stay active for ever.
   */
  failedRetired: number;
  /** This sweep noticed that Redis lost its data (its marker gone) and started the repair of waiting runs. */
  redisLost: boolean;
  /**
   * Runs of each pass (`waiting`, `active`) left undecided because a look in Redis for their jobs
   * failed (a listing that timed out, BUSY): none was taken for one whose job is gone; the pass went on
   * with the runs of the other queues, and these are looked at again when the passes come back to them.
   */
  undecided: { waiting: number; active: number };
  /**
   * Incomplete runs of a workflow version this process does not register, by `name@vN`: left alone
   * for the sweepers of workers that do (each set of registered versions sweeps under its own lock, ADR 0008).
   */
  unregistered: Record<string, number>;
}

/** The states a live job may be in, as `getRanges` names their lists and sets (a paused queue's jobs wait in `paused`). */
const LIVE_TYPES = ['wait', 'paused', 'active', 'delayed', 'prioritized', 'waiting-children'] as JobType[];
/** Sets KEYS[1] to ARGV[2] (deletes it when ARGV[2] is empty) while it still holds ARGV[1]; 1 if it did. */
const ADVANCE = `if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end return 1`;
/** Raises the lock's time to ARGV[2] ms while it is still ARGV[1]'s (a sweep's token); 1 if it was. */
const RENEW_LOCK = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0`;
/** Above this many live jobs in a queue (their ids take about 12 MB of the sweeping worker's heap), a sweep looks its runs up one by one instead of listing them. */
export const LIVE_SNAPSHOT_MAX = 100_000;
/** How long a sweep renews its lock at least (lockMaxMs): far beyond a sweep of maxPerSweep runs of each kind. */
export const SWEEP_LOCK_MAX_MS = 10 * 60_000;

/** Why a queue's live jobs were not listed: more than `liveSnapshotMax` of them, or the listing failed. */
type RetiredUnlistedReason = 'too_many_live_jobs' | 'listing_failed';
/** Per queue not listed, the runs of retired versions a sweep left undecided for it (logged once a sweep, each). */
type RetiredUnlisted = Map<string, { runs: number; reason: RetiredUnlistedReason }>;

/** Where a pass over incomplete runs goes on: after this run, in their order (`updated_at`, `id`). */
type Cursor = { updatedAt: string; id: string };

/** The ids of every job the queue holds alive, read in one script; undefined when there are more than `max`. */
async function liveJobIds(queue: Queue, max: number): Promise<Set<string> | undefined> {
  if ((await queue.getJobCountByTypes(...LIVE_TYPES)) > max) return undefined;
  return new Set(await queue.getRanges(LIVE_TYPES, 0, -1));
}

/** The (lower-case hex) idempotency hashes of a listing's run jobs (`stepJobId`: the hash, then a step's number), once per listing. */
const hashIndexes = new WeakMap<Set<string>, Set<string>>();
function runJobHashes(ids: Set<string>): Set<string> {
  let hashes = hashIndexes.get(ids);
  if (!hashes) {
    hashes = new Set();
    for (const id of ids) {
      const m = /-([0-9a-f]{40})-[0-9]+-/.exec(id);
      if (m) hashes.add(m[1]!);
    }
    hashIndexes.set(ids, hashes);
  }
  return hashes;
}

/** The ids of a run's run jobs of its current generation (ADR 0009), one per step it may start at. */
function runJobIds(wf: WorkflowDef, ref: IncompleteRun): string[] {
  return wf.steps.map((step, i) => stepJobId(wf.tag, ref.idempotency_hash, i + 1, step.name, ref.retry_count));
}

/**
 * The recovery sweeper: finds runs that are incomplete in Postgres but have no live job in Redis
 * (Redis flushed or replaced, a job that failed on infrastructure, a crash between commit and
 * enqueue) and re-enqueues their remaining steps from the last completed sequence_num. Its
 * cross-tenant read is ids, progress, the idempotency hash and the retry count (what job ids derive from) only, as the system role; everything else happens under
 * each run's own tenant (ADR 0003). One worker sweeps at a time (a Redis lock); re-enqueueing is
 * idempotent through deterministic job ids, and re-execution is harmless through checkpoints.
 */
export class Sweeper {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;
  /**
   * Aborted by stop(): a sweep in progress ends after the run it is on (its passes check between runs
   * and pages), keeping where each pass got to for the next sweep, instead of going through up to
   * `maxPerSweep` runs of each kind (minutes of a deep table) while the worker waits to exit and its
   * shutdown deadline runs out. Only while started: a sweep called directly (sweep()) runs in full.
   */
  private abort: AbortController | undefined;
  private readonly o: SweeperOptions;
  /**
   * Where the next sweep goes on, per kind of run, when the last stopped at `maxPerSweep`. Waiting runs
   * keep their `updated_at` while a human takes days to decide: started from the oldest every time, a
   * sweep would look at the same oldest ones for ever and never find a newer one whose timer is gone.
   * In this process's memory: each worker that wins the lock goes on from where its own last sweep stopped.
   */
  private readonly resumeAfter = new Map<'waiting' | 'active', Cursor>();
  constructor(opts: SweeperOptions) {
    this.o = opts;
  }

  start(): void {
    this.abort = new AbortController();
    const tick = () => {
      this.running = this.sweepWithLock()
        .catch((e) => {
          // 42501: the system role lacks a grant this release needs (its `db:migrate` did not run):
          // no sweep can succeed until it does, so say so loudly, not as a passing hiccup.
          if ((e as { code?: unknown })?.code === '42501') this.o.logger.error({ err: e }, 'sweep failed: permission denied; run `npm run db:migrate` to apply this release\'s grants');
          else this.o.logger.warn({ err: e }, 'sweep failed; will retry');
        })
        .finally(() => {
          this.running = undefined;
          if (this.timer) this.timer = setTimeout(tick, this.o.intervalMs).unref();
        });
    };
    this.timer = setTimeout(tick, 0).unref();
  }

  async stop(): Promise<void> {
    const t = this.timer;
    this.timer = undefined;
    if (t) clearTimeout(t);
    this.abort?.abort();
    await this.running;
    this.abort = undefined;
  }

  /** stop() was called: the sweep in progress goes no further than the run it is on. */
  private get stopping(): boolean {
    return this.abort?.signal.aborted === true;
  }

  /**
   * A sweep if this worker wins the lock. The lock lapses on its own (one interval, less 100 ms), so
   * the next sweep of any worker comes about one interval after this one started — but while this
   * sweep goes on its time is raised again every third of it: a sweep longer than the interval (a
   * deep table of incomplete runs, a slow database) would otherwise have a second worker start one
   * beside it, both re-enqueueing the same runs. Renewed only while its value is still this sweep's
   * token: a lock that lapsed anyway (the event loop stalled past it) and another worker took is
   * left to that worker, and this sweep is told so in the log. Renewed for `lockMaxMs` at most: a
   * sweep hung on a wedged connection must not keep every worker from sweeping for ever.
   */
  async sweepWithLock(): Promise<SweepReport | undefined> {
    const ttl = Math.max(1000, this.o.intervalMs - 100);
    const token = `${process.pid}:${randomUUID()}`;
    const got = await this.o.redis.set(this.o.lockKey, token, 'PX', ttl, 'NX');
    if (got !== 'OK') return undefined;
    let warned = false;
    const renewUntil = Date.now() + (this.o.lockMaxMs ?? Math.max(SWEEP_LOCK_MAX_MS, 20 * this.o.intervalMs));
    const renew = setInterval(() => {
      if (Date.now() > renewUntil) {
        // Hung, most likely (a wedged connection): the lock lapses so another worker sweeps; overlapping sweeps are harmless.
        clearInterval(renew);
        this.o.logger.warn({ lock_key: this.o.lockKey, lock_max_ms: this.o.lockMaxMs }, 'sweep still running past its longest lock time: its lock is left to lapse, so another worker may sweep');
        return;
      }
      this.o.redis
        .eval(RENEW_LOCK, 1, this.o.lockKey, token, ttl)
        .then((held) => {
          if (held === 1 || warned) return;
          warned = true;
          this.o.logger.warn({ lock_key: this.o.lockKey }, 'sweep outlived its lock, which another worker may hold now: their sweeps may overlap (re-enqueueing is idempotent)');
        })
        .catch(() => {});
    }, Math.floor(ttl / 3));
    renew.unref();
    try {
      return await this.sweep();
    } finally {
      clearInterval(renew);
    }
  }

  async sweep(): Promise<SweepReport> {
    const report: SweepReport = { examined: 0, reenqueued: 0, repairedWaiting: 0, failedRetired: 0, redisLost: false, undecided: { waiting: 0, active: 0 }, unregistered: {} };
    // A run of a version this process does not register is another worker's: never failed, never enqueued here.
    const registered = (ref: IncompleteRun) => {
      if (this.o.runtime.workflows.get(ref.workflow, ref.workflow_version)) return true;
      const label = versionLabel(ref.workflow, ref.workflow_version);
      report.unregistered[label] = (report.unregistered[label] ?? 0) + 1;
      return false;
    };
    const marker = this.o.markerKey ?? `${this.o.lockKey}:marker`;
    // Where the repair of waiting runs after a loss goes on, while it has not reached the newest run:
    // in Redis, so the next sweep goes on with it whichever worker makes it; per lock (per set of
    // registered workflow versions, ADR 0008), as each repairs the runs of its own versions.
    const repairKey = `${this.o.lockKey}:loss-repair`;
    const lost = (await this.o.redis.exists(marker)) === 0;
    if (lost) {
      // Waiting runs have no step job to lose, only timers (e.g. an SLA): repaired once per loss, not every sweep.
      report.redisLost = true;
      // The marker before the repair: a loss while it runs takes the marker again, so the next sweep
      // repairs again; a repair that fails removes it for the same reason. In one transaction with the
      // repair's start, from the oldest waiting run.
      for (const [err] of (await this.o.redis.multi().set(marker, new Date().toISOString()).set(repairKey, JSON.stringify({ token: randomUUID() })).exec()) ?? []) if (err) throw err;
    }
    try {
      const repair = await this.repairAfterLoss(repairKey, report);
      if (lost) {
        await this.o.afterRedisLoss?.();
        this.o.logger.warn({ repaired_waiting: report.repairedWaiting, repair_done: repair !== 'more' }, 'Redis had lost its data (or this is its first sweep): waiting runs repaired');
      } else if (repair) {
        this.o.logger.warn({ repaired_waiting: report.repairedWaiting, repair_done: repair === 'done' }, 'repair of waiting runs after Redis lost its data went on');
      }
    } catch (e) {
      if (lost) await this.o.redis.del(marker).catch(() => {});
      throw e;
    }
    if (this.stopping) return report;
    await this.o.eachSweep?.().catch((err: unknown) => this.o.logger.warn({ err }, 'sweep: repair of what Redis copies from PostgreSQL failed; the next sweep tries again'));
    // The listing of each queue's live jobs, shared by both passes; one that failed stays for the rest of its pass (not listed again for every page).
    const snapshots = new Map<string, Promise<Set<string> | undefined>>();
    // Runs of retired versions the active pass left undecided for want of a queue's listing, by queue: one line each after the pass.
    const retiredUnlisted: RetiredUnlisted = new Map();
    const failures: { pass: 'waiting' | 'active'; err: unknown }[] = [];
    // A waiting run's timer can also be gone while Redis kept its data: removed, failed for good
    // (its attempts spent while the database was down), or ended early. Without it the run would wait
    // forever: past its deadline nobody may decide it, and nothing would expire it.
    await this.resumable('waiting', ['waiting'], async (page) => {
      // Its timer lives in the timers queue; one an older release added to the workflow's own queue
      // (a rolling deploy, ADR 0015) is alive there and fires there, so it is not duplicated.
      const { alive, undecided } = await this.withLiveJob(page, snapshots, (wf, ref) => (wf.waitingJobId ? [wf.waitingJobId(ref.idempotency_hash)] : []), (wf) => [TIMER_QUEUE, wf.queue]);
      if (undecided.err !== undefined) failures.push({ pass: 'waiting', err: undecided.err });
      for (const [i, ref] of page.entries()) {
        if (this.stopping) return i;
        if (!registered(ref) || alive.has(ref.id)) continue;
        if (undecided.ids.has(ref.id)) {
          report.undecided.waiting++;
          continue;
        }
        if (await this.guarded(ref, () => this.repairWaiting(ref))) {
          report.repairedWaiting++;
          this.o.logger.warn({ run_id: ref.id, tenant_id: ref.tenant_id }, 'sweeper repaired a waiting run whose timer was gone');
        }
      }
      return page.length;
    });
    // A listing that failed in the waiting pass is tried again in the active pass.
    for (const [name, listing] of [...snapshots]) if (await listing.then(() => false, () => true)) snapshots.delete(name);
    await this.resumable('active', ['pending', 'running'], async (page) => {
      // Alive while a run job of its current generation lives, from any step: the one carrying it may
      // have started well before its next step (a job goes on through steps that did not wait, a sweep
      // or a decision started one at its step), and none of them can be ahead of it (a job starts at
      // the step after the run's last completed one, or earlier). A job of an earlier generation (the
      // run retried since it was added) ends without a step when it reads the run (executor:
      // superseded): it does not count, and such a run goes to reenqueue, which adds its generation's.
      const { alive, undecided } = await this.withLiveJob(page, snapshots, (wf, ref) => runJobIds(wf, ref), (wf) => [wf.queue]);
      if (undecided.err !== undefined) failures.push({ pass: 'active', err: undecided.err });
      for (const [i, ref] of page.entries()) {
        if (this.stopping) return i;
        report.examined++;
        // Retired for good: no worker will ever register the version, and only a job of it had its run
        // failed (the executor's failRetired); with that job lost the run would stay active for ever.
        // Failed here only while no job of it is alive: while the lists disagree (ADR 0008) an older
        // release's worker may be running it (a long step leaves the run row untouched) or about to
        // (a backlog), and a job of it is that worker's or the executor's to end. Waiting runs are not in this pass.
        if (this.o.runtime.workflows.retired(ref.workflow, ref.workflow_version)) {
          const look = await this.retiredRunJob(ref, snapshots, retiredUnlisted);
          if (look === 'unknown') report.undecided.active++;
          else if (look === 'absent' && (await this.guarded(ref, () => this.failRetired(ref)))) report.failedRetired++;
          continue;
        }
        if (!registered(ref) || alive.has(ref.id)) continue;
        if (undecided.ids.has(ref.id)) {
          report.undecided.active++;
          continue;
        }
        if (await this.guarded(ref, () => this.reenqueue(ref))) report.reenqueued++;
      }
      return page.length;
    });
    // Said per queue, once a sweep, with a count: such a run is never failed while its queue cannot be
    // listed, and without a line the operator sees it stay `pending` for no reason any log gives. The
    // failed listing's own line is the one below when the pass's other runs needed it; said here too,
    // as the retired runs' reason, since a queue of retired runs alone gives no other.
    for (const [queue, { runs, reason }] of retiredUnlisted) {
      if (reason === 'too_many_live_jobs') {
        this.o.logger.warn(
          { queue, undecided_retired_runs: runs, live_snapshot_max: this.o.liveSnapshotMax ?? LIVE_SNAPSHOT_MAX },
          'sweep left runs of retired workflow versions (WORKFLOW_VERSIONS_RETIRED) undecided: their queue holds more live jobs than liveSnapshotMax, so it is not listed, and a retired version\'s run job cannot be looked up by id (its step names are gone); they are not failed while a job of theirs may be alive, and a sweep fails them once the queue holds no more than that',
        );
      } else {
        this.o.logger.warn(
          { queue, undecided_retired_runs: runs },
          'sweep left runs of retired workflow versions (WORKFLOW_VERSIONS_RETIRED) undecided: the listing of their queue\'s live jobs failed; the passes look at them again when they come back to them',
        );
      }
    }
    if (failures.length > 0) {
      this.o.logger.warn(
        { err: failures[0]!.err, undecided: report.undecided },
        'sweep could not tell which runs have a live job (a look in Redis failed): those runs were left undecided, the rest swept; the passes look at them again when they come back to them',
      );
    }
    if (Object.keys(report.unregistered).length > 0) {
      this.o.logger.warn({ unregistered: report.unregistered, registered: this.o.runtime.workflows.labels() }, 'incomplete runs of workflow versions this worker does not register: left to workers that do');
    }
    return report;
  }

  /**
   * One stretch (at most `maxPerSweep` runs) of the repair of every waiting run after a loss, from
   * where the last stopped; its progress is written back only while Redis still holds the state this
   * stretch started from (a loss meanwhile took it: the next sweep notices that loss and starts again
   * from the oldest). Undefined when no repair is under way; `done` once it has reached the newest run.
   */
  private async repairAfterLoss(key: string, report: SweepReport): Promise<'more' | 'done' | undefined> {
    const state = await this.o.redis.get(key);
    if (state === null) return undefined;
    let after: Cursor | undefined;
    try {
      after = (JSON.parse(state) as { after?: Cursor }).after;
    } catch {
      after = undefined; // unreadable: from the oldest again
    }
    const next = await this.eachIncomplete(['waiting'], 0, after, async (page) => {
      for (const [i, ref] of page.entries()) {
        if (this.stopping) return i;
        if (await this.guarded(ref, () => this.repairWaiting(ref))) report.repairedWaiting++;
      }
      return page.length;
    });
    if (this.stopping) {
      // Stopped part way (or before it began): the repair goes on from where it got to, never taken for done.
      if (next) await this.o.redis.eval(ADVANCE, 1, key, state, JSON.stringify({ token: randomUUID(), after: next }));
      return 'more';
    }
    await this.o.redis.eval(ADVANCE, 1, key, state, next ? JSON.stringify({ token: randomUUID(), after: next }) : '');
    return next ? 'more' : 'done';
  }

  /** One run's repair; its failure is logged and the sweep goes on with the next run. */
  private async guarded(ref: IncompleteRun, fn: () => Promise<boolean>): Promise<boolean> {
    try {
      return await fn();
    } catch (e) {
      this.o.logger.warn({ err: e, run_id: ref.id, tenant_id: ref.tenant_id }, 'sweeper could not repair run');
      return false;
    }
  }

  /**
   * The page's runs one of whose jobs (`jobIdsOf`: a pending or running run's run jobs of its current
   * generation, a waiting run's timer) BullMQ holds alive in any of `queuesOf` (a waiting run's timer:
   * the timers queue, or its workflow's queue where older releases put it), found without PostgreSQL:
   * the jobs' ids derive from the run's idempotency hash and retry count (ADR 0003). A run for which
   * `jobIdsOf` names no job counts as alive for a waiting run (nothing to check) and is left to
   * `reenqueue` otherwise. The ids of every job a
   * queue holds alive are read once per sweep in one atomic script (`getRanges`), so a deep backlog
   * costs a sweep one read of its queue instead of a tenant transaction and a `getJobState` per run
   * (`getJobState` finds a waiting job by scanning the wait list: quadratic over a backlog; session
   * 13). Above `liveSnapshotMax` live jobs the sweep looks each run's jobs up instead, in O(1)
   * (`jobPresence`: its hash exists and it is in neither the completed nor the failed set), never with
   * `getJobState`, whose LPOS over the wait list costs the backlog for every id it does not hold.
   * A job missing from the snapshot (added since) only sends the run to `reenqueue`, which decides
   * from the run read under its tenant and the job's state then; a job that ended since the snapshot
   * is the next sweep's. A look that failed (a listing or a look-up: a timeout, BUSY) leaves only the
   * runs that needed it undecided (`undecided`; a run found alive in another queue is alive): nothing
   * is decided from it (each run taken for jobless would cost a tenant transaction and Redis commands of
   * its own, exactly while Redis struggles), and the other runs of the page, of other queues, are
   * decided as usual, so one queue that cannot be listed never keeps the others' runs from their repair.
   * The failed listing stays in `snapshots` for the rest of the pass: not listed again for every page.
   */
  private async withLiveJob(
    page: IncompleteRun[],
    snapshots: Map<string, Promise<Set<string> | undefined>>,
    jobIdsOf: (wf: WorkflowDef, ref: IncompleteRun) => string[],
    queuesOf: (wf: WorkflowDef) => string[],
  ): Promise<{ alive: Set<string>; undecided: { ids: Set<string>; err?: unknown } }> {
    const alive = new Set<string>();
    const undecided: { ids: Set<string>; err?: unknown } = { ids: new Set() };
    await Promise.all(
      page.map(async (ref) => {
        const wf = this.o.runtime.workflows.get(ref.workflow, ref.workflow_version);
        const queues = wf ? queuesOf(wf).flatMap((name) => this.o.runtime.queues.get(name) ?? []) : [];
        const jobIds = wf && ref.idempotency_hash ? jobIdsOf(wf, ref) : [];
        if (!queues.length || !jobIds.length) {
          // Nothing to look for: a waiting run of a workflow without a timer (or of another deployment's workflow) is left alone.
          if (ref.status === 'waiting') alive.add(ref.id);
          return;
        }
        let err: unknown;
        for (const queue of queues) {
          try {
            let snapshot = snapshots.get(queue.name);
            if (!snapshot) {
              snapshots.set(queue.name, (snapshot = liveJobIds(queue, this.o.liveSnapshotMax ?? LIVE_SNAPSHOT_MAX)));
              snapshot.catch(() => {}); // read below; no unhandled rejection while no run awaits it
            }
            const ids = await snapshot;
            if (ids ? jobIds.some((id) => ids.has(id)) : (await jobPresence(this.o.redis, queue, jobIds)).includes('exists')) return void alive.add(ref.id);
          } catch (e) {
            err ??= e; // undecided unless another of its queues holds its job
          }
        }
        if (err !== undefined) {
          undecided.ids.add(ref.id);
          undecided.err ??= err;
        }
      }),
    );
    return { alive, undecided };
  }

  /**
   * A pass of `kind` over incomplete runs: one that stops at `maxPerSweep` is gone on with by the next
   * one from where it stopped; one that reaches the newest run has the next start from the oldest.
   */
  private async resumable(kind: 'waiting' | 'active', statuses: RunStatus[], fn: (page: IncompleteRun[]) => Promise<number>): Promise<void> {
    const from = this.resumeAfter.get(kind);
    // Forgotten first: a pass that fails half way starts the next from the oldest again.
    this.resumeAfter.delete(kind);
    const next = await this.eachIncomplete(statuses, this.o.minAgeMs, from, fn);
    if (next) this.resumeAfter.set(kind, next);
  }

  /**
   * Pages through incomplete runs, oldest first, after `from`, with a keyset cursor so alive runs never
   * hide the ones behind them, for at most `maxPerSweep` runs. `fn` returns how many of the page's runs
   * it went through (fewer than all once the sweeper is stopping). Returns where the next pass goes on:
   * after the last run examined when it stopped at `maxPerSweep` or because the sweeper is stopping
   * (`from` when it stopped before any), undefined once it reached the newest run (the next starts from the oldest).
   */
  private async eachIncomplete(statuses: RunStatus[], olderThanMs: number, from: Cursor | undefined, fn: (page: IncompleteRun[]) => Promise<number>): Promise<Cursor | undefined> {
    const batch = this.o.batch ?? 500;
    const max = this.o.maxPerSweep ?? 20_000;
    let after = from;
    for (let seen = 0; seen < max; ) {
      if (this.stopping) return after;
      const page = await this.o.runtime.list_incomplete(systemEm(this.o.orm), { olderThanMs, limit: batch, statuses, ...(after ? { after } : {}) });
      const done = await fn(page);
      if (done < page.length) {
        // Stopping: the next pass goes on after the last run this one went through.
        const last = page[done - 1];
        return last ? { updatedAt: last.updated_at_exact, id: last.id } : after;
      }
      seen += page.length;
      const last = page[page.length - 1];
      if (page.length < batch || !last) return undefined;
      after = { updatedAt: last.updated_at_exact, id: last.id };
    }
    return after;
  }

  private async repairWaiting(ref: IncompleteRun): Promise<boolean> {
    const wf = this.o.runtime.workflows.get(ref.workflow, ref.workflow_version);
    if (!wf?.repairWaiting) return false;
    await tenantEm(this.o.orm, ref.tenant_id).transactional((tx) => wf.repairWaiting!(tx, { tenantId: ref.tenant_id, runId: ref.id }));
    return true;
  }

  /**
   * Whether BullMQ holds a live run job of a run of a retired version, in the queues of the versions
   * of its workflow this process registers (a workflow keeps its queue across versions). Its job ids
   * derive from the definition no process here has (its tag and step names), but every one carries
   * the run's idempotency hash followed by a step's number (`stepJobId`; a timer's, `namedJobId`,
   * a name): matched on that, of any generation (an earlier one's job ends at a worker). Read from the
   * pass's listings; `unknown` when a listing failed or a queue holds more than `liveSnapshotMax` live
   * jobs (no id to look up without the step names): the run is left undecided, not failed, and counted
   * in `unlisted` against that queue, which the sweep logs once (a line per queue, not per run).
   */
  private async retiredRunJob(ref: IncompleteRun, snapshots: Map<string, Promise<Set<string> | undefined>>, unlisted: RetiredUnlisted): Promise<'alive' | 'absent' | 'unknown'> {
    if (!ref.idempotency_hash) return 'unknown';
    const names = new Set(this.o.runtime.workflows.all().flatMap((d) => (d.name === ref.workflow && d.queue !== TIMER_QUEUE ? [d.queue] : [])));
    const queues = [...names].flatMap((name) => this.o.runtime.queues.get(name) ?? []);
    if (!queues.length) return 'unknown';
    const hash = ref.idempotency_hash.slice(0, 40);
    const notListed: Array<[string, RetiredUnlistedReason]> = [];
    for (const queue of queues) {
      let snapshot = snapshots.get(queue.name);
      if (!snapshot) {
        snapshots.set(queue.name, (snapshot = liveJobIds(queue, this.o.liveSnapshotMax ?? LIVE_SNAPSHOT_MAX)));
        snapshot.catch(() => {});
      }
      const ids = await snapshot.then(
        (listed) => listed ?? ('too_many_live_jobs' as const),
        () => 'listing_failed' as const,
      );
      if (typeof ids === 'string') notListed.push([queue.name, ids]);
      else if (runJobHashes(ids).has(hash)) return 'alive';
    }
    if (!notListed.length) return 'absent';
    // Counted against each queue that could not be listed (only when no other queue showed its job alive).
    for (const [queue, reason] of notListed) {
      const seen = unlisted.get(queue);
      if (seen) seen.runs++;
      else unlisted.set(queue, { runs: 1, reason });
    }
    return 'unknown';
  }

  /**
   * Fails a pending or running run of a version declared retired for good, under its tenant, as the
   * executor's failRetired does (`workflow_version_retired`, at the step after its last completed one,
   * named by its number only: no process has the definition; its `run.failed` event committed with it,
   * its deliveries dispatched after the commit). A run that has ended or waits meanwhile is left as it is.
   */
  private async failRetired(ref: IncompleteRun): Promise<boolean> {
    const deliveries: string[] = [];
    const failed = await tenantEm(this.o.orm, ref.tenant_id).transactional(async (tx) => {
      // Locked, so a cancel meanwhile is either before (the run is not active: nothing to do) or after.
      const [run] = await tx.execute<{ completed: number }[]>(
        `select ${COMPLETED_STEPS_SQL} as completed from durable_runs r where tenant_id = ? and id = ? and (status || '') in ('pending', 'running') for update`,
        [ref.tenant_id, ref.id],
      );
      if (!run) return false;
      const error = retiredByWorkerError(ref.workflow, ref.workflow_version, undefined, run.completed + 1);
      return this.o.runtime.complete(tx, ref.id, 'failed', { error }, deliveries);
    });
    await this.o.runtime.dispatchDeliveries(ref.tenant_id, deliveries);
    if (failed) {
      this.o.logger.error(
        { run_id: ref.id, tenant_id: ref.tenant_id, workflow: versionLabel(ref.workflow, ref.workflow_version), registered: this.o.runtime.workflows.labels() },
        'sweeper failed a run of a workflow version this worker declares retired (WORKFLOW_VERSIONS_RETIRED): no worker will carry it on; if the API still starts or retries runs of it, set the same WORKFLOW_VERSIONS_RETIRED on every process',
      );
    }
    return failed;
  }

  /**
   * Re-enqueues the run from its first incomplete step unless BullMQ still holds a live job for it:
   * any of its run jobs from step 1 to that step. The one carrying it may have started well before
   * the stretch that contains the step: a step that may wait but did not (a class A approval) leaves
   * the job that started at step 1 going on, and a sweep may have started one at any step. A finished
   * leftover under the id it adds is removed first: while a completed or failed job keeps its
   * deterministic id, adding the job again would be a silent no-op.
   */
  private async reenqueue(ref: IncompleteRun): Promise<boolean> {
    const wf = this.o.runtime.workflows.get(ref.workflow, ref.workflow_version);
    const queue = wf && this.o.runtime.queues.get(wf.queue);
    if (!wf || !queue) return false; // another deployment's workflow or version: leave it to the workers that know it
    // The run row moves only with its status; its checkpoints are the live progress. `status || ''`:
    // the same test, proving no partial index's predicate — `status in ('pending', 'running')` proves
    // the active runs' list indexes', and a generic plan made on a table without statistics read the
    // run there, `id` behind `workflow`, walking the tenant's active runs (tenant-scoped-queries.test.ts).
    const [run] = await tenantEm(this.o.orm, ref.tenant_id).transactional((tx) =>
      tx.execute<(RunRow & { completed: number })[]>(
        `select ${RUN_COLUMNS}, ${COMPLETED_STEPS_SQL} as completed from durable_runs r where tenant_id = ? and id = ? and (status || '') in ('pending', 'running')`,
        [ref.tenant_id, ref.id],
      ),
    );
    if (!run) return false;
    const next = run.completed + 1;
    if (next > wf.steps.length) return false;
    // Of the run's current generation: a retried run's jobs carry its retry count (ADR 0009).
    const jobId = (seq: number) => stepJobId(wf.tag, run.idempotency_hash, seq, wf.steps[seq - 1]!.name, run.retry_count);
    const ids = Array.from({ length: next }, (_, i) => jobId(i + 1));
    // O(1) a job, one round trip: not getJobState, which scans the wait list for every id it does not hold (jobPresence).
    const states = await jobPresence(this.o.redis, queue, ids);
    if (states.includes('exists')) return false;
    const state = states[states.length - 1];
    if (state !== 'unknown') await queue.remove(jobId(next)).catch(() => 0);
    await this.o.runtime.enqueue(run, next);
    // The run's ids, so the recovery shows among the run's lines (found by its correlation id or trace id too).
    this.o.logger.info(
      { run_id: run.id, tenant_id: run.tenant_id, correlation_id: run.correlation_id, ...(run.trace_id ? { trace_id: run.trace_id } : {}), from_sequence_num: next, previous_job_state: state },
      'sweeper re-enqueued run',
    );
    return true;
  }
}
