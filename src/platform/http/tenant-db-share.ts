interface Waiter {
  resolve(granted: boolean): void;
  timer: NodeJS.Timeout;
  /** The promise `take` returned for it (what `leave` names it by). */
  granted?: Promise<boolean>;
}

/**
 * A tenant's share of this API process's database connections (API_MAX_DB_CONNECTIONS_PER_TENANT; ADR
 * 0012, amendment "A tenant's share of the API's connections"): at most `share` of one tenant's
 * requests do their database work at once. A request's handler holds at most one pooled connection at
 * a time (its transaction, then the idempotency key's settlement: router.ts), so one tenant holds at
 * most `share` connections and the rest of the pool stays free for the others — even while that
 * tenant's submissions queue on its own admission lock (admission.ts) inside their transactions.
 *
 * In-process bookkeeping only: `take` is synchronous while the tenant is under its share (no await,
 * no round trip); past it the request waits here, first come first served, holding no connection,
 * until one of the tenant's requests ends — or for `waitMs` at most (then the caller answers 503).
 */
export class TenantConnectionShare {
  private readonly held = new Map<string, number>();
  private readonly queues = new Map<string, Waiter[]>();
  /** The places one tenant may hold at once. */
  readonly share: number;
  private readonly waitMs: number;
  constructor(share: number, waitMs: number) {
    this.share = share;
    this.waitMs = waitMs;
  }

  /**
   * Takes one of the tenant's places: undefined when taken at once; else a promise of true once one of
   * the tenant's requests hands its place over, or false after `waitMs` (nothing taken).
   */
  take(tenantId: string): Promise<boolean> | undefined {
    const n = this.held.get(tenantId) ?? 0;
    if (n < this.share) {
      this.held.set(tenantId, n + 1);
      return undefined;
    }
    let queue = this.queues.get(tenantId);
    if (!queue) this.queues.set(tenantId, (queue = []));
    let waiter!: Waiter;
    const granted = new Promise<boolean>((resolve) => {
      waiter = { resolve, timer: setTimeout(() => this.drop(tenantId, waiter), this.waitMs) };
    });
    waiter.granted = granted;
    queue.push(waiter);
    return granted;
  }

  /**
   * A waiting request whose client went away leaves the queue at once: its wait ends with false
   * (nothing taken), so it holds no slot for the rest of the wait. A wait already ended is left alone.
   */
  leave(tenantId: string, granted: Promise<boolean>): void {
    const waiter = this.queues.get(tenantId)?.find((w) => w.granted === granted);
    if (waiter) this.drop(tenantId, waiter);
  }

  /** Ends a wait without a place: out of the queue, its timer cleared, false. */
  private drop(tenantId: string, waiter: Waiter): void {
    const q = this.queues.get(tenantId);
    const i = q?.indexOf(waiter) ?? -1;
    if (i >= 0) q!.splice(i, 1);
    if (q?.length === 0) this.queues.delete(tenantId);
    clearTimeout(waiter.timer);
    waiter.resolve(false);
  }

  /** Gives a place back: to the tenant's longest waiter (the count unchanged), else it is free. */
  give(tenantId: string): void {
    const queue = this.queues.get(tenantId);
    const next = queue?.shift();
    if (next) {
      if (queue!.length === 0) this.queues.delete(tenantId);
      clearTimeout(next.timer);
      next.resolve(true);
      return;
    }
    const left = (this.held.get(tenantId) ?? 1) - 1;
    if (left <= 0) this.held.delete(tenantId);
    else this.held.set(tenantId, left);
  }
}

/**
 * A tenant's share of a pool of `poolMax` connections: API_MAX_DB_CONNECTIONS_PER_TENANT when set (0: no
 * share, undefined here), else half the pool (at least one).
 */
export function connectionShareOf(setting: number | undefined, poolMax: number): number | undefined {
  if (setting === 0) return undefined;
  return setting ?? Math.max(1, Math.floor(poolMax / 2));
}
