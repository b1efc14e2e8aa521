/**
 * OpenTelemetry bootstrap, loaded before the application with `node --import` (npm run start:api,
 * start:worker). Exporters come from the standard OTEL_* variables: OTLP over HTTP by default
 * (OTEL_EXPORTER_OTLP_PROTOCOL http/protobuf or http/json; grpc also works), OTEL_EXPORTER_OTLP_ENDPOINT,
 * OTEL_TRACES_EXPORTER=none|console, OTEL_BSP_*. OTEL_SDK_DISABLED=true loads nothing: the no-op API
 * stays in place and the application behaves and performs as without telemetry. An unreachable
 * collector only drops spans (exports run in the background, bounded by their timeout).
 */
import { register } from 'node:module';
import { installEarlySignals, installsShutdownHandlers, serviceNameOf } from '../process/early-signals.ts';

// The first thing the process does (this file is loaded before the entry): a SIGTERM while the SDK and
// then the application load ends the start with exit 0 and a line, not a kill by the signal (early-signals.ts).
// Only in the API and the workers, whose onShutdown replaces the handler once they have started: any
// other script (a CLI, a one-off job) never would, and the handler would end it with exit 0, read as
// success, however long it had run. Such a script keeps Node's default (killed by the signal).
if (installsShutdownHandlers(serviceNameOf(process.argv[1]))) installEarlySignals();
const { telemetryEnv } = await import('../config/config.ts');
const { setTelemetryShutdown, untracedIncoming } = await import('./otel-hooks.ts');

const env = telemetryEnv();
if (!env.disabled) {
  // ESM auto-instrumentation needs the import-in-the-middle loader hook, registered before any instrumented
  // import. It intercepts only the modules the instrumentations hook (told over a message channel), not every
  // module of the application: that keeps start-up close to the uninstrumented one.
  const { createAddHookMessageChannel } = await import('import-in-the-middle');
  const { registerOptions, waitForAllMessagesAcknowledged } = createAddHookMessageChannel();
  register('@opentelemetry/instrumentation/hook.mjs', import.meta.url, registerOptions);
  const { NodeSDK } = await import('@opentelemetry/sdk-node');
  const { getNodeAutoInstrumentations } = await import('@opentelemetry/auto-instrumentations-node');
  const { installCorrelationProcessor } = await import('./correlation-span-processor.ts');
  const { exportProcessors } = await import('./span-export.ts');
  const { IGNORED_HTTP_PATHS, isUnder, outgoingUrlFull, redactedQueryAttribute } = await import('./attributes.ts');
  const { context } = await import('@opentelemetry/api');
  const { defaultSampler } = await import('./housekeeping-sampler.ts');
  const { statementWithoutValues } = await import('./statement-text.ts');
  const ignored = (url: string | undefined) => IGNORED_HTTP_PATHS.some((p) => isUnder(url, p));
  const sdk = new NodeSDK({
    serviceName: env.serviceName ?? serviceNameOf(process.argv[1]),
    // The correlation processor runs first so every exported span carries the correlation id.
    spanProcessors: [installCorrelationProcessor(), ...(await exportProcessors(env))],
    ...(env.samplerFromEnv ? {} : { sampler: defaultSampler() }),
    // Logs stay JSON lines on stdout (pino, with trace ids); they are not duplicated into OTLP.
    logRecordProcessors: [],
    instrumentations: [
      getNodeAutoInstrumentations({
        '@opentelemetry/instrumentation-fs': { enabled: false },
        '@opentelemetry/instrumentation-dns': { enabled: false },
        '@opentelemetry/instrumentation-net': { enabled: false },
        // Express 5 runs on `router`: the express instrumentation already names its layers.
        '@opentelemetry/instrumentation-router': { enabled: false },
        '@opentelemetry/instrumentation-pino': { enabled: false },
        // Outgoing requests are recorded with their URL's query dropped, and a webhook POST's (ADR 0013) with its origin only:
        // a tenant's URL may carry a credential in its path as in its query (outgoingUrlFull).
        // Incoming ones keep their query with a client's misplaced credential (`?access_token=…`) redacted, as in the request log.
        '@opentelemetry/instrumentation-http': {
          // A worker's metrics endpoint is never traced, whatever the path: a scrape or a port scan is no trace.
          ignoreIncomingRequestHook: (req) => ignored(req.url) || untracedIncoming(req.socket.localPort),
          startIncomingSpanHook: (req) => redactedQueryAttribute(req.url),
          startOutgoingSpanHook: (options) => ({ 'url.full': outgoingUrlFull(options, context.active()) }),
        },
        // BullMQ polls Redis and the sweeper polls Postgres all the time: record them only inside a trace.
        // Spans name the command, never its values: a job's data and a statement's values are tenants'
        // submissions (the platform writes some values into statement text: coalescing-client.ts).
        '@opentelemetry/instrumentation-ioredis': { requireParentSpan: true, dbStatementSerializer: (command: string) => command },
        '@opentelemetry/instrumentation-pg': {
          requireParentSpan: true,
          requestHook: (span, info) => {
            const text = statementWithoutValues(info.query.text);
            span.setAttribute('db.statement', text);
            span.setAttribute('db.query.text', text);
          },
        },
      }),
    ],
  });
  sdk.start();
  // The loader must know every hooked module before the application's first import.
  await waitForAllMessagesAcknowledged();
  setTelemetryShutdown(() => sdk.shutdown());
}
