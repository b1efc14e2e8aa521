/** Module loader hooks of hold-startup.ts (they run on Node's hooks thread). */
import type { MessagePort } from 'node:worker_threads';

let port: MessagePort;
let target = '';
let release!: () => void;
const released = new Promise<void>((resolve) => (release = resolve));

export function initialize(data: { port: MessagePort; target: string }): void {
  port = data.port;
  target = data.target;
  port.on('message', (m) => {
    if (m === 'release') release();
  });
  port.unref();
}

export async function load(url: string, context: unknown, nextLoad: (url: string, context: unknown) => Promise<unknown>): Promise<unknown> {
  if (url.endsWith(target)) {
    port.postMessage('held');
    await released;
  }
  return nextLoad(url, context);
}
