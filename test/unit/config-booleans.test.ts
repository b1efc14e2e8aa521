import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig, telemetryEnv } from '../../src/platform/config/config.ts';

/**
 * OTEL_SDK_DISABLED is read twice: by the config schema (readiness reports it) and by the telemetry
 * bootstrap, which runs before the config is loaded. Both must read the same text the same way, or
 * readiness says "disabled" while the SDK exports.
 */
const base = { JWT_SECRET: 'x'.repeat(40) };
const saved = process.env.OTEL_SDK_DISABLED;
afterEach(() => {
  if (saved === undefined) delete process.env.OTEL_SDK_DISABLED;
  else process.env.OTEL_SDK_DISABLED = saved;
});

describe('OTEL_SDK_DISABLED', () => {
  it.each([
    ['true', true],
    ['1', true],
    ['yes', true],
    ['false', false],
    ['0', false],
    ['no', false],
  ])('%s reads %s in the config and in the telemetry bootstrap alike', (text, disabled) => {
    expect(parseConfig({ ...base, OTEL_SDK_DISABLED: text }).OTEL_SDK_DISABLED).toBe(disabled);
    process.env.OTEL_SDK_DISABLED = text;
    expect(telemetryEnv().disabled).toBe(disabled);
  });
});
