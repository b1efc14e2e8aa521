import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { evidenceHash } from '../../src/modules/evidence/evidence.service.ts';
import { evidencePackContentSchema } from '../../src/modules/golden-path/golden-path.schemas.ts';
import { canonicalJson } from '../../src/platform/idempotency/canonical-json.ts';

/**
 * The evidence pack's recipe pinned: RFC 8785 (JCS) canonical JSON, SHA-256 of its UTF-8 bytes. Nothing in a
 * pack names its recipe but `content.schema` (`dealix.evidence-pack/v1`), and `/verify` applies today's
 * canonicaliser to every pack however old: a change to it (the `canonicalize` package upgraded or replaced,
 * text normalised, another hash) would turn intact old packs `valid: false`, and hashes kept by third parties
 * (webhooks' `evidence_sha256`) stale. So the RFC's own number table and key order, and one v1 pack with the
 * hash it was written with (computed apart, by a JCS written from the RFC in another language), are held here.
 */

/** RFC 8785 Appendix B: IEEE 754 bit patterns and their canonical text; null where there is none (NaN, Infinity). */
const APPENDIX_B: Array<[string, string | null]> = [
  ['0000000000000000', '0'], ['8000000000000000', '0'], ['0000000000000001', '5e-324'], ['8000000000000001', '-5e-324'],
  ['7fefffffffffffff', '1.7976931348623157e+308'], ['ffefffffffffffff', '-1.7976931348623157e+308'],
  ['4340000000000000', '9007199254740992'], ['c340000000000000', '-9007199254740992'], ['4430000000000000', '295147905179352830000'],
  ['7fffffffffffffff', null], ['7ff0000000000000', null],
  ['44b52d02c7e14af5', '9.999999999999997e+22'], ['44b52d02c7e14af6', '1e+23'], ['44b52d02c7e14af7', '1.0000000000000001e+23'],
  ['444b1ae4d6e2ef4e', '999999999999999700000'], ['444b1ae4d6e2ef4f', '999999999999999900000'], ['444b1ae4d6e2ef50', '1e+21'],
  ['3eb0c6f7a0b5ed8c', '9.999999999999997e-7'], ['3eb0c6f7a0b5ed8d', '0.000001'],
  ['41b3de4355555553', '333333333.3333332'], ['41b3de4355555554', '333333333.33333325'], ['41b3de4355555555', '333333333.3333333'],
  ['41b3de4355555556', '333333333.3333334'], ['41b3de4355555557', '333333333.33333343'],
  ['becbf647612f3696', '-0.0000033333333333333333'], ['43143ff3c1cb0959', '1424953923781206.2'],
];

/**
 * A v1 pack's content as GET /evidence/:id serves it (the economics model's figures beyond 2^53, numbers written
 * in non-canonical forms, non-BMP text, decomposed accents, U+2028, control characters, U+FB33 — which NFC
 * would rewrite — quotes and backslashes), and the SHA-256 of its canonical form.
 */
