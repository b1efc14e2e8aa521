export const APPROVER_ROLE = 'approver';
export const SLA_JOB_NAME = 'approval-sla';
