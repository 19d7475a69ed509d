import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../services/shared/errors.js';
import { MAX_MIGRATION_MTU, MIN_MIGRATION_MTU, planLayout, validateMigrationMtu } from '../../../services/testbed/addressing.js';
import { Testbed, type CommandRunner } from '../../../services/testbed/index.js';

describe('migration-network MTU', () => {
  it('defaults to 1500 and keeps what it is given within 1280..9000', () => {
    expect(planLayout('migd-', 'a1b2c3', 7, ['a']).migrationMtu).toBe(1500);
    expect(planLayout('migd-', 'a1b2c3', 7, ['a'], { migrationMtu: 9000 }).migrationMtu).toBe(9000);
    expect([MIN_MIGRATION_MTU, MAX_MIGRATION_MTU]).toEqual([1280, 9000]);
    for (const mtu of [1280, 1500, 4000, 9000]) expect(validateMigrationMtu(mtu)).toBe(mtu);
  });

  it.each([1279, 9001, 0, -1500, 1500.5, Number.NaN, Number.POSITIVE_INFINITY, '9000'])('rejects %j, naming the option and the range', (mtu) => {
    expect(() => validateMigrationMtu(mtu)).toThrow(InvalidArgumentError);
    expect(() => validateMigrationMtu(mtu)).toThrow(/^testbed migrationMtu: must be a whole number of bytes in 1280\.\.9000/);
    expect(() => planLayout('migd-', 'a1b2c3', 7, ['a'], { migrationMtu: mtu as number })).toThrow(InvalidArgumentError);
  });

  it('is checked by Testbed.create before anything runs', async () => {
    const calls: string[] = [];
    const runner: CommandRunner = {
      run: (cmd, args) => {
        calls.push([cmd, ...args].join(' '));
        return Promise.reject(new Error('must not run'));
      },
      runSync: (cmd, args) => {
        calls.push([cmd, ...args].join(' '));
        throw new Error('must not run');
      },
    };
    await expect(Testbed.create({ hosts: ['a', 'b'], migrationMtu: 9216, runner, cleanupStale: false })).rejects.toThrow(/migrationMtu: .*got 9216/);
    expect(calls).toEqual([]);
  });
});
