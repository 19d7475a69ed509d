import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { coordinatorUsage, COORDINATOR_OPTIONS, loadCoordinatorConfig, resolveCoordinatorConfig } from '../../../services/coordinator/config.js';
import { DEFAULT_LIMITS } from '../../../services/coordinator/domain/scheduler.js';
import { ConfigError } from '../../../services/shared/errors.js';

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('coordinator config', () => {
  it('pipelines a Postgres store\'s writes unless --db-pipeline-writes off, and names the option for a bad value', () => {
    const url = 'postgres://migd@127.0.0.1:5432/migd';
    expect(loadCoordinatorConfig(['--db', url], {}).store).toEqual({ kind: 'postgres', url, pipelineWrites: true });
    expect(loadCoordinatorConfig(['--db', url, '--db-pipeline-writes', 'off'], {}).store).toEqual({ kind: 'postgres', url, pipelineWrites: false });
    expect(configError(() => loadCoordinatorConfig(['--db', url, '--db-pipeline-writes', 'no'], {})).message).toMatch(/db-pipeline-writes/);
  });

  it('is fully defaulted and frozen', () => {
    const c = loadCoordinatorConfig([], {});
    expect(c.listen).toBe('127.0.0.1:7000');
    expect(c.advertise).toBe('127.0.0.1:7000');
    expect(c.identity).toBe('migd-coordinator');
    expect(c.security.tls?.certFile).toMatch(/migd-coordinator\.crt$/);
    expect(c.nodeClientSecurity).toMatchObject({ serverName: 'migd-node' });
    expect(c.db).toMatch(/\.state\/coordinator\/history\.sqlite$/);
    expect(c.nats).toBe('');
    expect(c.heartbeatMs).toBe(2000);
    expect(c.heartbeatMisses).toBe(3);
    expect(c.limits).toEqual(DEFAULT_LIMITS);
    expect(c.metricsListen).toBe('');
    expect([...c.roles]).toEqual([
      ['operator', 'operator'],
      ['viewer', 'viewer'],
      ['migd-node', 'node'],
      ['migd-coordinator', 'operator'],
    ]);
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.limits)).toBe(true);
  });

  it('reads flags over environment over a JSON file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'migd-cfg-'));
    try {
      const file = join(dir, 'c.json');
      writeFileSync(file, JSON.stringify({ listen: '127.0.0.1:7100', db: '/file.sqlite', roles: { alice: 'operator' }, limitPerLink: 2, heartbeatMs: 1000 }));
      const c = loadCoordinatorConfig(['--config', file, '--db', '/flag.sqlite', '--limit-per-cluster', '7', '--nats', 'nats://127.0.0.1:4222'], { MIGD_COORDINATOR_DB: '/env.sqlite', MIGD_COORDINATOR_LISTEN: '127.0.0.1:7200', MIGD_COORDINATOR_ROLES: 'bob=viewer' });
      expect(c.db).toBe('/flag.sqlite');
      expect(c.listen).toBe('127.0.0.1:7200');
      expect(c.limits).toEqual({ ...DEFAULT_LIMITS, perLink: 2, perCluster: 7 });
      expect(c.heartbeatMs).toBe(1000);
      expect(c.nats).toBe('nats://127.0.0.1:4222');
      // The env value replaces the file's map; defaults stay.
      expect(c.roles.get('bob')).toBe('viewer');
      expect(c.roles.get('alice')).toBeUndefined();
      expect(c.roles.get('operator')).toBe('operator');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('lets configured roles override the defaults', () => {
    const c = resolveCoordinatorConfig({ roles: 'viewer=operator, carol=node' });
    expect(c.roles.get('viewer')).toBe('operator');
    expect(c.roles.get('carol')).toBe('node');
  });

  it('names the option in every error', () => {
    expect(configError(() => loadCoordinatorConfig(['--nope', '1'], {})).option).toBe('--nope');
    expect(configError(() => loadCoordinatorConfig(['--listen'], {})).option).toBe('--listen');
    expect(configError(() => resolveCoordinatorConfig({ listen: 'nohostport' })).option).toBe('--listen');
    expect(configError(() => resolveCoordinatorConfig({ advertise: 'x' })).option).toBe('--advertise');
    expect(configError(() => resolveCoordinatorConfig({ heartbeatMs: '10' })).option).toBe('--heartbeat-ms');
    expect(configError(() => resolveCoordinatorConfig({ heartbeatMisses: '0' })).option).toBe('--heartbeat-misses');
    expect(configError(() => resolveCoordinatorConfig({ limitPerLink: '0' })).option).toBe('--limit-per-link');
    expect(configError(() => resolveCoordinatorConfig({ roles: 'alice=root' })).option).toBe('--roles');
    expect(configError(() => resolveCoordinatorConfig({ roles: 'alice' })).option).toBe('--roles');
    expect(configError(() => resolveCoordinatorConfig({ nats: 'http://x' })).option).toBe('--nats');
    expect(configError(() => resolveCoordinatorConfig({ metricsListen: '9464' })).option).toBe('--metrics-listen');
    expect(configError(() => resolveCoordinatorConfig({ insecure: 'maybe' })).option).toBe('--insecure');
    expect(configError(() => resolveCoordinatorConfig({ identity: '../x' })).option).toBe('--identity');
  });

  it('allows plain text only on loopback', () => {
    expect(resolveCoordinatorConfig({ insecure: true }).security).toEqual({ insecure: true });
    // Per-node identities are required unless the shared one is allowed explicitly.
    expect(resolveCoordinatorConfig({}).requireNodeIdentity).toBe(true);
    expect(loadCoordinatorConfig(['--allow-shared-node-identity'], {}).requireNodeIdentity).toBe(false);
    expect(loadCoordinatorConfig([], { MIGD_COORDINATOR_ALLOW_SHARED_NODE_IDENTITY: '1' }).requireNodeIdentity).toBe(false);
    expect(configError(() => loadCoordinatorConfig(['--allow-shared-node-identity', '--require-node-identity'], {})).option).toBe('--allow-shared-node-identity');
    expect(resolveCoordinatorConfig({}).nodeDownWaitMs).toBe(120_000);
    expect(loadCoordinatorConfig(['--node-down-wait-ms', '5000'], {}).nodeDownWaitMs).toBe(5000);
    expect(configError(() => resolveCoordinatorConfig({ nodeDownWaitMs: '-1' })).option).toBe('--node-down-wait-ms');
    expect(loadCoordinatorConfig(['--require-node-identity'], {}).requireNodeIdentity).toBe(true);
    expect(loadCoordinatorConfig([], { MIGD_COORDINATOR_REQUIRE_NODE_IDENTITY: 'true' }).requireNodeIdentity).toBe(true);
    expect(configError(() => resolveCoordinatorConfig({ requireNodeIdentity: 'perhaps' })).option).toBe('--require-node-identity');
    const e = configError(() => resolveCoordinatorConfig({ insecure: 'true', listen: '198.18.0.1:7000' }));
    expect(e.option).toBe('--insecure');
    expect(e.message).toMatch(/loopback/);
  });

  it('refuses bad flags and file keys with a message naming them, and documents every flag', () => {
    expect(configError(() => loadCoordinatorConfig(['--heartbeat-ms', 'soon'], {})).message).toBe('config --heartbeat-ms: must be a whole number from 100 to 60000, got "soon"');
    expect(configError(() => loadCoordinatorConfig(['--heartbeat-ms', '50'], {})).option).toBe('--heartbeat-ms');
    expect(configError(() => loadCoordinatorConfig([], { MIGD_INSECURE: 'maybe' })).option).toBe('--insecure');
    expect(configError(() => loadCoordinatorConfig(['--insecure=yes'], {})).option).toBe('--insecure');
    expect(configError(() => loadCoordinatorConfig(['stray'], {})).message).toMatch(/stray/);
    expect(configError(() => loadCoordinatorConfig(['--nats-user', 'u'], {})).message).toBe('config --nats-password-file: is required with --nats-user');
    expect(configError(() => loadCoordinatorConfig(['--config', '/nonexistent/c.json'], {})).option).toBe('--config');
    const dir = mkdtempSync(join(tmpdir(), 'migd-cfg-'));
    try {
      const file = join(dir, 'c.json');
      writeFileSync(file, JSON.stringify({ heartbeatMS: 1000 }));
      expect(configError(() => loadCoordinatorConfig(['--config', file], {})).message).toMatch(/heartbeatMS: unknown option in/);
      writeFileSync(file, JSON.stringify({ heartbeatMs: 'often' }));
      expect(configError(() => loadCoordinatorConfig([], { MIGD_COORDINATOR_CONFIG: file })).option).toBe('--heartbeat-ms');
      writeFileSync(file, '[1]');
      expect(configError(() => loadCoordinatorConfig(['--config', file], {})).message).toMatch(/must hold a JSON object/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const help = coordinatorUsage();
    for (const flag of Object.keys(COORDINATOR_OPTIONS)) expect(help).toContain(`--${flag}`);
    expect(help).toContain('(env MIGD_COORDINATOR_DB)');
  });
});
