/**
 * A step whose transaction PostgreSQL refuses at its COMMIT — a deferred check, here `written_by_its_step`
 * (ADR 0001, amendment "A step's rows commit with its checkpoint": its evidence pack not named by its
 * checkpoint) — while it shares a group commit with other runs' steps (ADR 0007). Every statement of the
 * group succeeds, and the group's one commit is refused: nothing of it commits. The other steps must still
 * commit, each once, and the refused step must fail exactly as it does alone: the same error reaches it,
 * and its run is failed the same way. Run by the real executor, in process, against the real PostgreSQL and
 * Redis as the application role (RLS in force), with one commit in flight so that steps arriving together
 * are grouped.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { Job } from 'bullmq';
import { startStack } from '../helpers/stack.ts';
import { createOrm } from '../../src/platform/db/orm.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { insertRow } from '../../src/platform/db/insert-row.ts';
import { groupCommitFor, type GroupCommitRef } from '../../src/platform/db/group-commit.ts';
import { entities } from '../../src/entities.ts';
import { defineStep, defineWorkflow } from '../../src/platform/durable/workflow.ts';
import { StepExecutor } from '../../src/platform/durable/executor.ts';
import type { StepJobData } from '../../src/platform/durable/runtime.ts';
import { stepJobId } from '../../src/platform/queue/job-ids.ts';
import { EvidencePackRow } from '../../src/modules/evidence/evidence-pack.entity.ts';
import { EVIDENCE_PACK_STEP, evidenceHash } from '../../src/modules/evidence/evidence.service.ts';
import type { EvidencePackContent } from '../../src/modules/golden-path/golden-path.schemas.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { waitFor } from '../helpers/poll.ts';

/** Step 2 of each run waits here until the test lets it go on (by run id). */
const gates = new Map<string, { entered: boolean; open: () => void; opened: Promise<void> }>();
const gateOf = (runId: string) => {
  let g = gates.get(runId);
  if (!g) {
    let open!: () => void;
    const opened = new Promise<void>((resolve) => (open = resolve));
    gates.set(runId, (g = { entered: false, open, opened }));
  }
  return g;
};

/**
 * Two steps: a note, then the evidence step, which writes a pack (held, sent with its checkpoint and the
 * commit, as the golden path's) and names it in its output — or, with `names_pack: false`, names another
 * pack: a step's bug, which the deferred trigger refuses at the commit. One attempt, so the run fails on it.
 */
const WF = defineWorkflow({
  name: 'gc-refused',
  version: 1,
  tag: 'gcr',
  queue: 'gc-refused',
  input: z.object({ names_pack: z.boolean() }),
  steps: [
    defineStep({ name: 'note', input: z.any(), output: z.object({ noted: z.boolean() }), async run() { return { noted: true }; } }),
    defineStep({
      name: EVIDENCE_PACK_STEP,
      input: z.object({ submission: z.object({ names_pack: z.boolean() }) }).passthrough(),
      output: z.object({ evidence_pack_id: z.string(), sha256: z.string() }),
      retry: { attempts: 1 },
      async run({ submission }, ctx) {
        const gate = gateOf(ctx.run.id);
        gate.entered = true;
        await gate.opened;
        const content = { schema: 'dealix.evidence-pack/v1', run: { id: ctx.run.id, tenant_id: ctx.run.tenantId } };
        const sha256 = evidenceHash(content);
        const id = randomUUID();
        // Synthetic content (no golden-path records): what the trigger checks is the checkpoint naming the pack.
        await insertRow(ctx.em, EvidencePackRow, { id, tenantId: ctx.run.tenantId, runId: ctx.run.id, content: content as unknown as EvidencePackContent, sha256, createdAt: ctx.now });
        return { evidence_pack_id: submission.names_pack ? id : randomUUID(), sha256 };
      },
    }),
  ],
});

const stack = await startStack({ api: false, extraWorkflows: [WF] });
// One message on its way at a time: step transactions that arrive while it is out go as one group.
const orm = await createOrm({ ...stack.container.config, DATABASE_GROUP_COMMIT_IN_FLIGHT: 1 }, { entities, clientUrl: stack.db.appUrl, poolMax: 12 });
afterAll(async () => {
  await orm.close(true);
  await stack.stop();
});

const { runtime } = stack.container;
const wf = runtime.workflow(WF.name);
const group = () => groupCommitFor((orm.config.get('driverOptions') as { groupCommit: GroupCommitRef }).groupCommit);
const executor = () => new StepExecutor({ orm, runtime, logger: pino({ level: 'silent' }), workerId: 'test', leaseMs: 2_000 });

