import type { Express } from 'express';
import { BULL_BOARD_PATH, boardQueues } from '../platform/http/admin-board.ts';
import type { BullBoardInfo } from './bull-board.checks.ts';
import { covers, routeTable } from './route-table.ts';

/**
 * Where the live app mounts Bull Board and which queues it registered (recorded by createApp through
 * setBoardQueues); undefined when nothing is mounted at the Bull Board path.
 */
export function bullBoardInfo(app: Express): BullBoardInfo | undefined {
  const mounted = routeTable(app).some((e) => e.kind === 'mount' && covers(BULL_BOARD_PATH, e.path));
  return mounted ? { basePath: BULL_BOARD_PATH, queueNames: boardQueues(app) } : undefined;
}
