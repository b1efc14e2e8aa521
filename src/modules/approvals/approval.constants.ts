export const APPROVER_ROLE = 'approver';
/** The golden path's approval step (its name is persisted in checkpoints, and named by approval_requests' trigger: never renamed). */
export const APPROVAL_PACKET_STEP = 'approval-packet';
export const SLA_JOB_NAME = 'approval-sla';
/**
 * The approver a system decision names (`kind: system`): the platform's own, when the approval step
 * approves a class A run by policy. No human may decide under it: a token whose subject is this name is
 * refused at decide time (403), or its decision would read as the platform's in the request, the
 * webhook and the evidence pack.
 */
export const SYSTEM_APPROVER = 'system';
