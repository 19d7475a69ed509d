import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../services/shared/errors.js';
import {
  ALL_EVENTS_SUBJECT,
  decodeToken,
  encodeToken,
  isSampleSubject,
  nodeSubject,
  parseSubject,
  planSubject,
  runEventsFilter,
  runSubject,
  subjectForEvent,
} from '../../../services/shared/events/subjects.js';

describe('subject tokens', () => {
  it('keeps ULIDs and plain names verbatim', () => {
    expect(encodeToken('01JD3M7ZQ5X8Y2N4K6P9R0T1VW')).toBe('01JD3M7ZQ5X8Y2N4K6P9R0T1VW');
    expect(encodeToken('vm_a-1')).toBe('vm_a-1');
  });

  it('escapes everything NATS gives meaning to, reversibly and without collisions', () => {
    const ids = ['a.b', 'a_b', 'a*b', 'a>b', 'a b', 'a~2Eb', 'a~b', 'tab\there', 'ünïcødé', '🙂', '..', '>'];
    const tokens = ids.map(encodeToken);
    for (const t of tokens) {
      expect(t).toMatch(/^[A-Za-z0-9_~-]+$/);
      expect(t).not.toMatch(/[.*> \t]/);
    }
    expect(new Set(tokens).size).toBe(ids.length);
    expect(tokens.map(decodeToken)).toEqual(ids);
    expect(encodeToken('node-1.example')).toBe('node-1~2Eexample');
  });

  it('rejects empty ids and malformed tokens', () => {
    expect(() => encodeToken('')).toThrow(InvalidArgumentError);
    expect(() => decodeToken('')).toThrow(InvalidArgumentError);
    expect(() => decodeToken('a~2')).toThrow(/bad escape/);
    expect(() => decodeToken('a~zz')).toThrow(/bad escape/);
    expect(() => decodeToken('a.b')).toThrow(/contains/);
    expect(() => decodeToken('~FF')).toThrow(/UTF-8/);
  });
});

describe('subject builders and parser', () => {
  it('builds the documented hierarchy', () => {
    expect(runSubject('R1', 'state')).toBe('migd.v1.run.R1.state');
    expect(runSubject('R1', 'completed')).toBe('migd.v1.run.R1.completed');
    expect(runEventsFilter('R1')).toBe('migd.v1.run.R1.>');
    expect(planSubject('P1')).toBe('migd.v1.plan.P1.state');
    expect(nodeSubject('host.a', 'vm')).toBe('migd.v1.node.host~2Ea.vm');
    expect(ALL_EVENTS_SUBJECT).toBe('migd.v1.>');
  });

  it('parses what it builds', () => {
    expect(parseSubject(runSubject('r.1', 'progress'))).toEqual({ scope: 'run', id: 'r.1', kind: 'progress' });
    expect(parseSubject(planSubject('p'))).toEqual({ scope: 'plan', id: 'p', kind: 'state' });
    expect(parseSubject(nodeSubject('n 1', 'state'))).toEqual({ scope: 'node', id: 'n 1', kind: 'state' });
  });

  it.each(['migd.v2.run.x.state', 'migd.v1.run.x', 'migd.v1.run.x.state.extra', 'migd.v1.run.x.bogus', 'migd.v1.plan.x.vm', 'migd.v1.vm.x.state', ''])(
    'rejects %j',
    (s) => {
      expect(() => parseSubject(s)).toThrow(InvalidArgumentError);
    },
  );

  it('derives the subject from an event payload', () => {
    expect(subjectForEvent({ payload: { $case: 'runAction', value: { runId: 'r', action: undefined } } })).toBe('migd.v1.run.r.action');
    expect(subjectForEvent({ payload: { $case: 'vmChanged', value: { vm: { nodeId: 'n1' } as never } } })).toBe('migd.v1.node.n1.vm');
    expect(() => subjectForEvent({ payload: { $case: 'vmChanged', value: { vm: undefined } } })).toThrow(/node_id/);
    expect(() => subjectForEvent({ payload: undefined })).toThrow(InvalidArgumentError);
    expect(() => subjectForEvent({ payload: { $case: 'runState', value: { runId: '', planId: '', vmName: '', change: undefined } } })).toThrow(
      InvalidArgumentError,
    );
  });

  it('tells sample subjects apart', () => {
    expect(isSampleSubject(runSubject('r', 'progress'))).toBe(true);
    expect(isSampleSubject(runSubject('r', 'guest'))).toBe(true);
    expect(isSampleSubject(runSubject('r', 'state'))).toBe(false);
  });
});
