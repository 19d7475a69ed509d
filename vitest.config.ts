import { defineConfig } from 'vitest/config';

// Integration tests boot real QEMU guests under TCG on a 2-core machine: run test files one at a
// time so guests do not starve each other (timings in the telemetry stay meaningful), and give
// them generous timeouts. Unit tests are fast either way.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ['default'],
    pool: 'forks',
  },
});
