import { describe, expect, it } from 'vitest';
import express, { type NextFunction, type Request, type Response } from 'express';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import { authenticate, tagMiddleware } from '../../src/platform/tenancy/auth.middleware.ts';
import type { ReadinessDeps } from '../../src/readiness/readiness.ts';
import { NOT_MOUNTED } from '../../src/readiness/bull-board.checks.ts';
import type { Container } from '../../src/container.ts';
import { addBeforeFallbacks, matrixFor, okHandler } from './readiness.fixtures.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';

/**
 * HTTP rows of the readiness matrix, read from the live app's router stack and probed over loopback:
 * each test adds an offending route or mount to a throwaway copy of the real app (createApp on a fresh
 * container) and sees its row, and only its row, fail.
 */
const BOARD = '/test-board';

/** A real Bull Board on the container's queues, mounted at BOARD behind the given middleware (none: unguarded). */
function mountBoard(app: express.Express, queues: Container['queues'], guard?: (req: Request, res: Response, next: NextFunction) => void, only?: string[]) {
  const serverAdapter = new ExpressAdapter();
  serverAdapter.setBasePath(BOARD);
  const names = [...queues.keys()].filter((n) => !only || only.includes(n));
  createBullBoard({ queues: names.map((n) => new BullMQAdapter(queues.get(n)!, { readOnlyMode: true })), serverAdapter });
  addBeforeFallbacks(app, (a) => (guard ? a.use(BOARD, guard, serverAdapter.getRouter()) : a.use(BOARD, serverAdapter.getRouter())));
  return { basePath: BOARD, queueNames: names };
}

const refuse = tagMiddleware((_req: Request, res: Response) => void res.status(401).json({ title: 'Unauthorized' }), 'admin-auth');
const letThrough = (kind: 'authenticate' | 'admin-auth') => tagMiddleware((_req: Request, _res: Response, next: NextFunction) => next(), kind);

/** Adjusts the live app of the matrix; the container gives the real queues, verifier and ORM. */
const onApp = (fn: (app: express.Express, c: Container) => Partial<ReadinessDeps> | void) => (d: ReadinessDeps, c: Container) => fn(d.app, c);

describe('idempotency on mutating routes', () => {
  it('a POST route without the idempotency middleware fails the row, naming it', async () => {
    const m = await matrixFor({
      adjust: onApp((app, c) => {
        const auth = authenticate(c.verifier, c.orm, c.logger);
        addBeforeFallbacks(app, (a) => a.post('/api/v1/unsafe', auth, okHandler));
      }),
    });
    expect(m.row('routes-idempotency').status).toBe('FAIL');
    expect(m.row('routes-idempotency').reason).toMatch(/POST \/api\/v1\/unsafe/);
    expect(m.row('routes-authentication').status).toBe('PASS');
  });
});

describe('authentication on every route', () => {
  it('a route without authentication fails the row, naming it', async () => {
    const m = await matrixFor({ adjust: onApp((app) => void addBeforeFallbacks(app, (a) => a.get('/api/v1/open', okHandler))) });
    expect(m.row('routes-authentication').status).toBe('FAIL');
    expect(m.row('routes-authentication').reason).toMatch(/GET \/api\/v1\/open has no authentication middleware/);
    expect(m.row('routes-idempotency').status).toBe('PASS');
  });

  it('a middleware tagged authenticate that lets strangers in is caught by the live probe', async () => {
    const m = await matrixFor({ adjust: onApp((app) => void addBeforeFallbacks(app, (a) => a.get('/api/v1/leaky/:id', letThrough('authenticate'), okHandler))) });
    expect(m.row('routes-authentication').status).toBe('FAIL');
    expect(m.row('routes-authentication').reason).toMatch(/GET \/api\/v1\/leaky\/[0-9a-f-]+ without credentials answered 200/);
  });

  it('an unguarded mounted sub-application fails the row', async () => {
    const m = await matrixFor({ adjust: onApp((app) => void addBeforeFallbacks(app, (a) => a.use('/internal', express().get('/', okHandler)))) });
    expect(m.row('routes-authentication').reason).toMatch(/mount \/internal has no authentication middleware/);
  });

  it('an unguarded sub-application or static directory mounted at the root fails the row: it answers paths the router stack does not list', async () => {
    const subApp = await matrixFor({ adjust: onApp((app) => void addBeforeFallbacks(app, (a) => a.use(express().get('/internal/open', okHandler)))) });
    expect(subApp.row('routes-authentication').status).toBe('FAIL');
    expect(subApp.row('routes-authentication').reason).toMatch(/mount \/ has no authentication middleware/);
    const files = await matrixFor({ adjust: onApp((app) => void addBeforeFallbacks(app, (a) => a.use(express.static(import.meta.dirname)))) });
    expect(files.row('routes-authentication').status).toBe('FAIL');
    expect(files.row('routes-authentication').reason).toMatch(/mount \/ has no authentication middleware/);
  });

  it('health, metrics and the API documents stay public without failing the row', async () => {
    const m = await matrixFor({
      adjust: onApp((app) => {
        addBeforeFallbacks(app, (a) => {
          a.get('/openapi.json', okHandler);
          a.use('/docs', express().get('/', okHandler));
        });
      }),
    });
    expect(m.row('routes-authentication').status).toBe('PASS');
  });
});

