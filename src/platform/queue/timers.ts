/**
 * The timers queue: the delayed jobs a waiting run depends on (the golden path's approval SLA timers;
 * any workflow's `waitingJobId`), apart from the run jobs (ADR 0015). A delayed job that comes due is
 * moved to the back of its queue's wait list: in a workflow's own queue it waited behind every run job
 * queued there, so a burst of submissions made an SLA expire minutes late. Here it waits only behind
 * other timers, which every worker process takes with its own WORKER_TIMER_CONCURRENCY, never a tenant
 * slot and never the step executor.
 *
 * Timers that releases before this one added to the workflow's queue (same job id, same name) still
 * fire there (its worker hands non-run jobs to their handlers), are still removed there by a decision or
 * a cancel, and count as alive for the sweeper.
 */
export const TIMER_QUEUE = 'timers';
