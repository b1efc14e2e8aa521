/**
 * OpenTelemetry bootstrap, loaded before the application with `node --import`. Exporters come from the
 * standard OTEL_* variables (OTLP over HTTP by default; OTEL_EXPORTER_OTLP_PROTOCOL=http/json or
 * http/protobuf). OTEL_SDK_DISABLED=true, or no exporter endpoint, leaves the no-op API in place: the
 * application behaves and performs the same, and an unreachable collector only drops spans.
 */
import { register } from 'node:module';
import { telemetryEnv } from '../config/config.ts';
import { setTelemetryShutdown } from './otel-hooks.ts';

const env = telemetryEnv();
if (!env.disabled) {
  // ESM auto-instrumentation needs the import-in-the-middle loader hook, registered before any instrumented import.
  register('@opentelemetry/instrumentation/hook.mjs', import.meta.url);
  const { NodeSDK } = await import('@opentelemetry/sdk-node');
  const { getNodeAutoInstrumentations } = await import('@opentelemetry/auto-instrumentations-node');
  const sdk = new NodeSDK({
    serviceName: env.serviceName ?? (process.argv[1]?.includes('worker') ? 'dealix-worker' : 'dealix-api'),
    instrumentations: [
      getNodeAutoInstrumentations({
        '@opentelemetry/instrumentation-fs': { enabled: false },
        '@opentelemetry/instrumentation-dns': { enabled: false },
        '@opentelemetry/instrumentation-net': { enabled: false },
        '@opentelemetry/instrumentation-http': { ignoreIncomingRequestHook: (req) => req.url === '/healthz' || req.url === '/metrics' },
      }),
    ],
  });
  sdk.start();
  setTelemetryShutdown(() => sdk.shutdown());
}
