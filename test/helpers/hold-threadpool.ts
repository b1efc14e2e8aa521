/**
 * Holds every thread of this process's libuv threadpool (UV_THREADPOOL_SIZE, default 4): one fs open of a
 * FIFO per thread, each blocked in open(2) until a writer opens its other end — as hung getaddrinfo calls,
 * a slow disk or a long pbkdf2 would hold them. Work submitted after it (fs, crypto, zlib, dns.lookup)
 * waits until `release`. Linux (mkfifo).
 */
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitFor } from './poll.ts';

export function holdThreadpool(threads = Number(process.env.UV_THREADPOOL_SIZE || 4)) {
  const dir = mkdtempSync(join(tmpdir(), 'dealix-pool-'));
  const fifos = Array.from({ length: threads }, (_, i) => join(dir, `t${i}`));
  for (const f of fifos) execFileSync('mkfifo', [f]);
  const held = fifos.map((f) => open(f, 'r'));
  let released = false;
  return {
    /** Opens each FIFO's write end (non-blocking: ENXIO until its reader is in open(2)), so every held open returns. */
    async release() {
      if (released) return;
      released = true;
      for (const f of fifos) {
        await waitFor(
          () => {
            try {
              closeSync(openSync(f, constants.O_WRONLY | constants.O_NONBLOCK));
              return true;
            } catch (e) {
              if ((e as NodeJS.ErrnoException).code === 'ENXIO') return false;
              throw e;
            }
          },
          { timeoutMs: 30_000, intervalMs: 10, what: `the threadpool's open of ${f}` },
        );
      }
      for (const handle of await Promise.all(held)) await handle.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
