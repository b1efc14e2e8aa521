import pg from 'pg';

/**
 * The messages every pg client of this process sends while `fn` runs (each `query` call's text), for
 * tests that count round trips or compare what two code paths send.
 */
export async function sent<T>(fn: () => Promise<T>): Promise<{ result: T; texts: string[] }> {
  const texts: string[] = [];
  const original = pg.Client.prototype.query;
  pg.Client.prototype.query = function (this: pg.Client, config: any, ...rest: any[]) {
    texts.push(typeof config === 'string' ? config : String(config?.text ?? config));
    return (original as any).call(this, config, ...rest);
  } as any;
  try {
    return { result: await fn(), texts };
  } finally {
    pg.Client.prototype.query = original;
  }
}
