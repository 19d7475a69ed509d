/**
 * The measurements every storage/NIC migration on the testbed takes from outside the guest, in one
 * place (the storage benchmark, the storage integration test and the lab's storage comparison all
 * need them):
 *
 * - {@link BlackoutProbe}: a {@link Prober} in the VM network's client namespace, started once the
 *   guest answers, kept running through the migration and stopped once the guest answers again on
 *   the destination — the run's network blackout;
 * - {@link migrationTxBytes}: a host's migration-interface transmit counter, so a caller can count
 *   the bytes a migration put on the wire (disk and memory streams together);
 * - {@link networkBlackoutOf}: the figures as proto NetworkBlackout, for RecordRunBlackout.
 */
import type { NetworkBlackout } from '../shared/gen/migd/v1/common.js';
import type { BlackoutResult } from './blackout.js';
import { Prober } from './prober.js';
import type { TestbedHost, TestbedVmNetwork } from './testbed.js';

export interface BlackoutProbeOptions {
  /** Guest UDP echo port. Default 7. */
  readonly port?: number;
  /** Probe period. Default 10 ms. */
  readonly intervalMs?: number;
  /** An answer later than this counts as lost. Default 1000 ms. */
  readonly timeoutMs?: number;
  /** Answers to wait for before {@link BlackoutProbe.start} returns (the guest is reachable). Default 30. */
  readonly readyAnswers?: number;
  /** How long to wait for them. Default 30 s. */
  readonly readyTimeoutMs?: number;
}

/** A prober on the VM network aimed at one guest. Always {@link stop} it (finally / afterEach). */
export class BlackoutProbe {
  private constructor(
    readonly prober: Prober,
    readonly target: string,
    readonly port: number,
    readonly intervalMs: number,
    readonly netns: string,
  ) {}

  /**
   * Starts probing `target` from the client namespace of `vm` and waits until it has answered
   * `readyAnswers` probes.
   * @throws Error when the guest does not answer in time (the prober is stopped then)
   */
  static async start(vm: TestbedVmNetwork, target: string, opts: BlackoutProbeOptions = {}): Promise<BlackoutProbe> {
    const port = opts.port ?? 7;
    const intervalMs = opts.intervalMs ?? 10;
    const prober = await Prober.start({ target, port, netns: vm.client.netns, intervalMs, timeoutMs: opts.timeoutMs ?? 1000 });
    try {
      await prober.waitForAnswers(opts.readyAnswers ?? 30, opts.readyTimeoutMs ?? 30_000);
    } catch (err) {
      await prober.stop();
      throw err;
    }
    return new BlackoutProbe(prober, target, port, intervalMs, vm.client.netns);
  }

  /**
   * Waits for `answers` more answers (the guest reachable again: the last gap is closed).
   * @throws Error when they do not come within `timeoutMs`
   */
  async answered(answers = 30, timeoutMs = 30_000): Promise<void> {
    await this.prober.waitForAnswers(this.prober.answerLog.length + answers, timeoutMs);
  }

  /**
   * After a migration: waits for `answers` more answers (best effort: a guest that never answers
   * again shows as a blackout up to the stop and lost probes), then stops and returns the figures.
   */
  async finish(answers = 30, timeoutMs = 30_000): Promise<BlackoutResult> {
    await this.answered(answers, timeoutMs).catch(() => undefined);
    return this.stop();
  }

  /** Stops probing and returns the figures. Idempotent. */
  stop(): Promise<BlackoutResult> {
    return this.prober.stop();
  }

  /** Words for NetworkBlackout.measured_by. */
  describe(by: string): string {
    return `${by}: UDP echo to ${this.target}:${this.port} every ${this.intervalMs} ms from ${this.netns}`;
  }
}

/** The figures as proto NetworkBlackout (CoordinatorService.RecordRunBlackout). */
export function networkBlackoutOf(r: BlackoutResult, probeIntervalMs: number, measuredBy: string): NetworkBlackout {
  return {
    blackoutMs: Math.round(r.blackoutMs),
    probesSent: r.sent,
    probesLost: r.lost,
    probeIntervalMs,
    measuredBy,
    gapStartedAt: r.blackoutFromMs !== undefined ? new Date(r.blackoutFromMs) : undefined,
    gapEndedAt: r.blackoutToMs !== undefined ? new Date(r.blackoutToMs) : undefined,
  };
}

/** Bytes the host has sent on its migration interface so far (the kernel's counter). */
export async function migrationTxBytes(host: TestbedHost): Promise<number> {
  const r = await host.exec('cat', [`/sys/class/net/${host.migrationInterface}/statistics/tx_bytes`]);
  const n = Number(r.stdout.trim());
  if (!Number.isFinite(n)) throw new Error(`${host.name}: tx_bytes of ${host.migrationInterface} unreadable: ${JSON.stringify(r.stdout)}`);
  return n;
}
