/**
 * The seam between the QMP client and bytes: a transport opens a duplex byte stream. Production
 * uses a unix socket (QEMU's `-qmp unix:...,server=on,wait=off`); unit tests use a scripted fake.
 */
import net from 'node:net';
import { abortError } from './abort.js';
import { QmpConnectError } from './errors.js';

/** One open connection. */
export interface QmpStream {
  /**
   * Bytes from QEMU, in order. The iteration ends when the peer closes or `close()` is called, and
   * throws on a stream error. Iterated once, by the client's reader.
   */
  readonly chunks: AsyncIterable<Uint8Array>;
  /** Writes bytes; resolves when handed to the OS. Rejects when the stream is closed. */
  write(data: Uint8Array): Promise<void>;
  /** Closes both directions. Idempotent; ends `chunks`. */
  close(): void;
}

/** Opens streams to one QMP endpoint; `open()` may be called again after a stream closed. */
export interface QmpTransport {
  /** For messages and logs, e.g. the socket path. */
  readonly address: string;
  /**
   * @throws QmpConnectError when the endpoint cannot be reached (its `cause` keeps the errno, e.g.
   *   ENOENT while QEMU has not created the socket yet, ECONNREFUSED after QEMU exited).
   * @throws CancelledError when `signal` fires first.
   */
  open(signal?: AbortSignal): Promise<QmpStream>;
}

/** True when a connect failure is worth retrying while QEMU starts (socket not there / not listening yet). */
export function isRetryableConnectError(err: unknown): boolean {
  if (!(err instanceof QmpConnectError)) return false;
  const code = (err.cause as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOENT' || code === 'ECONNREFUSED';
}

/** A transport to a unix socket path. */
export function unixSocketTransport(path: string): QmpTransport {
  return {
    address: path,
    open: (signal) => openUnixSocket(path, signal),
  };
}

function openUnixSocket(path: string, signal: AbortSignal | undefined): Promise<QmpStream> {
  return new Promise<QmpStream>((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError(signal));
      return;
    }
    const sock = net.createConnection({ path });
    const cleanup = (): void => {
      sock.off('connect', onConnect);
      sock.off('error', onError);
      signal?.removeEventListener('abort', onAbort);
    };
    const onConnect = (): void => {
      cleanup();
      resolve(socketStream(sock));
    };
    const onError = (err: Error): void => {
      cleanup();
      sock.destroy();
      reject(new QmpConnectError(path, err.message, { cause: err }));
    };
    const onAbort = (): void => {
      cleanup();
      sock.destroy();
      reject(abortError(signal!));
    };
    sock.once('connect', onConnect);
    sock.once('error', onError);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Adapts a connected `net.Socket` (also used for the serial console). */
export function socketStream(sock: net.Socket): QmpStream {
  // After connect, errors surface through the iterator; keep one listener so an error emitted
  // while nobody iterates does not crash the process.
  sock.on('error', () => undefined);
  async function* chunks(): AsyncGenerator<Uint8Array> {
    try {
      for await (const chunk of sock) yield chunk as Buffer;
    } catch (err) {
      // A local destroy() ends the iteration with a premature-close error: that is a normal end.
      if ((err as NodeJS.ErrnoException).code === 'ERR_STREAM_PREMATURE_CLOSE') return;
      throw err;
    }
  }
  return {
    chunks: chunks(),
    write: (data) =>
      new Promise<void>((resolve, reject) => {
        if (sock.destroyed || !sock.writable) {
          reject(new Error('socket is closed'));
          return;
        }
        sock.write(data, (err) => (err ? reject(err) : resolve()));
      }),
    close: () => {
      sock.destroy();
    },
  };
}
