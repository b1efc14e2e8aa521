import { diag } from '@opentelemetry/api';
import { BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor, type SpanExporter, type SpanProcessor } from '@opentelemetry/sdk-trace';
import { SUPPORTED_TRACES_EXPORTERS, type TelemetryEnv } from '../config/config.ts';

/**
 * The export span processors the standard variables ask for (OTEL_TRACES_EXPORTER otlp|console|none, a list read as the SDK reads it: tracesExportersOf;
 * OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL http/protobuf|http/json|grpc, OTEL_BSP_*). The SDK builds the same
 * from the environment only when it is given no processors; we add our own, so we build these too.
 * Endpoint, headers and timeouts are still read by the exporters themselves (OTEL_EXPORTER_OTLP_*).
 */
export async function exportProcessors(env: TelemetryEnv): Promise<SpanProcessor[]> {
  // Written to stderr, as below: the SDK itself would only warn through its diagnostics.
  if (env.tracesExportersMixed) warn(`OTEL_TRACES_EXPORTER puts "none" beside other names: read as the OpenTelemetry SDK reads it, ${env.tracesExporters.length ? 'spans are exported over OTLP alone' : 'no span is exported'}`);
  const processors: SpanProcessor[] = [];
  for (const name of env.tracesExporters) {
    if (name === 'console') processors.push(new SimpleSpanProcessor({ exporter: new ConsoleSpanExporter() }));
    else if (name === 'otlp') processors.push(new BatchSpanProcessor({ exporter: await otlpExporter(env.tracesProtocol), ...env.batch }));
    // Written to stderr: this runs before the SDK sets up its diagnostics, so diag alone would say nothing
    // (the readiness row `telemetry` fails for it too).
    else warn(`unsupported OTEL_TRACES_EXPORTER "${name}" (${SUPPORTED_TRACES_EXPORTERS.join(', ')}): no span is exported to it`);
  }
  return processors;
}

function warn(msg: string): void {
  process.stderr.write(`${JSON.stringify({ level: 40, msg })}\n`);
}

async function otlpExporter(protocol: string): Promise<SpanExporter> {
  switch (protocol) {
    case 'http/json':
      return new (await import('@opentelemetry/exporter-trace-otlp-http')).OTLPTraceExporter();
    case 'grpc':
      return new (await import('@opentelemetry/exporter-trace-otlp-grpc')).OTLPTraceExporter();
    default:
      if (protocol !== 'http/protobuf') diag.warn(`unsupported OTLP protocol "${protocol}"; using http/protobuf`);
      return new (await import('@opentelemetry/exporter-trace-otlp-proto')).OTLPTraceExporter();
  }
}
