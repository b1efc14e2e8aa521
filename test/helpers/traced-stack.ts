import { api, startStack, type TestStack, type WorkerHandle } from './stack.ts';
import { waitFor } from './poll.ts';
import { spawnApi, TELEMETRY_REGISTER, type ApiProcess } from './api-process.ts';
import { startOtlpReceiver, type OtlpReceiver } from './otlp-receiver.ts';

/** The OTEL_* environment of a traced process exporting OTLP/HTTP JSON to `receiverUrl`, soon after each span ends. */
export const otelEnv = (receiverUrl: string, extra: Record<string, string> = {}) => ({
  OTEL_SDK_DISABLED: 'false',
  OTEL_EXPORTER_OTLP_ENDPOINT: receiverUrl,
  OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
  OTEL_BSP_SCHEDULE_DELAY: '100',
  OTEL_METRICS_EXPORTER: 'none',
  ...extra,
});

export interface TracedStack {
  receiver: OtlpReceiver;
  stack: TestStack;
  /** The API process, started with the OTel bootstrap (--import register.ts). */
  apiProc: ApiProcess;
  /** `stack` with the API process's base URL. */
  http: TestStack;
  /** A worker process, started with the OTel bootstrap. */
  worker: WorkerHandle;
  stop(): Promise<void>;
}

/** A stack whose API and worker are real processes tracing to an OTLP receiver of the test's; `env` is added to theirs. */
export async function startTracedStack(env: Record<string, string> = {}): Promise<TracedStack> {
  const receiver = await startOtlpReceiver();
  let stack: TestStack | undefined;
  let apiProc: ApiProcess | undefined;
  let worker: WorkerHandle;
  try {
    stack = await startStack({ api: false, workerExecArgv: ['--import', TELEMETRY_REGISTER], env: { ...otelEnv(receiver.url), ...env } });
    apiProc = await spawnApi(stack.env, ['--import', TELEMETRY_REGISTER]);
    worker = await stack.spawnWorker();
  } catch (e) {
    // What did start is stopped: a failed start leaves no process, server or database behind.
    await apiProc?.stop('SIGKILL');
    await stack?.stop();
    await receiver.close();
    throw e;
  }
  return {
    receiver,
    stack,
    apiProc,
    http: { ...stack, baseUrl: apiProc.baseUrl },
    worker,
    async stop() {
      await apiProc!.stop('SIGKILL');
      await stack!.stop();
      await receiver.close();
    },
  };
}

/** A run's view once it has one of `statuses`, read through `http` with `token`. */
export async function waitRunStatus(http: TestStack, token: string, id: string, statuses: string[]) {
  return waitFor(
    async () => {
      const r = (await api(http, 'GET', `/api/v1/golden-path/runs/${id}`, { token })).json;
      return statuses.includes(r?.status) ? r : undefined;
    },
    { timeoutMs: 60_000, what: `run ${id} to reach ${statuses.join('|')}` },
  );
}
