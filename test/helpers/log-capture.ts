import { Writable } from 'node:stream';

/** A pino destination (StackOptions.logDestination) that keeps every line it is given, parsed, so a test can read the log back. */
export function capturedLog() {
  const lines: Array<Record<string, any>> = [];
  const destination = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { lines, destination };
}
