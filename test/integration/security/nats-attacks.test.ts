import { connect, type NatsConnection } from 'nats';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildEvent, encodeEvent, eventHeaders } from '../../../services/shared/events/codec.js';
import { EVENTS_STREAM, ensureEventStream } from '../../../services/shared/events/jetstream.js';
import { natsConnectOptions, redactNatsUrl } from '../../../services/shared/events/nats-security.js';
import { subscribeRun } from '../../../services/shared/events/subscriber.js';
import { MigrationState } from '../../../services/shared/gen/migd/v1/common.js';
import type { Event } from '../../../services/shared/gen/migd/v1/events.js';
import { identityFiles } from '../../../services/shared/pki.js';
import { closeConnection, connectTest, startNatsServer, type TestNatsServer } from '../../helpers/nats-server.js';

const RUN = 'run-nats-attack';

function runState(seq: number, to: MigrationState): Event {
  return buildEvent({ $case: 'runState', value: { runId: RUN, planId: 'p', vmName: 'vm', change: { time: new Date(), from: MigrationState.MIGRATION_STATE_UNSPECIFIED, to, reason: `step ${seq}` } } }, { runSequence: seq });
}

// Finding 6: NATS. The server runs as the local cluster's does (TLS with client certificates,
// users with permissions). Without credentials nobody connects; a reader reads but can neither
// forge an event into MIGD_EVENTS nor purge or delete the stream.
describe('NATS attacks', () => {
  let nats: TestNatsServer;
  let publisher: NatsConnection;
  let reader: NatsConnection;

  const publish = async (nc: NatsConnection, ev: Event): Promise<void> => {
    await nc.jetstream().publish(ev.subject, encodeEvent(ev), { headers: eventHeaders(ev.id), timeout: 2000 });
  };
  const messages = async (): Promise<number> => (await (await publisher.jetstreamManager()).streams.info(EVENTS_STREAM)).state.messages;

  beforeAll(async () => {
    nats = await startNatsServer();
    publisher = await connectTest(nats, { maxReconnectAttempts: 0 }, 'publisher');
    reader = await connectTest(nats, { maxReconnectAttempts: 0 }, 'reader');
    await ensureEventStream(await publisher.jetstreamManager());
    await publish(publisher, runState(1, MigrationState.MIGRATION_STATE_QUEUED));
    await publish(publisher, runState(2, MigrationState.MIGRATION_STATE_PREPARING));
  });
  afterAll(async () => {
    await closeConnection(reader);
    await closeConnection(publisher);
    await nats?.dispose();
  });

  it('refuses clients without credentials or without a certificate', async () => {
    const { user: _u, passwordFile: _p, ...certOnly } = nats.auth('reader');
    await expect(connect({ ...natsConnectOptions([nats.url], certOnly), maxReconnectAttempts: 0, timeout: 3000 })).rejects.toThrow(/authorization|AUTHORIZATION/i);
    const wrong = { ...nats.auth('reader'), passwordFile: nats.auth('publisher').passwordFile };
    await expect(connect({ ...natsConnectOptions([nats.url], wrong), maxReconnectAttempts: 0, timeout: 3000 })).rejects.toThrow(/authorization/i);
    // Plain text is refused outright, and so is TLS without a client certificate.
    await expect(connect({ servers: nats.url.replace('tls://', 'nats://'), maxReconnectAttempts: 0, timeout: 3000 })).rejects.toThrow();
    const { tls: _t, ...noCert } = nats.auth('reader');
    await expect(connect({ ...natsConnectOptions([nats.url], noCert), tls: { caFile: identityFiles(nats.certDir, 'operator').caFile }, maxReconnectAttempts: 0, timeout: 3000 })).rejects.toThrow();
  });

  it('a reader cannot forge an event, purge or delete the stream; its subscription sees only real events', async () => {
    const before = await messages();
    expect(before).toBe(2);
    // The forged event would make subscribers skip every real event of the run.
    await expect(publish(reader, runState(2 ** 32 - 1, MigrationState.MIGRATION_STATE_SUCCEEDED))).rejects.toThrow();
    reader.publish(`migd.v1.run.${RUN}.state`, encodeEvent(runState(2 ** 32 - 1, MigrationState.MIGRATION_STATE_SUCCEEDED)));
    await reader.flush().catch(() => undefined);
    const jsm = await reader.jetstreamManager({ timeout: 2000 });
    await expect(jsm.streams.purge(EVENTS_STREAM)).rejects.toThrow();
    await expect(jsm.streams.delete(EVENTS_STREAM)).rejects.toThrow();
    await expect(jsm.streams.update(EVENTS_STREAM, { max_age: 1 })).rejects.toThrow();
    expect(await messages()).toBe(before);
    // The publisher's next real event reaches a reader that replays the run.
    await publish(publisher, runState(3, MigrationState.MIGRATION_STATE_SETUP));
    const got: number[] = [];
    const ac = new AbortController();
    const sub = await subscribeRun(reader, RUN, { fromStart: true, signal: ac.signal });
    const timer = setTimeout(() => ac.abort(), 10_000);
    for await (const ev of sub) {
      got.push(ev.runSequence);
      if (got.length === 3) break;
    }
    clearTimeout(timer);
    sub.stop();
    expect(got).toEqual([1, 2, 3]);
  });

  it('keeps passwords out of logged URLs', () => {
    expect(redactNatsUrl('nats://migd:s3cret@10.0.0.1:4222,tls://tok@h:4443,h2:4222')).toBe('nats://***@10.0.0.1:4222,tls://***@h:4443,h2:4222');
  });
});
