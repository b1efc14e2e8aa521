export const APPROVER_ROLE = 'approver';
/** Manages the tenant's configuration, such as its approval policy. */
export const ADMIN_ROLE = 'admin';
export const SLA_JOB_NAME = 'approval-sla';
