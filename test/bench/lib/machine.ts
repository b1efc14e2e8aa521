import os from 'node:os';
import { Redis } from 'ioredis';
import { adminQuery, REDIS_URL } from './bench-db.ts';

export interface MachineInfo {
  cpus: number;
  cpuModel: string;
  memoryGiB: number;
  node: string;
  postgres: string;
  postgresSettings: Record<string, string>;
  redis: string;
  loadAverageAtStart: number[];
  loadAverageAtEnd?: number[];
}

export async function machineInfo(): Promise<MachineInfo> {
  const pgv = await adminQuery('show server_version');
  const settings = await adminQuery(
    `select name, setting from pg_settings where name in ('max_connections', 'shared_buffers', 'synchronous_commit', 'fsync', 'wal_sync_method', 'commit_delay') order by name`,
  );
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  let redisVersion = 'unknown';
  try {
    redisVersion = /redis_version:(\S+)/.exec(await redis.info('server'))?.[1] ?? 'unknown';
  } finally {
    redis.disconnect();
  }
  return {
    cpus: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    postgres: String(pgv.rows[0].server_version),
    postgresSettings: Object.fromEntries(settings.rows.map((r: { name: string; setting: string }) => [r.name, r.setting])),
    redis: redisVersion,
    loadAverageAtStart: os.loadavg().map((v) => Math.round(v * 100) / 100),
  };
}
