/**
 * Preloaded into a child process by the early-signal tests (`node --import ./test/helpers/hold-startup.ts
 * <entry>`): holds the loading of `src/container.ts` — the heavy part of every entry's start — (or of
 * the module HOLD_STARTUP_AT names) and tells
 * the parent over IPC (`'held'`) once the entry asks for it, so the parent can send a signal at a known
 * point of the start, while modules are still loading. `'release'` from the parent lets it load.
 */
import { register } from 'node:module';
import { MessageChannel } from 'node:worker_threads';

const { port1, port2 } = new MessageChannel();
// HOLD_STARTUP_AT: the end of the held module's URL (default /src/container.ts).
const target = process.env.HOLD_STARTUP_AT ?? '/src/container.ts';
register('./hold-startup.hooks.ts', import.meta.url, { data: { port: port2, target }, transferList: [port2] });
// The port keeps the process alive while the load is held (a held import alone does not: Node would
// end the process with status 13, an unsettled top-level await); closed once released.
port1.on('message', (m) => process.send?.(m));
process.on('message', (m) => {
  if (m !== 'release') return;
  port1.postMessage('release');
  port1.close();
});
process.channel?.unref();
