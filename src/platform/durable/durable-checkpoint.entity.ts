import { defineEntity, p, type InferEntity } from '@mikro-orm/core';
import { tenantIdProperty, tenantIsolationPolicy } from '../db/tenant-owned.ts';
import { DurableRun } from './durable-run.entity.ts';

export const CHECKPOINT_STATUSES = ['started', 'completed', 'failed', 'waiting'] as const;
export type CheckpointStatus = (typeof CHECKPOINT_STATUSES)[number];

/**
 * The durable record of one step of one run. Written in the same transaction as the step's
 * effects; its primary key (tenant, run, sequence_num) makes a concurrent second execution roll back.
 * `id` is kept (written, never looked up) but not indexed: every statement finds a checkpoint by its
 * key, and an index on a random uuid alone cost every checkpoint insert a second B-tree insert
 * (docs/performance.md, session 24).
 */
export const DurableCheckpoint = defineEntity({
  name: 'DurableCheckpoint',
  tableName: 'durable_checkpoints',
  properties: {
    id: p.uuid(),
    tenantId: tenantIdProperty().primary(),
    // (tenant_id, run_id) → durable_runs (tenant_id, id): referential checks bypass RLS, so the key carries
    // the tenant and a checkpoint can never point at (or probe) another tenant's run.
    run: () => p.manyToOne(DurableRun).joinColumns('tenant_id', 'run_id').referencedColumnNames('tenant_id', 'id').deleteRule('cascade').primary(),
    sequenceNum: p.integer().primary(),
    stepName: p.string().length(100),
    status: p.enum(CHECKPOINT_STATUSES),
    output: p.json<unknown>().nullable(),
    error: p.json<unknown>().nullable(),
    attempt: p.integer().default(1),
    createdAt: p.datetime(),
    updatedAt: p.datetime(),
    completedAt: p.datetime().nullable(),
  },
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('durable_checkpoints')],
});
export type IDurableCheckpoint = InferEntity<typeof DurableCheckpoint>;
