import { AppError } from '../errors/app-error.ts';

/** Stored checkpoints disagree with the code's steps (renamed, reordered or re-versioned): fail loudly. */
export class NonDeterminismError extends AppError {
  /** The sequence_num the run had reached (its first step not completed), where the run fails. */
  at: number | undefined;
  constructor(detail: string, at?: number) {
    super('non_determinism', `Non-determinism: ${detail}`, { status: 500, retryable: false, detail });
    this.at = at;
  }
}

/** The job names a run that row-level security does not let its tenant see: a security event. */
export class RunNotVisibleError extends AppError {
  constructor(runId: string) {
    super('run_not_visible', `run ${runId} is not visible to the job's tenant`, { status: 404, retryable: false });
  }
}

export function isUniqueViolation(e: unknown): boolean {
  for (let cur: any = e, d = 0; cur && d < 5; d++, cur = cur.cause) {
    if (cur.code === '23505' || cur.name === 'UniqueConstraintViolationException') return true;
  }
  return false;
}