const V1_PACK = String.raw`
{
  "schema": "dealix.evidence-pack/v1",
  "run": {
    "id": "4df07813-19c1-407c-9f8d-c566aa9e0c89",
    "tenant_id": "7c1e5b0a-2f4d-4e8b-9a61-3d2c1b0a9f8e",
    "workflow": "golden-path@v1",
    "correlation_id": "order-4711",
    "submitted_by": "submitter-\ud83d\ude00",
    "submitted_at": "2026-11-24T00:34:16.083Z"
  },
  "submission": {
    "partner": { "name": "Cafe\u0301 \u03a9mega \ud83d\ude80 \u2028 \"Q\" \\ </script>", "country": "SA", "sector": "\ud835\udd23\ud835\udd26\ud835\udd2b logistics", "website": "https://acme.example", "registration_number": "1010101010" },
    "economics": { "expected_deals_per_year": 1000000, "average_deal_value": 100000000000, "win_rate": 0.3, "gross_margin": 0.35, "onboarding_cost": 40000, "enablement_cost": 15000, "annual_support_cost": 10000 },
    "currency": "SAR"
  },
  "partner_dossier": {
    "profile": { "name": "Cafe\u0301 \u03a9mega \ud83d\ude80 \u2028 \"Q\" \\ </script>", "country": "SA", "sector": "\ud835\udd23\ud835\udd26\ud835\udd2b logistics", "website": "https://acme.example", "registration_number": "1010101010",
      "provenance": { "source": "submission", "method": "partner-intake@1", "inputs_sha256": "0000000000000000000000000000000000000000000000000000000000000001", "producer_version": "golden-path@1", "produced_at": "2026-11-24T00:34:16.190Z" } },
    "facts": { "completeness_score": 1, "risk_flags": [],
      "provenance": { "source": "derived", "method": "dossier-rules@1", "inputs_sha256": "0000000000000000000000000000000000000000000000000000000000000002", "producer_version": "golden-path@1", "produced_at": "2026-11-24T00:34:16.191Z" } }
  },
  "economics_model": {
    "currency": "SAR", "revenue_upside": 30000000000000000, "gross_profit": 10500000000000000, "cost": 65000, "payback_months": 0.000000000007428571428571429,
    "sensitivity": [ { "label": "base", "payback_months": 7.428571428571428e-12 }, { "label": "win_rate -20%", "payback_months": 9.285714285714286e-12 }, { "label": "margin -20%", "payback_months": 0.30000000000000004 }, { "label": "no deals", "payback_months": null } ],
    "provenance": { "source": "derived", "method": "economics-model@1", "inputs_sha256": "0000000000000000000000000000000000000000000000000000000000000003", "producer_version": "golden-path@1", "produced_at": "2026-11-24T00:34:16.300Z" }
  },
  "approval_packet": {
    "approval_request_id": "9b2f6a1e-8c3d-4f5a-b6e7-1a2b3c4d5e6f", "approval_class": "B", "reasons": ["cost 65000 SAR above class A bound 50000"], "required_approvals": 1,
    "sla_deadline": "2026-11-25T00:34:16.400Z", "outcome": "approved",
    "decisions": [ { "decided_by": "approver-1", "decision": "approve", "comment": "numbers hold \u0001\u001f\u007f\t \u2705 \u00e9 vs e\u0301 \ud83d\ude00 \ufb33 \u0080", "decided_at": "2026-11-24T00:34:20.001Z", "kind": "human" } ],
    "policy": { "source": "tenant", "policy": { "class_a_max_cost": 50000, "class_a_max_payback_months": 6, "class_c_min_cost": 250000, "class_c_min_payback_months": 18, "sla_b_seconds": 86400, "sla_c_seconds": 172800, "currency": "SAR" }, "updated_at": "2026-11-01T09:00:00.000Z", "updated_by": "admin-1", "version": 2, "approved_by": "admin-2" },
    "currency_mismatch": null,
    "provenance": { "source": "policy", "method": "approval-policy@1", "inputs_sha256": "0000000000000000000000000000000000000000000000000000000000000004", "producer_version": "golden-path@1", "produced_at": "2026-11-24T00:34:16.400Z" }
  },
  "outcome": "approved"
}
`;
const V1_PACK_SHA256 = 'b01a178ce6b004b871d8b20b0462a3494804af827fda9b7d90d3dc777e426a05';

describe('the evidence recipe (RFC 8785 + SHA-256), pinned', () => {
  it('writes every number of RFC 8785 Appendix B as the RFC does, and refuses NaN and Infinity', () => {
    for (const [bits, text] of APPENDIX_B) {
      const n = Buffer.from(bits, 'hex').readDoubleBE(0);
      if (text === null) expect(() => canonicalJson(n), bits).toThrow();
      else expect(canonicalJson(n), bits).toBe(text);
    }
  });

  it('orders keys by UTF-16 code units: not by locale, not integer-like keys first as JavaScript lists them', () => {
    // French collation would put "pêche" before "péché"; code units put é (U+00E9) before ê (U+00EA).
    expect(canonicalJson({ sin: 1, 'pêche': 2, 'péché': 3, peach: 4 })).toBe('{"peach":4,"péché":3,"pêche":2,"sin":1}');
    // Object.keys lists "9" and "10" first, numerically; JCS sorts them as text.
    expect(canonicalJson({ b: 1, 10: 2, 9: 3, a: 4 })).toBe('{"10":2,"9":3,"a":4,"b":1}');
    // A non-BMP key sorts by its high surrogate (U+D83D), before U+FB33 and after U+20AC; U+007F and U+0080 are not escaped.
    expect(canonicalJson({ '\ufb33': 1, '\u{1F602}': 2, '\u20ac': 3, '\u0080': '\u007f', '</script>': 5, 1: 6 })).toBe(
      '{"1":6,"</script>":5,"\u0080":"\u007f","\u20ac":3,"\u{1F602}":2,"\ufb33":1}',
    );
  });

  it('hashes what the pack row stores: the JSON text JSON.stringify writes, whatever the values', () => {
    // insertRow stores JSON.stringify(content); the hash is over canonicalJson(content). Both must read back alike.
    const values: unknown[] = [
      { a: undefined, b: () => 1, c: -0, d: [undefined, () => 1, null], e: new Date(0), f: { toJSON: () => 'x' } },
      [[[]], {}, [{}], 0.1 + 0.2, 1e21, 5e-324, 2 ** 53 + 2],
      JSON.parse('{"__proto__": {"x": 1}, "a": "\\u2028"}'),
    ];
    for (const v of values) expect(JSON.parse(canonicalJson(v))).toStrictEqual(JSON.parse(JSON.stringify(v)));
  });

  it('a v1 pack hashes as it did when it was written', () => {
    const content = JSON.parse(V1_PACK);
    expect(evidencePackContentSchema.safeParse(content).success).toBe(true);
    expect(evidenceHash(content)).toBe(V1_PACK_SHA256);
    expect(createHash('sha256').update(canonicalJson(content), 'utf8').digest('hex')).toBe(V1_PACK_SHA256);
  });
});
