import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadNodeConfig, NODE_OPTIONS, nodeUsage } from '../../../services/node/config.js';
import { ConfigError } from '../../../services/shared/errors.js';

let dir: string | undefined;
afterEach(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

function tlsDir(...identities: string[]): string {
  dir = mkdtempSync(join(tmpdir(), 'migd-node-config-'));
  for (const f of ['ca.crt', ...identities.flatMap((i) => [`${i}.crt`, `${i}.key`])]) writeFileSync(join(dir, f), 'x');
  return dir;
}

const tlsOf = (s: unknown): { certFile: string } => (s as { tls: { certFile: string } }).tls;

describe('node daemon TLS identity', () => {
  it('presents its own certificate when the folder has one, as client and as server', () => {
    const d = tlsDir('migd-node', 'migd-node.a');
    const cfg = loadNodeConfig(['--node-id', 'a', '--tls-dir', d], {});
    expect(cfg.tlsIdentity).toBe('migd-node.a');
    expect(tlsOf(cfg.clientSecurity).certFile).toBe(join(d, 'migd-node.a.crt'));
    expect(tlsOf(cfg.security).certFile).toBe(join(d, 'migd-node.a.crt'));
  });

  it('falls back to the shared identity, and takes an explicit one', () => {
    const d = tlsDir('migd-node', 'migd-node.a');
    expect(loadNodeConfig(['--node-id', 'b', '--tls-dir', d], {}).tlsIdentity).toBe('migd-node');
    expect(loadNodeConfig(['--node-id', 'a', '--tls-dir', d, '--tls-identity', 'migd-node'], {}).tlsIdentity).toBe('migd-node');
    expect(loadNodeConfig(['--node-id', 'b', '--tls-dir', d], { MIGD_NODE_TLS_IDENTITY: 'migd-node.a' }).tlsIdentity).toBe('migd-node.a');
  });

  it('refuses an identity whose certificate is missing, or a bad name', () => {
    const d = tlsDir('migd-node');
    expect(() => loadNodeConfig(['--node-id', 'a', '--tls-dir', d, '--tls-identity', 'migd-node.zz'], {})).toThrow(ConfigError);
    expect(() => loadNodeConfig(['--node-id', 'a', '--tls-dir', d, '--tls-identity', '../etc/x'], {})).toThrow(/not a certificate name/);
  });
});

describe('node daemon guest image', () => {
  it('reads a documented folder by default and takes --guest-image or MIGD_GUEST_IMAGE', () => {
    const d = tlsDir('migd-node');
    expect(loadNodeConfig(['--node-id', 'a', '--tls-dir', d], {}).guestImageDir).toBe('/var/lib/migd/guest');
    expect(loadNodeConfig(['--node-id', 'a', '--tls-dir', d, '--guest-image', '/srv/guest'], {}).guestImageDir).toBe('/srv/guest');
    expect(loadNodeConfig(['--node-id', 'a', '--tls-dir', d], { MIGD_GUEST_IMAGE: '/opt/g' }).guestImageDir).toBe('/opt/g');
  });
});

describe('node daemon security options', () => {
  it('defaults: coordinator identity migd-coordinator, roots = state dir and image folder, TLS not required', () => {
    const cfg = loadNodeConfig(['--node-id', 'a', '--insecure', '--state-dir', '/srv/a', '--guest-image', '/srv/img'], {});
    expect(cfg.coordinatorIdentities).toEqual(['migd-coordinator']);
    expect(cfg.storageRoots).toEqual(['/srv/a']);
    expect(cfg.imageRoots).toEqual(['/srv/img']);
    expect(cfg.requireMigrationTls).toBe(false);
  });

  it('takes repeated roots and identities from flags, comma lists from the environment', () => {
    const d = tlsDir('migd-node');
    const cfg = loadNodeConfig(['--node-id', 'a', '--tls-dir', d, '--storage-root', '/x', '--storage-root', '/y', '--coordinator-identity', 'coord-1', '--require-migration-tls'], { MIGD_NODE_IMAGE_ROOT: '/i1,/i2' });
    expect(cfg.storageRoots).toEqual(['/x', '/y']);
    expect(cfg.imageRoots).toEqual(['/i1', '/i2']);
    expect(cfg.coordinatorIdentities).toEqual(['coord-1']);
    expect(cfg.requireMigrationTls).toBe(true);
  });

  it('refuses relative roots, node identities as coordinator, and required TLS without certificates', () => {
    expect(() => loadNodeConfig(['--node-id', 'a', '--insecure', '--storage-root', 'rel'], {})).toThrow(/absolute/);
    expect(() => loadNodeConfig(['--node-id', 'a', '--insecure', '--coordinator-identity', 'migd-node.b'], {})).toThrow(/node identity/);
    expect(() => loadNodeConfig(['--node-id', 'a', '--insecure', '--require-migration-tls'], {})).toThrow(ConfigError);
  });

  it('maps networks to bridges (--network NAME=BRIDGE, repeatable, or MIGD_NODE_NETWORK) and refuses bad maps', () => {
    const cfg = loadNodeConfig(['--node-id', 'a', '--insecure', '--network', 'vm=br-vm', '--network', 'lan=br0'], {});
    expect(cfg.networks).toEqual({ vm: 'br-vm', lan: 'br0' });
    expect(loadNodeConfig(['--node-id', 'a', '--insecure'], { MIGD_NODE_NETWORK: 'x=br1,y=br2' }).networks).toEqual({ x: 'br1', y: 'br2' });
    expect(loadNodeConfig(['--node-id', 'a', '--insecure'], {}).networks).toEqual({});
    for (const bad of ['vm', '=br0', 'vm=', 'vm=a-bridge-name-too-long', 'v m=br0', 'vm=br/0']) {
      expect(() => loadNodeConfig(['--node-id', 'a', '--insecure', '--network', bad], {})).toThrow(ConfigError);
    }
    expect(() => loadNodeConfig(['--node-id', 'a', '--insecure', '--network', 'vm=br0', '--network', 'vm=br1'], {})).toThrow(/mapped twice/);
  });
});

describe('node daemon flags', () => {
  it('refuses bad flags and values naming the flag, reads a JSON file under env and flags, and documents every flag', () => {
    const err = (f: () => unknown): ConfigError => {
      try {
        f();
      } catch (e) {
        if (e instanceof ConfigError) return e;
        throw e;
      }
      throw new Error('expected a ConfigError');
    };
    expect(err(() => loadNodeConfig(['--node-id', 'a', '--insecure', '--nope'], {})).option).toBe('--nope');
    expect(err(() => loadNodeConfig(['--node-id'], {})).option).toBe('--node-id');
    expect(err(() => loadNodeConfig(['--node-id', 'a', '--insecure', '--progress-interval-ms', '1000'], {})).message).toBe('config --progress-interval-ms: must be a whole number from 20 to 250, got "1000"');
    expect(err(() => loadNodeConfig(['--node-id', 'a b', '--insecure'], {})).option).toBe('--node-id');
    expect(err(() => loadNodeConfig(['--node-id', 'a', '--insecure', '--listen', 'nowhere'], {})).option).toBe('--listen');
    expect(err(() => loadNodeConfig(['--node-id', 'a', '--insecure', '--storage-root', 'rel'], {})).option).toBe('--storage-root');
    dir = mkdtempSync(join(tmpdir(), 'migd-node-config-'));
    const file = join(dir, 'node.json');
    writeFileSync(file, JSON.stringify({ nodeId: 'f', heartbeatMs: 500, storageRoot: ['/s1', '/s2'], insecure: true }));
    const cfg = loadNodeConfig(['--config', file, '--heartbeat-ms', '700'], { MIGD_NODE_ID: 'e' });
    expect(cfg).toMatchObject({ nodeId: 'e', heartbeatMs: 700, storageRoots: ['/s1', '/s2'], security: { insecure: true } });
    writeFileSync(file, JSON.stringify({ nodeID: 'x' }));
    expect(err(() => loadNodeConfig([], { MIGD_NODE_CONFIG: file })).message).toMatch(/nodeID: unknown option in/);
    const help = nodeUsage();
    for (const flag of Object.keys(NODE_OPTIONS)) expect(help).toContain(`--${flag}`);
  });
});
