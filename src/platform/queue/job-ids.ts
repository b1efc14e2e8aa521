/**
 * Deterministic BullMQ job ids, derived from the submission's idempotency hash and the step:
 * re-adding the same flow is a no-op while its jobs exist, and Postgres checkpoints make a re-run
 * after removal harmless. BullMQ forbids ':' in custom ids and ids that are all digits.
 *
 * `retry` is the run's retry count (durable_runs.retry_count): the jobs of a run an API client
 * retried after it failed end in `-retry<n>`, so they never collide with the jobs of its earlier
 * generations, which BullMQ keeps under their ids in its failed and completed sets (ADR 0009).
 */
export function stepJobId(workflowTag: string, hash: string, sequenceNum: number, stepName: string, retry = 0): string {
  return checkJobId(`${workflowTag}-${hash.slice(0, 40)}-${sequenceNum}-${stepName}${retry > 0 ? `-retry${retry}` : ''}`);
}

export function namedJobId(workflowTag: string, hash: string, name: string): string {
  return checkJobId(`${workflowTag}-${hash.slice(0, 40)}-${name}`);
}

function checkJobId(id: string): string {
  if (id.includes(':') || /^\d+$/.test(id)) throw new Error(`invalid BullMQ job id: ${id}`);
  return id;
}

/**
 * A webhook delivery's job (ADR 0013): one per outbox row and resend (`resends`, the row's count of
 * them), so enqueueing it again while it exists is a no-op, and a resend's job never collides with the
 * job of the delivery's earlier cycle — still active while it completes, or kept finished by BullMQ —
 * as a retried run's jobs end in `-retry<n>`.
 */
export function deliveryJobId(deliveryId: string, resends = 0): string {
  return checkJobId(`wh-${deliveryId}${resends > 0 ? `-r${resends}` : ''}`);
}
