/** The SQLSTATE a promise fails with (through MikroORM's wrappers too), or 'succeeded'. */
export async function sqlState(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'succeeded';
  } catch (e) {
    for (let cur = e as { code?: unknown; cause?: unknown } | undefined; cur; cur = cur.cause as typeof cur) {
      if (typeof cur.code === 'string' && /^[0-9A-Z]{5}$/.test(cur.code)) return cur.code;
    }
    throw e;
  }
}
