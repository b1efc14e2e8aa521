import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Webhook } from 'standardwebhooks';
import { DemoError } from './demo-support.ts';

/** One webhook as the receiver kept it: its `webhook-id` and the verified message. */
export interface ReceivedWebhook {
  id: string;
  type: string;
  timestamp: string;
  data: Record<string, unknown>;
}

/** Larger bodies are no Dealix webhook: the connection is dropped. */
const MAX_BODY_BYTES = 256 * 1024;
const PATH = '/dealix-webhooks';

/**
 * The demo's webhook receiver: what a tenant's own server does with Dealix webhooks (docs/api.md,
 * *Verifying a webhook*), on 127.0.0.1 and an ephemeral port in the demo's process. Each POST's raw
 * body and Standard Webhooks headers are verified with the endpoint's secret by the `standardwebhooks`
 * library (signature and timestamp tolerance); one that does not verify is answered 400 and remembered,
 * and the demo fails on it (`assertVerified`). Delivery is at least once, so each `webhook-id` is kept
 * once: a repeat is answered 200 (delivered) and only counted.
 */
export class DemoWebhookReceiver {
  /** Verified webhooks by `webhook-id`, in arrival order. */
  readonly received = new Map<string, ReceivedWebhook>();
  duplicates = 0;
  /** Called for each new verified webhook (the demo prints late ones with --keep-running). */
  onWebhook: ((w: ReceivedWebhook) => void) | undefined;
  private verifier: Webhook | undefined;
  private refused: string | undefined;

  private readonly server: Server = createServer((req, res) => {
    if (req.method !== 'POST' || req.url !== PATH) return void res.writeHead(404).end();
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) req.destroy();
      else chunks.push(c);
    });
    req.on('end', () => res.writeHead(this.accept(Buffer.concat(chunks).toString('utf8'), req.headers)).end());
  });

  private constructor() {}

  /** Listening on 127.0.0.1 and a port the OS picks. */
  static async start(): Promise<DemoWebhookReceiver> {
    const receiver = new DemoWebhookReceiver();
    await new Promise<void>((resolve, reject) => {
      receiver.server.once('error', reject);
      receiver.server.listen(0, '127.0.0.1', () => resolve());
    });
    return receiver;
  }

  /** The URL registered as the tenant's endpoint. */
  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}${PATH}`;
  }

  /** The endpoint's secret, from the create's answer (the only answer that shows it). */
  useSecret(secret: string): void {
    this.verifier = new Webhook(secret);
  }

  /** The status answered: 200 for a verified webhook (new or a repeat), 400 for one that does not verify. */
  private accept(body: string, headers: IncomingHttpHeaders): number {
    // No secret yet: no endpoint to send from either; 503 makes the platform retry rather than give up.
    if (!this.verifier) return 503;
    const id = String(headers['webhook-id'] ?? '');
    let message: { type: string; timestamp: string; data: Record<string, unknown> };
    try {
      message = this.verifier.verify(body, headers as Record<string, string>) as typeof message;
    } catch (e) {
      this.refused ??= `webhook-id ${id || '(none)'}: ${(e as Error).message}`;
      return 400;
    }
    if (this.received.has(id)) {
      this.duplicates++;
      return 200;
    }
    const webhook = { id, type: message.type, timestamp: message.timestamp, data: message.data };
    this.received.set(id, webhook);
    this.onWebhook?.(webhook);
    return 200;
  }

  /** A guard for `until`: throws a DemoError once any webhook did not verify. */
  readonly assertVerified = (): void => {
    if (this.refused) throw new DemoError(`a webhook did not verify with the endpoint's secret (${this.refused})`);
  };

  /** The verified webhook of `type` about run `runId`, once it arrived. */
  find(type: string, runId: string): ReceivedWebhook | undefined {
    for (const w of this.received.values()) if (w.type === type && w.data.run_id === runId) return w;
    return undefined;
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    this.server.closeAllConnections();
    await closed;
  }
}
