import { Migrator as MikroOrmMigrator, type Migration } from '@mikro-orm/migrations';
import type { MigrateOptions, MigrationInfo, MikroORM } from '@mikro-orm/core';
import type { EntityManager } from '@mikro-orm/sql';
import { fs } from '@mikro-orm/core/fs-utils';

type Runnable = { name: string; path?: string; up: (afterRun?: () => Promise<void>) => Promise<void>; down: (afterRun?: () => Promise<void>) => Promise<void> };

/**
 * MikroORM's migrator, except that a migration which opts out of the transaction (`isTransactional()`
 * false: `CREATE INDEX CONCURRENTLY`, which PostgreSQL refuses inside one) runs alone, outside any.
 *
 * With `allOrNothing` MikroORM opens one transaction for every migration of the call and runs a
 * non-transactional one beside it, on another pooled connection, while that transaction stays open:
 * a concurrent build then waits for the locks the earlier migrations of the batch hold (a fresh
 * database: the `durable_runs` they created) and the batch waits for the build, for ever; with a
 * pool of one connection it waits for that connection. Here the migrations to run are split at each
 * non-transactional one: the transactional runs before and after it are each all-or-nothing, as
 * before, and a failure stops the call with the earlier runs applied (docs/runbook.md, *Migrate*).
 * Every caller of `orm.migrator.up()` / `down()` gets this, `migrate()` and the tests alike.
 *
 * Named `Migrator`: MikroORM.init() adds its own Migrator, registered after this one and so
 * replacing it, unless the extensions already hold a class of that name.
 */
export class Migrator extends MikroOrmMigrator {
  static override register(orm: MikroORM): void {
    orm.config.registerExtension('@mikro-orm/migrator', () => new Migrator(orm.em as EntityManager));
  }

  protected override async runMigrations(method: 'up' | 'down', options?: string | string[] | MigrateOptions): Promise<MigrationInfo[]> {
    const opts: MigrateOptions = typeof options === 'string' || Array.isArray(options) ? { migrations: [options].flat() } : (options ?? {});
    // An outer transaction of the caller's, or another schema: MikroORM's own way, unchanged.
    if (!this.options.transactional || !this.options.allOrNothing || opts.transaction || opts.schema !== undefined) return super.runMigrations(method, options);
    await this.init();
    const plan = await this.plan(method, opts);
    const alone = new Set<string>();
    for (const m of plan) if (!(await this.isTransactional(m))) alone.add(m.name);
    if (!alone.size) return super.runMigrations(method, options);

    const done: MigrationInfo[] = [];
    let batch: string[] = [];
    const flush = async () => {
      if (batch.length) done.push(...(await super.runMigrations(method, { migrations: batch })));
      batch = [];
    };
    for (const m of plan) {
      if (!alone.has(m.name)) {
        batch.push(m.name);
        continue;
      }
      await flush();
      // MikroORM's log lines, which its private emit() would print: the build may take minutes.
      const log = (what: string) => !this.options.silent && this.config.getLogger().log('migrator', `${what} '${m.name}'`, { enabled: true });
      log('Processing');
      // No master transaction: the runner runs its statements on their own and records it after them.
      await m[method](async () => (method === 'up' ? this.storage.logMigration({ name: m.name }) : this.storage.unlogMigration({ name: m.name })));
      log(method === 'up' ? 'Applied' : 'Reverted');
      done.push({ name: m.name, path: m.path });
    }
    await flush();
    return done;
  }

  /** The migrations `up` / `down` would run for these options, in order (MikroORM's filterUp / filterDown, for the options this project uses). */
  private async plan(method: 'up' | 'down', opts: MigrateOptions): Promise<Runnable[]> {
    const all = (await this.discoverMigrations()) as Runnable[];
    const executed = await this.storage.executed();
    const named = opts.migrations ? new Set(opts.migrations.map((n) => n.replace(/\.[jt]s$/, ''))) : undefined;
    const index = (name: string | number | undefined) => all.findIndex((m) => m.name === String(name).replace(/\.[jt]s$/, ''));
    if (method === 'up') {
      const from = opts.from !== undefined ? index(opts.from) : -1;
      const to = opts.to !== undefined && opts.to !== 0 ? index(opts.to) : -1;
      return all.filter((m, i) => !executed.includes(m.name) && (!named || named.has(m.name)) && (from < 0 || i > from) && (to < 0 || i <= to));
    }
    const byName = new Map(all.map((m) => [m.name, m]));
    const reversed = [...executed].reverse();
    let names: string[];
    if (named) names = reversed.filter((n) => named.has(n));
    else if (opts.to === 0) names = reversed;
    else if (opts.to !== undefined) {
      const stop = reversed.indexOf(String(opts.to).replace(/\.[jt]s$/, ''));
      names = stop < 0 ? reversed : reversed.slice(0, stop);
    } else names = reversed.slice(0, 1);
    return names.map((n) => byName.get(n)).filter((m): m is Runnable => m !== undefined);
  }

  private async isTransactional(m: Runnable): Promise<boolean> {
    const instance = (Class: unknown) => new (Class as new (...args: unknown[]) => Migration)(this.driver, this.config);
    if (m.path) {
      // How MikroORM's resolve() finds the class; an instance only to ask it (the constructor stores its arguments).
      const mod = (await fs.dynamicImport(m.path)) as Record<string, unknown>;
      const Class = Object.values(mod).find((c) => typeof c === 'function');
      return Class ? instance(Class).isTransactional() : true;
    }
    // `migrationsList` (classes, or { name, class }): named as MikroORM's initialize() names them.
    for (const entry of this.options.migrationsList ?? []) {
      const [Class, listed] = typeof entry === 'function' ? [entry, undefined] : [entry.class, entry.name];
      const migration = instance(Class);
      if (this.storage.getMigrationName(listed ?? migration.name ?? Class.name) === m.name) return migration.isTransactional();
    }
    return true;
  }
}
