/**
 * NATS subject hierarchy of migd events (all in JetStream stream MIGD_EVENTS):
 *
 * ```
 * migd.v1.run.<run-id>.state       RunStateChanged   every state change of a run
 * migd.v1.run.<run-id>.progress    RunProgress       progress samples (reduced rate)
 * migd.v1.run.<run-id>.guest       RunGuestPerf      guest-performance samples (reduced rate)
 * migd.v1.run.<run-id>.action      RunAction         actions of a policy or a user
 * migd.v1.run.<run-id>.completed   RunCompleted      the end of a run (last event of a run)
 * migd.v1.plan.<plan-id>.state     PlanStateChanged
 * migd.v1.node.<node-id>.state     NodeStateChanged
 * migd.v1.node.<node-id>.vm        VmChanged
 * ```
 *
 * Ids become single subject tokens through a reversible escape ({@link encodeToken}): letters,
 * digits, `-` and `_` stay as they are, every other byte of the id's UTF-8 form (including `.`,
 * `*`, `>`, spaces and `~`) becomes `~XX` (upper-case hex). So `node-1.example` becomes
 * `node-1~2Eexample`, distinct ids never share a token, and run ids (ULIDs) appear verbatim.
 */
import { InvalidArgumentError } from '../errors.js';
import type { Event } from '../gen/migd/v1/events.js';

/** Prefix of every migd v1 subject. */
export const SUBJECT_PREFIX = 'migd.v1';
/** Wildcard matching every migd v1 event: the stream's subject. */
export const ALL_EVENTS_SUBJECT = `${SUBJECT_PREFIX}.>`;

export const RUN_EVENT_KINDS = ['state', 'progress', 'guest', 'action', 'completed'] as const;
export const PLAN_EVENT_KINDS = ['state'] as const;
export const NODE_EVENT_KINDS = ['state', 'vm'] as const;
export type RunEventKind = (typeof RUN_EVENT_KINDS)[number];
export type PlanEventKind = (typeof PLAN_EVENT_KINDS)[number];
export type NodeEventKind = (typeof NODE_EVENT_KINDS)[number];

/** A parsed subject. */
export type ParsedSubject =
  | { scope: 'run'; id: string; kind: RunEventKind }
  | { scope: 'plan'; id: string; kind: PlanEventKind }
  | { scope: 'node'; id: string; kind: NodeEventKind };

const PLAIN = /^[A-Za-z0-9_-]$/;
const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/**
 * Escapes an id into one subject token (see the module comment).
 * @throws InvalidArgumentError when `id` is empty.
 */
export function encodeToken(id: string): string {
  if (id.length === 0) throw new InvalidArgumentError('subject id must not be empty');
  let out = '';
  for (const ch of id) {
    if (PLAIN.test(ch)) {
      out += ch;
      continue;
    }
    for (const b of encoder.encode(ch)) out += '~' + b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

/**
 * Reverses {@link encodeToken}.
 * @throws InvalidArgumentError when `token` is not a valid escaped token.
 */
export function decodeToken(token: string): string {
  if (token.length === 0) throw new InvalidArgumentError('subject token must not be empty');
  const bytes: number[] = [];
  for (let i = 0; i < token.length; ) {
    const ch = token[i]!;
    if (ch === '~') {
      const hex = token.slice(i + 1, i + 3);
      if (!/^[0-9A-F]{2}$/.test(hex)) throw new InvalidArgumentError(`subject token "${token}" has a bad escape at ${i}`);
      bytes.push(parseInt(hex, 16));
      i += 3;
    } else if (PLAIN.test(ch)) {
      bytes.push(ch.charCodeAt(0));
      i += 1;
    } else {
      throw new InvalidArgumentError(`subject token "${token}" contains "${ch}"`);
    }
  }
  try {
    return decoder.decode(new Uint8Array(bytes));
  } catch (cause) {
    throw new InvalidArgumentError(`subject token "${token}" is not UTF-8`, { cause });
  }
}

/** `migd.v1.run.<run-id>.<kind>`. @throws InvalidArgumentError for an empty id. */
export function runSubject(runId: string, kind: RunEventKind): string {
  return `${SUBJECT_PREFIX}.run.${encodeToken(runId)}.${kind}`;
}

/** `migd.v1.run.<run-id>.>`: every event of one run. @throws InvalidArgumentError for an empty id. */
export function runEventsFilter(runId: string): string {
  return `${SUBJECT_PREFIX}.run.${encodeToken(runId)}.>`;
}

/** `migd.v1.plan.<plan-id>.state`. @throws InvalidArgumentError for an empty id. */
export function planSubject(planId: string, kind: PlanEventKind = 'state'): string {
  return `${SUBJECT_PREFIX}.plan.${encodeToken(planId)}.${kind}`;
}

/** `migd.v1.node.<node-id>.<kind>`. @throws InvalidArgumentError for an empty id. */
export function nodeSubject(nodeId: string, kind: NodeEventKind): string {
  return `${SUBJECT_PREFIX}.node.${encodeToken(nodeId)}.${kind}`;
}

/**
 * Parses a migd event subject.
 * @throws InvalidArgumentError when `subject` is not one of the hierarchy's subjects.
 */
export function parseSubject(subject: string): ParsedSubject {
  const parts = subject.split('.');
  if (parts.length !== 5 || parts[0] !== 'migd' || parts[1] !== 'v1') {
    throw new InvalidArgumentError(`"${subject}" is not a migd.v1 event subject`);
  }
  const [, , scope, token, kind] = parts as [string, string, string, string, string];
  const id = decodeToken(token);
  if (scope === 'run' && (RUN_EVENT_KINDS as readonly string[]).includes(kind)) {
    return { scope, id, kind: kind as RunEventKind };
  }
  if (scope === 'plan' && (PLAN_EVENT_KINDS as readonly string[]).includes(kind)) {
    return { scope, id, kind: kind as PlanEventKind };
  }
  if (scope === 'node' && (NODE_EVENT_KINDS as readonly string[]).includes(kind)) {
    return { scope, id, kind: kind as NodeEventKind };
  }
  throw new InvalidArgumentError(`"${subject}" has an unknown scope or kind`);
}

/** True for the high-volume sample kinds a `states_only` watcher leaves out. */
export function isSampleSubject(subject: string): boolean {
  return subject.endsWith('.progress') || subject.endsWith('.guest');
}

/**
 * The subject an event belongs on, from its payload.
 * @throws InvalidArgumentError when the payload is missing or lacks the id its subject needs.
 */
export function subjectForEvent(event: Pick<Event, 'payload'>): string {
  const p = event.payload;
  if (p === undefined) throw new InvalidArgumentError('event has no payload');
  switch (p.$case) {
    case 'runState':
      return runSubject(p.value.runId, 'state');
    case 'runProgress':
      return runSubject(p.value.runId, 'progress');
    case 'runGuest':
      return runSubject(p.value.runId, 'guest');
    case 'runAction':
      return runSubject(p.value.runId, 'action');
    case 'runCompleted':
      return runSubject(p.value.runId, 'completed');
    case 'planState':
      return planSubject(p.value.planId, 'state');
    case 'nodeState':
      return nodeSubject(p.value.nodeId, 'state');
    case 'vmChanged': {
      const nodeId = p.value.vm?.nodeId ?? '';
      if (nodeId === '') throw new InvalidArgumentError('VmChanged event needs vm.node_id for its subject');
      return nodeSubject(nodeId, 'vm');
    }
  }
}
