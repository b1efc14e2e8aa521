import express from 'express';
import type { Config } from '../config/config.ts';

/**
 * TRUST_PROXY as Express compiles it (`trust proxy`, proxy-addr): the schema checks only its characters, so
 * a typo (`loopbak`), a prefix past the address's bits or a netmask that is none passed it, and Express threw
 * a TypeError when the app was built, after the connections had been opened: a stack trace, not the setting
 * named. Checked by createContainer for the processes that build the app, before anything connects.
 */
export function trustProxyProblems(value: Config['TRUST_PROXY']): string[] {
  try {
    express().set('trust proxy', value);
    return [];
  } catch (e) {
    return [`TRUST_PROXY: "${String(value)}" is not true, false, a hop count, or addresses/subnets/loopback|linklocal|uniquelocal, comma-separated (${(e as Error).message})`];
  }
}
