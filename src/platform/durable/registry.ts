import { ConfigError } from '../config/config.ts';
import { checkWorkflow, type WorkflowDef } from './workflow.ts';
import { MAINTENANCE_QUEUE } from '../queue/maintenance-queue.ts';
import { TIMER_QUEUE } from '../queue/timers.ts';
import { WEBHOOK_QUEUE } from '../webhooks/delivery.ts';

/**
 * The queues every worker process serves with Workers of the platform's own (worker-runtime.ts): a
 * workflow's run jobs there would be taken by a Worker that runs timers, maintenance or deliveries.
 */
const PLATFORM_QUEUES: readonly string[] = [TIMER_QUEUE, MAINTENANCE_QUEUE, WEBHOOK_QUEUE];

/** `name@vN`, how logs, metrics and errors name one version of a workflow. */
export const versionLabel = (name: string, version: number | undefined): string => `${name}@v${version ?? '?'}`;

/**
 * The workflow definitions one process registers, several versions per name (ADR 0008). A run
 * stores its workflow's name and version when it starts; every job of the run is executed by
 * exactly that version's definition (`get`), found by two map lookups. New runs start on `current`:
 * the version marked `current: true`, else the newest registered.
 *
 * Checked here, so a process with a bad registration does not start: each definition as
 * `defineWorkflow` checks it (positive integer version, unique step names, tag); one name and version
 * registered twice must be the same definition (the same steps, tag and queue), and at most one version
 * of a name may be marked current.
 */
export class WorkflowRegistry {
  private readonly versions = new Map<string, Map<number, WorkflowDef>>();
  private readonly currents = new Map<string, WorkflowDef>();
  /** `name@vN` of the versions declared retired for good (WORKFLOW_VERSIONS_RETIRED). */
  private readonly retiredLabels = new Set<string>();

  /**
   * `retired`: versions declared retired for good (WORKFLOW_VERSIONS_RETIRED), as `name@vN`: no
   * process of the deployment registers them any more. Each must name a workflow this process
   * registers and a version it does not (else the declaration is a typo, or wrong: refused at start).
   */
  constructor(defs: Iterable<WorkflowDef>, retired: Iterable<string> = []) {
    for (const def of defs) {
      checkWorkflow(def);
      let byVersion = this.versions.get(def.name);
      if (!byVersion) this.versions.set(def.name, (byVersion = new Map()));
      const known = byVersion.get(def.version);
      if (known) {
        if (!sameDefinition(known, def)) throw new Error(`workflow ${versionLabel(def.name, def.version)} is registered twice with different definitions: give the changed one a new version`);
        continue;
      }
      byVersion.set(def.version, def);
    }
    // The tag is how a job id names its workflow (`<tag>-<hash>-…`, in Bull Board and the logs; the
    // timers queue holds every workflow's timers, `<tag>-<hash>-sla`): versions of one name share it,
    // two names never do. A run queue of the platform's is refused too (PLATFORM_QUEUES).
    const tagOwners = new Map<string, string>();
    for (const def of this.all()) {
      const owner = tagOwners.get(def.tag);
      if (owner !== undefined && owner !== def.name) throw new Error(`workflows ${owner} and ${def.name} share the tag "${def.tag}": give each a tag of its own`);
      tagOwners.set(def.tag, def.name);
      if (PLATFORM_QUEUES.includes(def.queue)) {
        throw new Error(`workflow ${versionLabel(def.name, def.version)}: queue "${def.queue}" is the platform's (${PLATFORM_QUEUES.join(', ')}): give the workflow a queue of its own`);
      }
    }
    for (const [name, byVersion] of this.versions) {
      const marked = [...byVersion.values()].filter((d) => d.current);
      if (marked.length > 1) throw new Error(`workflow ${name}: versions ${marked.map((d) => d.version).join(' and ')} are both marked current`);
      this.currents.set(name, marked[0] ?? byVersion.get(Math.max(...byVersion.keys()))!);
    }
    // Configuration problems (ConfigError), as WORKER_QUEUES's: the entries print them as every bad setting, no stack trace.
    const problems: string[] = [];
    for (const label of retired) {
      const m = /^([a-z][a-z0-9-]*)@v([1-9][0-9]*)$/.exec(label);
      if (!m) problems.push(`WORKFLOW_VERSIONS_RETIRED: "${label}" is not name@vN (e.g. golden-path@v1)`);
      else if (!this.versions.has(m[1]!)) problems.push(`WORKFLOW_VERSIONS_RETIRED: names ${label}, but no version of ${m[1]} is registered`);
      else if (this.get(m[1]!, Number(m[2]))) problems.push(`WORKFLOW_VERSIONS_RETIRED: ${label} is declared retired but registered by this process: remove it from one or the other`);
      else this.retiredLabels.add(label);
    }
    if (problems.length) throw new ConfigError(problems);
  }

  /**
   * True when exactly this version of `name` is declared retired for good: no process runs it, and a
   * run of it can never be carried on. Not merely unregistered here: a version this process lacks and
   * nobody declared retired may be another process's (a rolling deploy), and is waited for (ADR 0008).
   */
  retired(name: string, version: number | undefined): boolean {
    return version !== undefined && this.retiredLabels.has(versionLabel(name, version));
  }

  /** The version new runs of `name` start on; undefined when the name is not registered. */
  current(name: string): WorkflowDef | undefined {
    return this.currents.get(name);
  }

  /** Exactly this version of `name`, or undefined when this process does not register it. */
  get(name: string, version: number): WorkflowDef | undefined {
    return this.versions.get(name)?.get(version);
  }

  /** Every registered definition, every version. */
  all(): WorkflowDef[] {
    return [...this.versions.values()].flatMap((byVersion) => [...byVersion.values()]);
  }

  /** The registered versions as `name@vN`, sorted: what a process can run (its sweeper's lock is named after it). */
  labels(): string[] {
    return this.all()
      .map((d) => versionLabel(d.name, d.version))
      .sort();
  }
}

/** Two registrations of one name and version name the same definition: the same step definitions in the same order, tag and queue. */
function sameDefinition(a: WorkflowDef, b: WorkflowDef): boolean {
  if (a === b) return true;
  return a.tag === b.tag && a.queue === b.queue && a.steps.length === b.steps.length && a.steps.every((s, i) => s === b.steps[i]);
}
