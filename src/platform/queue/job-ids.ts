/**
 * Deterministic BullMQ job ids, derived from the submission's idempotency hash and the step:
 * re-adding the same flow is a no-op while its jobs exist, and Postgres checkpoints make a re-run
 * after removal harmless. BullMQ forbids ':' in custom ids and ids that are all digits.
 */
export function stepJobId(workflowTag: string, hash: string, sequenceNum: number, stepName: string): string {
  return checkJobId(`${workflowTag}-${hash.slice(0, 40)}-${sequenceNum}-${stepName}`);
}

export function namedJobId(workflowTag: string, hash: string, name: string): string {
  return checkJobId(`${workflowTag}-${hash.slice(0, 40)}-${name}`);
}

function checkJobId(id: string): string {
  if (id.includes(':') || /^\d+$/.test(id)) throw new Error(`invalid BullMQ job id: ${id}`);
  return id;
}
