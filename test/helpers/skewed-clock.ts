/**
 * Loaded with `--import` into a spawned process: its wall clock runs TEST_CLOCK_SKEW_MS ahead of the
 * host's (behind when negative), as a host whose clock is off from the database's. `Date.now()` and
 * `new Date()` without arguments read it; PostgreSQL and Redis keep the host's clock.
 */
const skew = Number(process.env.TEST_CLOCK_SKEW_MS ?? 0);
if (skew) {
  const RealDate = Date;
  const realNow = RealDate.now.bind(RealDate);
  class SkewedDate extends RealDate {
    constructor(...args: unknown[]) {
      if (args.length === 0) super(realNow() + skew);
      else super(...(args as [string]));
    }
    static override now(): number {
      return realNow() + skew;
    }
  }
  globalThis.Date = SkewedDate as DateConstructor;
}
export {};
