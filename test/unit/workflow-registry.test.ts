/**
 * Registering several versions of one workflow name (ADR 0008): which version new runs start on,
 * exact lookups by name and version, and the registrations refused before a process starts.
 */
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { pino } from 'pino';
import { defineStep, defineWorkflow, type StepDef, type WorkflowDef } from '../../src/platform/durable/workflow.ts';
import { WorkflowRegistry } from '../../src/platform/durable/registry.ts';
import { ConfigError } from '../../src/platform/config/config.ts';
import { DurableRuntime } from '../../src/platform/durable/runtime.ts';

const step = (name: string): StepDef => defineStep({ name, input: z.unknown(), output: z.unknown(), run: async () => null });
const [a, b, c] = [step('a'), step('b'), step('c')];
const flow = (version: number, steps: StepDef[], extra: Partial<WorkflowDef> = {}): WorkflowDef =>
  ({ name: 'flow', version, tag: 'flow', queue: 'flow', input: z.unknown(), steps, ...extra }) as WorkflowDef;

describe('a registry of workflow versions', () => {
  it('holds every version of a name; new runs start on the newest, a run is carried on by exactly its own', () => {
    const [v1, v2, v3] = [flow(1, [a, b]), flow(2, [a, b, c]), flow(3, [a, c])];
    const other = { ...flow(1, [a]), name: 'other', tag: 'other' };
    const registry = new WorkflowRegistry([v2, other, v3, v1]);
    expect(registry.current('flow')).toBe(v3);
    expect([registry.get('flow', 1), registry.get('flow', 2), registry.get('flow', 3)]).toEqual([v1, v2, v3]);
    expect(registry.get('flow', 4)).toBeUndefined();
    expect(registry.get('nothing', 1)).toBeUndefined();
    expect(registry.current('nothing')).toBeUndefined();
    expect(registry.labels()).toEqual(['flow@v1', 'flow@v2', 'flow@v3', 'other@v1']);
    expect(registry.all()).toHaveLength(4);
  });

  it('a version marked current is where new runs start, newer ones are still registered for their runs', () => {
    const [v1, v2] = [flow(1, [a, b], { current: true }), flow(2, [a, b, c])];
    const registry = new WorkflowRegistry([v1, v2]);
    expect(registry.current('flow')).toBe(v1);
    expect(registry.get('flow', 2)).toBe(v2);
    expect(new DurableRuntime({ workflows: [v1, v2], queues: new Map(), logger: pino({ level: 'silent' }) }).workflow('flow')).toBe(v1);
  });

  it('the same definition registered twice is one registration', () => {
    const v1 = flow(1, [a, b]);
    expect(new WorkflowRegistry([v1, v1, { ...v1 }]).all()).toEqual([v1]);
  });

  it.each([
    ['other steps', flow(1, [a, c])],
    ['the same steps in another order', flow(1, [b, a])],
    ['a step of the same name with other code', flow(1, [a, step('b')])],
    ['one more step', flow(1, [a, b, c])],
    ['another tag', flow(1, [a, b], { tag: 'flow2' })],
    ['another queue', flow(1, [a, b], { queue: 'flow2' })],
  ])('one name and version registered twice with %s is refused', (_, twin) => {
    const make = () => new WorkflowRegistry([flow(1, [a, b]), twin]);
    expect(make).toThrow('workflow flow@v1 is registered twice with different definitions');
    // The runtime (so the container and every process) refuses it as well.
    expect(() => new DurableRuntime({ workflows: [flow(1, [a, b]), twin], queues: new Map(), logger: pino({ level: 'silent' }) })).toThrow(/registered twice/);
  });

  it.each([0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, '2' as unknown as number])('version %s is refused, at definition and at registration', (version) => {
    expect(() => defineWorkflow(flow(version, [a]))).toThrow(`workflow flow: version must be a positive integer, not ${String(version)}`);
    expect(() => new WorkflowRegistry([flow(1, [a]), flow(version, [a])])).toThrow(/version must be a positive integer/);
  });

  it("each version's steps are checked as one definition's are", () => {
    expect(() => new WorkflowRegistry([flow(1, [a, b]), flow(2, [a, b, a])])).toThrow('workflow flow@v2: duplicate step a');
    expect(() => new WorkflowRegistry([flow(1, [a]), flow(2, [a], { tag: 'Not:ok' })])).toThrow(/tag "Not:ok" must be short kebab-case/);
  });

  it('two workflows sharing a tag are refused, naming both: the tag is how a job id names its workflow (docs/runtime.md, Adding a workflow)', () => {
    const other = { ...flow(1, [a]), name: 'other', queue: 'other' };
    expect(() => new WorkflowRegistry([flow(1, [a]), other])).toThrow('workflows flow and other share the tag "flow": give each a tag of its own');
    // Versions of one name share theirs.
    expect(new WorkflowRegistry([flow(1, [a]), flow(2, [a, b])]).labels()).toEqual(['flow@v1', 'flow@v2']);
  });

  it.each(['timers', 'maintenance', 'webhooks'])('a workflow on the platform queue %s is refused: that queue\'s worker runs other jobs', (queue) => {
    expect(() => new WorkflowRegistry([flow(1, [a], { queue })])).toThrow(`workflow flow@v1: queue "${queue}" is the platform's (timers, maintenance, webhooks): give the workflow a queue of its own`);
  });

  it.each(['Flow', 'my_flow', 'flow@v1', ''])('a workflow name WORKFLOW_VERSIONS_RETIRED could not name (%j) is refused', (name) => {
    expect(() => defineWorkflow(flow(1, [a], { name }))).toThrow(`workflow name ${JSON.stringify(name)} must be kebab-case`);
  });

  it('a refused tag is named, with the rule it breaks', () => {
    expect(() => defineWorkflow(flow(1, [a], { tag: 'a-tag-of-seventeen' }))).toThrow('workflow flow: tag "a-tag-of-seventeen" must be short kebab-case (1-16 characters of a-z, 0-9, -)');
  });

  it('two versions of one name both marked current are refused', () => {
    expect(() => new WorkflowRegistry([flow(1, [a], { current: true }), flow(2, [a, b], { current: true }), flow(3, [a, c])])).toThrow('workflow flow: versions 1 and 2 are both marked current');
  });

  it('versions declared retired (WORKFLOW_VERSIONS_RETIRED) are told apart from versions merely not registered here', () => {
    const registry = new WorkflowRegistry([flow(3, [a, c])], ['flow@v1', 'flow@v2']);
    expect(registry.retired('flow', 1)).toBe(true);
    expect(registry.retired('flow', 2)).toBe(true);
    // Not registered here, not declared retired: another instance may have it (a rolling deploy).
    expect(registry.retired('flow', 4)).toBe(false);
    expect(registry.retired('flow', 3)).toBe(false);
    expect(registry.get('flow', 1)).toBeUndefined();
  });

  // As configuration problems (ConfigError): the entries print them as every bad setting, the message alone and
  // exit 1 (exitOnConfigError); a plain Error was thrown past them, a stack trace a log drain splits into lines.
  it('a version declared retired that the process registers, a workflow it does not know, or a malformed label is refused at start, as a configuration problem naming the variable', () => {
    const problems = (retired: string[], defs: WorkflowDef[]) => {
      try {
        new WorkflowRegistry(defs, retired);
      } catch (e) {
        expect(e).toBeInstanceOf(ConfigError);
        return (e as ConfigError).problems;
      }
      throw new Error('the registry accepted the list');
    };
    expect(problems(['flow@v1'], [flow(1, [a]), flow(2, [a, b])])).toEqual(['WORKFLOW_VERSIONS_RETIRED: flow@v1 is declared retired but registered by this process: remove it from one or the other']);
    expect(problems(['flwo@v1'], [flow(2, [a])])).toEqual(['WORKFLOW_VERSIONS_RETIRED: names flwo@v1, but no version of flwo is registered']);
    expect(problems(['flow-v1'], [flow(2, [a])])).toEqual(['WORKFLOW_VERSIONS_RETIRED: "flow-v1" is not name@vN (e.g. golden-path@v1)']);
  });
});
