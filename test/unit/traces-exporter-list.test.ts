import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomUUID } from 'node:crypto';
import { context, propagation, trace } from '@opentelemetry/api';
import { NodeSDK } from '@opentelemetry/sdk-node';
import type { SpanProcessor } from '@opentelemetry/sdk-trace';
import { telemetryEnv, type Config } from '../../src/platform/config/config.ts';
import { exportProcessors } from '../../src/platform/telemetry/span-export.ts';
import { telemetryRow } from '../../src/readiness/settings.checks.ts';
import { startOtlpReceiver, type OtlpReceiver } from '../helpers/otlp-receiver.ts';

/**
 * OTEL_TRACES_EXPORTER is a comma-separated list. register.ts builds the export processors itself
 * (span-export.ts: it adds its own processor, so the SDK's reading of the variable is bypassed), and the
 * readiness row `telemetry` judges the same variable. Both must read a list exactly as the OpenTelemetry
 * SDK's NodeSDK does — `none` first turns export off, `none` after another name is dropped with the
 * others, leaving OTLP alone — or an operator who follows the SDK's documentation gets something else,
 * and the readiness row passes a setting that exports nowhere. Each value is run through the real SDK
 * (NodeSDK reading the variable itself) and through the platform's processors, and what reaches an
 * OTLP receiver and the console is compared.
 */
let receiver: OtlpReceiver;
const saved = { ...process.env };

beforeAll(async () => {
  receiver = await startOtlpReceiver();
  Object.assign(process.env, {
    OTEL_SDK_DISABLED: 'false',
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    OTEL_METRICS_EXPORTER: 'none',
    OTEL_LOGS_EXPORTER: 'none',
    OTEL_NODE_RESOURCE_DETECTORS: 'none',
  });
});
afterAll(async () => {
  process.env = saved;
  await receiver?.close();
});

type Exported = { otlp: boolean; console: boolean };

/** Where a span ends up with OTEL_TRACES_EXPORTER=value: the SDK's own processors (`processors` undefined) or the given ones. */
async function exportedWith(value: string, processors?: (env: ReturnType<typeof telemetryEnv>) => Promise<SpanProcessor[]>): Promise<Exported> {
  process.env.OTEL_TRACES_EXPORTER = value;
  const name = `probe-${randomUUID()}`;
  const printed: string[] = [];
  const dir = vi.spyOn(console, 'dir').mockImplementation((o: unknown) => void printed.push(JSON.stringify(o)));
  try {
    const sdk = new NodeSDK({ instrumentations: [], ...(processors ? { spanProcessors: await processors(telemetryEnv()) } : {}) });
    sdk.start();
    trace.getTracer('exporter-list').startSpan(name).end();
    // Shutting down flushes: the OTLP export has been answered when it resolves.
    await sdk.shutdown();
  } finally {
    dir.mockRestore();
    trace.disable();
    context.disable();
    propagation.disable();
  }
  return { otlp: receiver.spans.some((s) => s.name === name), console: printed.some((p) => p.includes(name)) };
}

const VALUES = ['', 'otlp', 'console', 'none', 'null', 'otlp,console', 'otlp,none', 'none,otlp', 'console,none', 'none,console', 'none,none', ' none , null '];

describe('OTEL_TRACES_EXPORTER lists, as the OpenTelemetry SDK reads them', () => {
  for (const value of VALUES) {
    it(`"${value}": the platform exports where the SDK would, and the readiness row says so`, async () => {
      const sdk = await exportedWith(value);
      const ours = await exportedWith(value, exportProcessors);
      expect(ours, 'the platform’s processors').toEqual(sdk);
      const row = telemetryRow({ OTEL_SDK_DISABLED: false, OTEL_TRACES_EXPORTER: value, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url } as Config);
      const mixed = value.split(',').map((s) => s.trim()).filter((s) => s && s !== 'null').some((s, _, all) => s === 'none' && all.some((o) => o !== 'none'));
      if (mixed) {
        // `none` beside another name: the SDK exports to neither what `none` nor what the list says; never a silent pass.
        expect(row.status, row.reason).toBe('FAIL');
        expect(row.reason).toMatch(sdk.otlp ? /OTLP alone/ : /nothing/);
      } else if (!sdk.otlp && !sdk.console) {
        expect(row, row.reason).toMatchObject({ status: 'PASS', reason: expect.stringMatching(/traces disabled explicitly/) });
      } else {
        expect(row.status, row.reason).toBe('PASS');
        expect(/over OTLP/.test(row.reason), row.reason).toBe(sdk.otlp);
        expect(/console/.test(row.reason), row.reason).toBe(sdk.console);
      }
    });
  }
});
