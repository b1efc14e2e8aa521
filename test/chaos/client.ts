import { randomUUID } from 'node:crypto';

/**
 * The chaos client: submits runs over HTTP the way a careful integrator would (one Idempotency-Key
 * per submission, retried on 409/429/5xx/network errors until a 202), then retries the same key at
 * least once more on purpose — sometimes twice concurrently — and records every run id it was given.
 */

export interface Submission {
  key: string;
  tenant: string;
  cls: 'A' | 'B';
  /** Every run id a 202 (first answer or replay) carried for this key: exactly one is correct. */
  runIds: string[];
  posts: number;
  replays: number;
  /** Answers that were not a 202 on the way, by status ('net' for a network error). */
  refusals: Record<string, number>;
  acceptedAt?: number;
  error?: string;
}

export interface ClientStats {
  posts: number;
  replays: number;
  refusals: Record<string, number>;
  /** 4xx other than 409/429, and 5xx other than 503: each is a finding. */
  unexpected: string[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Honours Retry-After (with jitter); otherwise exponential backoff from 200 ms, capped at 5 s. */
function retryDelay(res: Response | undefined, attempt: number): number {
  const header = Number(res?.headers.get('retry-after'));
  if (Number.isFinite(header) && header > 0) return Math.min(header * 1000, 10_000) * (0.75 + Math.random() / 2);
  return Math.min(200 * 2 ** Math.min(attempt, 5), 5000) * (0.5 + Math.random() / 2);
}

export class ChaosClient {
  readonly stats: ClientStats = { posts: 0, replays: 0, refusals: {}, unexpected: [] };
  private readonly baseUrl: string;
  private readonly deadlineMs: number;
  constructor(baseUrl: string, opts: { deadlineMs?: number } = {}) {
    this.baseUrl = baseUrl;
    this.deadlineMs = opts.deadlineMs ?? 180_000;
  }

  private refuse(target: Record<string, number>, what: string) {
    target[what] = (target[what] ?? 0) + 1;
    this.stats.refusals[what] = (this.stats.refusals[what] ?? 0) + 1;
  }

  /** POSTs until a 2xx; returns the JSON body and whether it was a replay. */
  private async postUntilAccepted(path: string, token: string, key: string, body: unknown, refusals: Record<string, number>, accept: (status: number, json: any) => boolean) {
    const deadline = Date.now() + this.deadlineMs;
    for (let attempt = 0; ; attempt++) {
      if (Date.now() > deadline) throw new Error(`gave up on ${path} (key ${key}) after ${attempt} attempts`);
      let res: Response | undefined;
      try {
        this.stats.posts++;
        res = await fetch(`${this.baseUrl}${path}`, {
          method: 'POST',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': key },
          body: JSON.stringify(body),
          signal: AbortSignal.timeout(60_000),
        });
        const json: any = await res.json().catch(() => undefined);
        if (accept(res.status, json)) {
          const replayed = res.headers.get('idempotent-replayed') === 'true';
          if (replayed) this.stats.replays++;
          return { json, replayed, status: res.status };
        }
        this.refuse(refusals, String(res.status));
        if (res.status !== 409 && res.status !== 429 && res.status !== 503) {
          this.stats.unexpected.push(`POST ${path} → ${res.status} ${JSON.stringify(json).slice(0, 300)}`);
          if (res.status < 500) throw new Error(`POST ${path} refused for good: ${res.status}`);
        }
      } catch (e) {
        if ((e as Error).message.includes('refused for good')) throw e;
        this.refuse(refusals, 'net');
      }
      await sleep(retryDelay(res, attempt));
    }
  }

  /** Submits one run (optionally twice at once); then retries the same key once more and records each run id. */
  async submit(sub: Submission, token: string, body: unknown, opts: { concurrentDuplicate: boolean; retry?: boolean }): Promise<void> {
    const once = async () => {
      sub.posts++;
      const { json, replayed } = await this.postUntilAccepted('/api/v1/golden-path/run', token, sub.key, body, sub.refusals, (s) => s === 202);
      if (replayed) sub.replays++;
      sub.runIds.push(String(json?.run_id));
    };
    try {
      if (opts.concurrentDuplicate) await Promise.all([once(), once()]);
      else await once();
      sub.acceptedAt ??= Date.now();
      if (opts.retry !== false) await once(); // the deliberate idempotent retry
    } catch (e) {
      sub.error = (e as Error).message;
    }
  }

  /** Approves every pending approval of a tenant it has not approved yet; each decision is retried by key too. */
  async approvePending(token: string, done: Set<string>): Promise<number> {
    const res = await fetch(`${this.baseUrl}/api/v1/approvals?status=pending&limit=100`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(30_000) }).catch(() => undefined);
    if (!res?.ok) return 0;
    const items = ((await res.json()) as { items: Array<{ id: string }> }).items;
    let n = 0;
    for (const item of items) {
      if (done.has(item.id)) continue;
      const key = `approve-${item.id}`;
      const path = `/api/v1/approvals/${item.id}/decision`;
      // 409 approval_decided: an earlier attempt of ours committed but its answer was lost.
      const accept = (s: number, json: any) => s === 200 || (s === 409 && json?.code === 'approval_decided');
      const body = { decision: 'approve', comment: 'chaos' };
      const scratch: Record<string, number> = {};
      await this.postUntilAccepted(path, token, key, body, scratch, accept);
      await this.postUntilAccepted(path, token, key, body, scratch, accept);
      done.add(item.id);
      n++;
    }
    return n;
  }
}

export function newSubmission(tenant: string, cls: 'A' | 'B'): Submission {
  return { key: randomUUID(), tenant, cls, runIds: [], posts: 0, replays: 0, refusals: {} };
}
