/**
 * npm run demo [-- --keep-running]: the golden path end to end on the local PostgreSQL and Redis, as
 * a new user sees it (src/demo/demo.ts). Exits 0 on success; on any failure it names what went wrong,
 * prints the children's logs, stops them and exits 1.
 */
import { parseCommandLine } from '../platform/process/command-line.ts';
import { DemoProcesses } from '../demo/demo-processes.ts';
import { DemoError } from '../demo/demo-support.ts';
import { runDemo } from '../demo/demo.ts';

const { values } = parseCommandLine('usage: npm run demo [-- --keep-running]', { 'keep-running': { type: 'boolean', default: false } });
const procs = new DemoProcesses();
let requestStop: (() => void) | undefined;
const stopRequested = new Promise<void>((resolve) => (requestStop = resolve));
let keptRunning = false;
let aborting = false;

// SIGHUP: the terminal closed. Its default action ended the demo at once, and the children, in process
// groups of their own, kept running (holding the API port, taking the prefix's jobs) with no one to stop them.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(signal, () => {
    if (keptRunning) return requestStop?.(); // --keep-running: a signal is the normal way to finish
    if (aborting) return;
    aborting = true;
    console.error(`\n${signal}: stopping the demo`);
    void procs.stopAll(5_000).finally(() => process.exit(130));
  });
}

// The demo ending any other way (an uncaught error: stdout closed under `npm run demo | head` is EPIPE)
// must not leave them behind either: 'exit' runs synchronously, so each child still running gets its SIGTERM.
process.on('exit', () => procs.signalAll('SIGTERM'));

try {
  const { graceMs } = await runDemo(procs, {
    keepRunning: values['keep-running'] ?? false,
    stopRequested: () => {
      keptRunning = true;
      return stopRequested;
    },
  });
  console.log('\nShutting down the API and the worker…');
  const clean = await procs.stopAll(graceMs);
  console.log(clean ? 'Both stopped cleanly. The demo succeeded.' : 'The demo succeeded, but a child did not stop cleanly.');
  process.exitCode = 0;
} catch (e) {
  // Interrupted: the signal handler stops the children and exits 130; their exit is no failure to report.
  if (!aborting) {
    console.error(`\ndemo failed: ${e instanceof DemoError ? e.message : ((e as Error).stack ?? String(e))}`);
    procs.printLogs();
    await procs.stopAll(5_000);
    process.exitCode = 1;
  }
}
