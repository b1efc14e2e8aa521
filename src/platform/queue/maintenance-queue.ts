/**
 * The maintenance queue's name, apart from maintenance.ts (which imports the executor): the workflow
 * registry refuses it as a run queue (registry.ts, PLATFORM_QUEUES) without an import cycle.
 */
export const MAINTENANCE_QUEUE = 'maintenance';
