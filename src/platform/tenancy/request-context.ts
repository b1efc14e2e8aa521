import { AsyncLocalStorage } from 'node:async_hooks';
import type { EntityManager } from '@mikro-orm/postgresql';
import type { Principal } from './jwt.ts';

/** Per-request (or per-job) context: who is acting, for which tenant, with which tenant-bound entity manager. */
export interface RequestContext {
  requestId: string;
  correlationId: string;
  principal?: Principal;
  em?: EntityManager;
  /** Set while a job or request works on one durable run. */
  runId?: string;
}

export const requestContext = new AsyncLocalStorage<RequestContext>();

export function currentContext(): RequestContext | undefined {
  return requestContext.getStore();
}