/** A new run and its job as a worker receives it first (removed from the queue: executed here). */
async function newRun(namesPack: boolean) {
  const tenant = randomUUID();
  const hash = randomBytes(32).toString('hex');
  const { run } = await runtime.start(tenantEm(stack.container.orm, tenant), WF.name, { tenantId: tenant, principal: 'p', idempotencyHash: hash, input: { names_pack: namesPack }, correlationId: randomUUID() });
  const job = (await runtime.queues.get(wf.queue)!.getJob(stepJobId(wf.tag, hash, 1, wf.steps[0]!.name))) as Job<StepJobData>;
  await job.remove();
  return { run, job };
}

/** What the job's execution ended with, and what the run stored: its status and error, its checkpoints, its packs. */
async function ended(runId: string, outcome: PromiseSettledResult<unknown>) {
  const [run] = (await stack.db.admin(`select status, error from durable_runs where id = $1`, [runId])).rows;
  const checkpoints = (await stack.db.admin(`select sequence_num, step_name, status, attempt, error from durable_checkpoints where run_id = $1 order by sequence_num, created_at`, [runId])).rows;
  const packs = (await stack.db.admin(`select p.id, (select count(*)::int from evidence_seals s where s.id = p.id) as seals from evidence_packs p where p.run_id = $1`, [runId])).rows;
  const job = outcome.status === 'fulfilled' ? { status: (outcome.value as { status: string }).status } : { thrown: (outcome.reason as Error).name, message: (outcome.reason as Error).message };
  return { job, run, checkpoints, packs };
}

describe('a step refused at the commit it shares with other steps (a deferred check)', () => {
  it('fails alone, exactly as it fails on its own; the other steps commit, each once', async () => {
    const runs = await Promise.all([true, true, false, true].map((names) => newRun(names)));
    // Every job runs its first step, then waits at its second, its transaction open and nothing sent yet.
    const executions = runs.map((r) => executor().process(r.job));
    for (const e of executions) e.catch(() => {});
    await waitFor(() => runs.every((r) => gateOf(r.run.id).entered), { timeoutMs: 30_000, what: 'every run at its evidence step' });
    // The first evidence step takes the one slot and waits for the table; the three others queue behind it, then go as one group.
    const lock = await holdTable(stack.db.ownerUrl, 'evidence_packs');
    const before = { ...group().stats };
    let outcomes: PromiseSettledResult<unknown>[];
    try {
      gateOf(runs[0]!.run.id).open();
      await lock.waiting('the first evidence step to wait for the table');
      for (const r of runs.slice(1)) gateOf(r.run.id).open();
      await waitFor(() => group().queued === 3, { timeoutMs: 30_000, what: 'the three other evidence steps to queue behind the first' });
      await lock.release();
      outcomes = await Promise.allSettled(executions);
    } finally {
      await lock.close();
    }

    const got = await Promise.all(runs.map((r, i) => ended(r.run.id, outcomes[i]!)));
    for (const i of [0, 1, 3]) {
      // Each innocent step committed once: its checkpoint, its pack and the pack's seal.
      expect(got[i]).toMatchObject({ job: { status: 'ended' }, run: { status: 'completed', error: null } });
      expect(got[i]!.checkpoints.map((c: { sequence_num: number; status: string; attempt: number }) => [c.sequence_num, c.status, c.attempt])).toEqual([
        [1, 'completed', 1],
        [2, 'completed', 1],
      ]);
      expect(got[i]!.packs).toEqual([{ id: expect.any(String), seals: 1 }]);
    }
    const refused = got[2]!;
    expect(refused.run).toMatchObject({ status: 'failed', error: { code: 'database_error', step: EVIDENCE_PACK_STEP, sequence_num: 2 } });
    expect(refused.run.error.message).toContain('SQLSTATE 42501');
    expect(refused.packs).toEqual([]);
    // They were one group, whose commit was refused (nothing of it committed); its members were then sent again alone.
    expect(group().stats.grouped - before.grouped).toBeGreaterThanOrEqual(1);
    expect(group().stats.failedGroups - before.failedGroups).toBeGreaterThanOrEqual(1);

    // The same step alone (nothing else in flight: no group) ends the same: the job, the run, its checkpoints.
    const failedGroups = group().stats.failedGroups;
    const solo = await newRun(false);
    gateOf(solo.run.id).open();
    const alone = await ended(solo.run.id, (await Promise.allSettled([executor().process(solo.job)]))[0]!);
    expect(group().stats.failedGroups).toBe(failedGroups);
    expect(alone.job).toMatchObject({ thrown: 'UnrecoverableError' });
    expect(refused).toEqual(alone);
  });
});