describe('Bull Board', () => {
  it('not mounted fails both Bull Board rows', async () => {
    const m = await matrixFor({ adjust: () => ({ bullBoard: undefined }) });
    expect(m.row('bull-board-auth')).toEqual({ component: 'bull-board-auth', status: 'FAIL', reason: NOT_MOUNTED });
    expect(m.row('bull-board-queues')).toEqual({ component: 'bull-board-queues', status: 'FAIL', reason: NOT_MOUNTED });
  });

  it('mounted without authentication fails bull-board-auth', async () => {
    const m = await matrixFor({ adjust: onApp((app, c) => ({ bullBoard: mountBoard(app, c.queues) })) });
    expect(m.row('bull-board-auth').status).toBe('FAIL');
    expect(m.row('bull-board-auth').reason).toMatch(/no operator authentication \(admin-auth\) in front of \/test-board/);
  });

  it("behind the tenants' authenticate only, bull-board-auth fails: any tenant's user would see every tenant's jobs", async () => {
    const tenantAuth = tagMiddleware((_req: Request, res: Response) => void res.status(401).json({ title: 'Unauthorized' }), 'authenticate');
    const m = await matrixFor({ adjust: onApp((app, c) => ({ bullBoard: mountBoard(app, c.queues, tenantAuth) })) });
    expect(m.row('bull-board-auth').status).toBe('FAIL');
    expect(m.row('bull-board-auth').reason).toMatch(/no operator authentication \(admin-auth\) in front of \/test-board/);
  });

  it('behind an admin-auth that does not refuse, the unauthenticated probe fails bull-board-auth', async () => {
    const m = await matrixFor({ adjust: onApp((app, c) => ({ bullBoard: mountBoard(app, c.queues, letThrough('admin-auth')) })) });
    expect(m.row('bull-board-auth').reason).toMatch(/GET \/test-board without credentials answered 200/);
  });

  it('behind a refusing admin-auth it passes; a workflow queue missing from the board fails bull-board-queues', async () => {
    const m = await matrixFor({ adjust: onApp((app, c) => ({ bullBoard: mountBoard(app, c.queues, refuse, ['maintenance']) })) });
    expect(m.row('bull-board-auth').status).toBe('PASS');
    expect(m.row('bull-board-queues').status).toBe('FAIL');
    expect(m.row('bull-board-queues').reason).toMatch(/not registered in Bull Board: golden-path/);
  });

  it('a board without the timers queue fails bull-board-queues: the SLA timers would be out of sight (ADR 0015)', async () => {
    const m = await matrixFor({ adjust: onApp((app, c) => ({ bullBoard: mountBoard(app, c.queues, refuse, [...c.queues.keys()].filter((q) => q !== TIMER_QUEUE)) })) });
    expect(m.row('bull-board-queues').status).toBe('FAIL');
    expect(m.row('bull-board-queues').reason).toMatch(/not registered in Bull Board: timers$/);
  });
});
