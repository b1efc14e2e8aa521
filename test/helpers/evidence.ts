import type { EvidenceVerification } from '../../src/modules/evidence/evidence.service.ts';

/**
 * What `/verify` answers for a test's synthetic pack — content made up for the hash and seal it tests,
 * naming a seeded run whose steps wrote nothing: its hash and seal agree, and it is still not valid,
 * since its run recorded no dossier, economics model or approval to agree with (evidence-records.ts).
 * `run` is `mismatch` while the seeded run is there (the content names none of its fields), `absent`
 * once deleted (run retention).
 */
export function sealedButUnrecorded(sha256: string, run: 'mismatch' | 'absent' = 'mismatch'): EvidenceVerification {
  return { valid: false, sha256, recomputed_sha256: sha256, recorded_sha256: sha256, records: { run, partner_dossier: 'absent', economics_model: 'absent', approval: 'absent', approval_policy: 'absent' } };
}

/** A genuine pack's records, each compared and agreeing (`run` absent once run retention deleted the run). */
export const RECORDS_MATCH = { run: 'match', partner_dossier: 'match', economics_model: 'match', approval: 'match', approval_policy: 'match' } as const;
