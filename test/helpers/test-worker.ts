/**
 * A worker process for the recovery tests: the production worker plus the `gp-slow` test workflow,
 * whose steps wait before doing their real work so a signal can land in the middle of one.
 *
 * GP_SLOW_STEP_MS: per sequence_num, comma-separated, the last entry repeating. Each entry is a
 * delay in ms, `hang` (never finishes on its own), `sigterm` (finishes once the process is told
 * to stop), `kill` (SIGKILLs its own process: a step that crashes its worker every time) or
 * `kill-once` (the same the first time any worker enters it, as the file GP_SLOW_KILL_ONCE says:
 * created then, it lets later executions through) or `block` (blocks the process's event loop for
 * GP_SLOW_BLOCK_MS, 4000 by default, then never finishes: a worker that stays alive while its job's lock
 * lapses — past WORKER_LOCK_DURATION nothing renews it — every time) or `block-kill` (the same, then
 * SIGKILLs its own process: a step whose worker thrashes in GC before its OOM kill) or `tx-<ms>` (a
 * statement of the step's transaction sleeps ms in PostgreSQL: the transaction has begun, by the
 * database's clock, at least that long before the step's later statements, its checkpoint's). GP_SLOW_VARIANT: original | reordered | renamed (see slow-workflow.ts).
 * GP_SLOW_FAIL: `<seq>:permanent` (the step throws a non-retryable error) or `<seq>:retryable[:<n>]`
 * (it throws a plain error on its first n attempts, on every attempt without n) or `<seq>:database`
 * (a statement of the step fails in PostgreSQL, on every attempt) or `<seq>:unique` (a statement of the step
 * violates a domain table's unique key, on every attempt; `<seq>:unique-held`: an insert the step holds
 * until its commit does). GP_SLOW_RETRY: JSON,
 * the retry policy of every step (the test's own slowWorkflow({ retry }) must say the same).
 * GP_GATE_GOLDEN_PATH=1: the golden path's own steps go through the same gate (the API's run routes,
 * GET, retry, serve golden-path runs only). GP_VERSIONS: which versions of golden-path and gp-slow the process registers, comma-separated
 * (default 1; 2 is version 1 plus a closing step, versioned-workflows.ts): a worker of an older or a
 * newer release.
 */
import { writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadConfig } from '../../src/platform/config/config.ts';
import { createContainer } from '../../src/container.ts';
import { runWorkerProcess } from '../../src/worker-runtime.ts';
import { PermanentError } from '../../src/platform/errors/app-error.ts';
import type { RetryPolicy } from '../../src/platform/durable/workflow.ts';
import { STEP_ENTERED, gatedWorkflow, slowWorkflow, type SlowVariant, type StepGate } from './slow-workflow.ts';
import { versionsFromEnv, withVersions } from './versioned-workflows.ts';
import { GOLDEN_PATH } from '../../src/modules/golden-path/golden-path.workflow.ts';

const delays = (process.env.GP_SLOW_STEP_MS ?? '0').split(',').map((s) => s.trim());
const variant = (process.env.GP_SLOW_VARIANT ?? 'original') as SlowVariant;
const [failSeq, failKind, failTimes] = (process.env.GP_SLOW_FAIL ?? '').split(':');
const retry = process.env.GP_SLOW_RETRY ? (JSON.parse(process.env.GP_SLOW_RETRY) as Partial<RetryPolicy>) : undefined;
const terminated = new Promise<void>((resolve) => process.once('SIGTERM', () => resolve()));

/** True for the first worker process to get here (GP_SLOW_KILL_ONCE: a file it creates, exclusively). */
const firstToEnter = () => {
  try {
    writeFileSync(process.env.GP_SLOW_KILL_ONCE!, String(process.pid), { flag: 'wx' });
    return true;
  } catch {
    return false;
  }
};

const gate: StepGate = async ({ seq, step, ctx }) => {
  const spec = delays[Math.min(seq, delays.length) - 1] ?? '0';
  ctx.logger.info({ sequence_num: seq, step, delay: spec, attempt: ctx.attempt }, STEP_ENTERED);
  if (failSeq !== undefined && Number(failSeq) === seq) {
    if (failKind === 'permanent') throw new PermanentError('test_permanent', `step ${step} refused for good (GP_SLOW_FAIL)`);
    if (failKind === 'retryable' && (failTimes === undefined || ctx.attempt <= Number(failTimes))) throw new Error(`step ${step} failed on attempt ${ctx.attempt} (GP_SLOW_FAIL)`);
    if (failKind === 'database') await ctx.em.execute(`select 'internal detail of ' || ? || ': ' || (1 / 0)`, [step]);
    // A domain row's unique key violated by the step's own statement (a duplicate natural key), as PostgreSQL raises it: SQLSTATE 23505.
    if (failKind === 'unique') await ctx.em.execute(`do $$ begin raise unique_violation using message = 'duplicate key value violates unique constraint "evidence_packs_tenant_run_unique"', constraint = 'evidence_packs_tenant_run_unique'; end $$`);
    // The same, raised by an insert the step's transaction holds (ADR 0004): it travels with the checkpoint
    // and the commit, as one message that group commit may take (ADR 0007) — a second dossier of the run.
    if (failKind === 'unique-held') {
      await ctx.em.execute(
        `insert into "partner_dossiers" (id, tenant_id, run_id, partner_name, country, completeness_score, content, created_at)
         select gen_random_uuid(), tenant_id, run_id, partner_name, country, completeness_score, content, created_at from partner_dossiers where tenant_id = ? and run_id = ?`,
        [ctx.run.tenantId, ctx.run.id],
      );
    }
  }
  if (spec === 'kill') process.kill(process.pid, 'SIGKILL');
  if (spec === 'kill-once' && firstToEnter()) process.kill(process.pid, 'SIGKILL');
  if (spec === 'block-kill') {
    // Blocks the loop without spinning a CPU (many such workers run at once): no timer, no lock renewal, no I/O.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Number(process.env.GP_SLOW_BLOCK_MS ?? 4000));
    process.kill(process.pid, 'SIGKILL');
  }
  if (spec === 'block') {
    // Synchronous on purpose: no timer, no lock renewal, no I/O runs until it ends (a CPU-bound step, a GC pause).
    const until = Date.now() + Number(process.env.GP_SLOW_BLOCK_MS ?? 4000);
    while (Date.now() < until);
  }
  if (spec === 'hang' || spec === 'block') return new Promise<void>(() => {});
  if (spec === 'sigterm') return terminated;
  if (spec.startsWith('tx-')) {
    await ctx.em.execute('select pg_sleep(?)', [Number(spec.slice(3)) / 1000]);
    return;
  }
  await sleep(Number(spec));
};

const config = loadConfig();
const versions = versionsFromEnv(process.env.GP_VERSIONS);
const container = await createContainer(config, {
  service: 'worker',
  workflows: (fromModules) => withVersions(process.env.GP_GATE_GOLDEN_PATH ? fromModules.map((wf) => (wf.name === GOLDEN_PATH ? gatedWorkflow(wf, gate) : wf)) : fromModules, versions),
  extraWorkflows: withVersions([slowWorkflow({ gate, variant, ...(retry ? { retry } : {}) })], versions),
});
await runWorkerProcess(container);
