import type { Endpoint } from './route-table.ts';
import { covers } from './route-table.ts';
import type { Probe } from './http.checks.ts';
import { fail, pass, type ReadinessRow } from './readiness.types.ts';
import { TIMER_QUEUE } from '../platform/queue/timers.ts';

/** What the live Bull Board mount reports about itself: where it is mounted and which queues it shows. */
export interface BullBoardInfo {
  basePath: string;
  queueNames: string[];
}

export const NOT_MOUNTED = 'Bull Board not mounted';

/**
 * Bull Board has no authentication of its own: the operator guard (admin-auth: role platform-operator) must sit in
 * front of its mount, and an unauthenticated request to its UI and its JSON API must be refused.
 */
export async function bullBoardAuthRow(info: BullBoardInfo | undefined, endpoints: Endpoint[], probe: Probe): Promise<ReadinessRow> {
  if (!info) return fail('bull-board-auth', NOT_MOUNTED);
  const mounts = endpoints.filter((e) => covers(info.basePath, e.path));
  if (!mounts.length) return fail('bull-board-auth', `${NOT_MOUNTED} at ${info.basePath} in the app's router`);
  // The operator guard, not the tenants' `authenticate`: that lets any tenant's user in, and the board spans tenants.
  const unguarded = mounts.filter((e) => !e.guards.includes('admin-auth'));
  if (unguarded.length) return fail('bull-board-auth', `no operator authentication (admin-auth) in front of ${unguarded.map((e) => e.path).join(', ')}`);
  const base = info.basePath.replace(/\/$/, '');
  for (const path of [base || '/', `${base}/api/queues`]) {
    const status = await probe('get', path);
    if (status !== 401 && status !== 403) return fail('bull-board-auth', `GET ${path} without credentials answered ${status}, not 401/403`);
  }
  return pass('bull-board-auth', `${info.basePath} refuses unauthenticated requests (UI and API)`);
}

/**
 * Every queue of every workflow, and the timers queue their waiting runs depend on (ADR 0015), is
 * registered in Bull Board, so operators see all of a flow's jobs, its SLA timers included.
 */
export function bullBoardQueuesRow(info: BullBoardInfo | undefined, workflowQueues: string[], timerQueues: string[] = [TIMER_QUEUE]): ReadinessRow {
  if (!info) return fail('bull-board-queues', NOT_MOUNTED);
  const wanted = [...new Set(workflowQueues)].sort();
  const missing = [...wanted, ...timerQueues].filter((q) => !info.queueNames.includes(q));
  if (missing.length) return fail('bull-board-queues', `workflow or timer queue(s) not registered in Bull Board: ${missing.join(', ')}`);
  if (!wanted.length) return fail('bull-board-queues', 'no workflow queues found in the container');
  return pass('bull-board-queues', `workflow queue(s) ${wanted.join(', ')} and timer queue(s) ${timerQueues.join(', ')} registered (the board shows ${info.queueNames.join(', ')})`);
}
