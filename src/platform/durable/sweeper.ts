import type { MikroORM } from '@mikro-orm/postgresql';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { systemEm, tenantEm } from '../db/tenant-em.ts';
import { stepJobId } from '../queue/job-ids.ts';
import { RUN_COLUMNS, type DurableRuntime, type RunRow } from './runtime.ts';

export interface SweeperOptions {
  orm: MikroORM;
  runtime: DurableRuntime;
  redis: Redis;
  logger: Logger;
  lockKey: string;
  intervalMs: number;
  /** Runs untouched for less than this are presumed alive (a worker may be on them right now). */
  minAgeMs: number;
  batch?: number;
}

export interface SweepReport {
  examined: number;
  reenqueued: number;
  repairedWaiting: number;
}

/**
 * The recovery sweeper: finds runs that are incomplete in Postgres but have no live job in Redis
 * (Redis flushed or replaced, a crash between commit and enqueue) and re-enqueues their remaining
 * steps from the last completed sequence_num. Its cross-tenant read is ids and progress only, as the
 * system role; everything else happens under each run's own tenant (ADR 0003). One worker sweeps at
 * a time (a Redis lock); re-enqueueing is idempotent through deterministic job ids.
 */
export class Sweeper {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;
  private readonly o: SweeperOptions;
  constructor(opts: SweeperOptions) {
    this.o = opts;
  }

  start(): void {
    const tick = () => {
      this.running = this.sweepWithLock()
        .catch((e) => this.o.logger.warn({ err: e }, 'sweep failed; will retry'))
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
    await this.running;
  }

  async sweepWithLock(): Promise<SweepReport | undefined> {
    const got = await this.o.redis.set(this.o.lockKey, String(process.pid), 'PX', Math.max(1000, this.o.intervalMs - 100), 'NX');
    if (got !== 'OK') return undefined;
    return this.sweep();
  }

  async sweep(): Promise<SweepReport> {
    const report: SweepReport = { examined: 0, reenqueued: 0, repairedWaiting: 0 };
    const sys = systemEm(this.o.orm);
    const stale = await this.o.runtime.list_incomplete(sys, { olderThanMs: this.o.minAgeMs, limit: this.o.batch ?? 500, statuses: ['pending', 'running', 'waiting'] });
    for (const ref of stale) {
      report.examined++;
      try {
        const wf = this.o.runtime.workflows.get(ref.workflow);
        if (!wf) continue;
        const em = tenantEm(this.o.orm, ref.tenant_id);
        if (ref.status === 'waiting') {
          if (wf.repairWaiting) {
            await em.transactional((tx) => wf.repairWaiting!(tx, ref.id));
            report.repairedWaiting++;
          }
          continue;
        }
        const [run] = await em.transactional((tx) => tx.execute<RunRow[]>(`select ${RUN_COLUMNS} from durable_runs where id = ?`, [ref.id]));
        if (!run) continue;
        const next = run.sequence_num + 1;
        const step = wf.steps[next - 1];
        if (!step) continue;
        const queue = this.o.runtime.queues.get(wf.queue);
        if (!queue) continue;
        const jobId = stepJobId(wf.tag, run.idempotency_hash, next, step.name);
        const state = await queue.getJobState(jobId);
        if (state === 'failed' || state === 'completed') {
          await queue.remove(jobId).catch(() => 0);
        } else if (state !== 'unknown') {
          continue; // a job is alive (waiting, active, delayed, waiting-children): leave it to BullMQ
        }
        await this.o.runtime.enqueue(run, next);
        report.reenqueued++;
        this.o.logger.info({ run_id: run.id, tenant_id: run.tenant_id, from_sequence_num: next, previous_job_state: state }, 'sweeper re-enqueued run');
      } catch (e) {
        this.o.logger.warn({ err: e, run_id: ref.id }, 'sweeper could not repair run');
      }
    }
    return report;
  }
}
