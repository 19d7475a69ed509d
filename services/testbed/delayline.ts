/**
 * A userspace delay line for kernels without sch_netem (this machine's has none): iptables sends
 * frames to NFQUEUE queues, and a small Python process holds each frame's verdict until its
 * release time. Only metadata crosses to userspace (COPY_META, GSO packets kept whole), so it
 * keeps up with ~1 Gbit/s of bulk TCP while adding the configured delay with sub-ms precision.
 *
 * Python rather than Node: the NFQUEUE protocol needs a raw netlink socket, which Python's
 * standard library has and Node's has not. The script is embedded so the built service needs no
 * extra asset. It reads configuration as JSON lines on stdin, acknowledges each on stdout, and
 * exits when stdin closes (so it never outlives the testbed's process).
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import { DependencyError, UnavailableError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';
import type { QueueDelay } from './shaping.js';

/** The delay line program (Python 3, standard library only). */
export const DELAYLINE_PY = String.raw`
import collections, json, os, random, select, socket, struct, sys, time

NETLINK_NETFILTER = 12
SUBSYS_QUEUE = 3
MSG_PACKET, MSG_CONFIG, MSG_VERDICT_BATCH = 0, 2, 3
CFG_CMD, CFG_PARAMS, CFG_QUEUE_MAXLEN, CFG_MASK, CFG_FLAGS = 1, 2, 3, 4, 5
CMD_BIND, COPY_META, F_GSO = 1, 1, 4
PACKET_HDR, VERDICT_HDR, NF_ACCEPT = 1, 2, 1
NLM_F_REQUEST, NLM_F_ACK, NLMSG_ERROR = 1, 4, 2
SOL_NETLINK, NETLINK_NO_ENOBUFS, SO_RCVBUFFORCE = 270, 5, 33

sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
sock.bind((0, 0))
try:
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
except OSError:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
sock.setblocking(False)
seq = 0
acks = {}
queues = {}

def attr(t, payload):
    n = 4 + len(payload)
    return struct.pack('=HH', n, t) + payload + b'\0' * ((4 - n % 4) % 4)

def send(mtype, queue, attrs, flags=NLM_F_REQUEST):
    global seq
    seq += 1
    body = struct.pack('!BBH', 0, 0, queue) + b''.join(attrs)
    sock.send(struct.pack('=IHHII', 16 + len(body), (SUBSYS_QUEUE << 8) | mtype, flags, seq, 0) + body)
    return seq

def receive():
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return
        now = time.monotonic()
        off = 0
        while off + 16 <= len(data):
            ln, typ, _f, s, _p = struct.unpack_from('=IHHII', data, off)
            if ln < 16:
                break
            if typ == NLMSG_ERROR:
                acks[s] = -struct.unpack_from('=i', data, off + 16)[0]
            elif typ == (SUBSYS_QUEUE << 8) | MSG_PACKET:
                qnum = struct.unpack_from('!H', data, off + 18)[0]
                a, pid = off + 20, None
                while a + 4 <= off + ln:
                    alen, atyp = struct.unpack_from('=HH', data, a)
                    if alen < 4:
                        break
                    if (atyp & 0x7fff) == PACKET_HDR:
                        pid = struct.unpack_from('!I', data, a + 4)[0]
                    a += (alen + 3) & ~3
                q = queues.get(qnum)
                if pid is not None and q is not None:
                    d = q['delay'] + (random.uniform(-q['jitter'], q['jitter']) if q['jitter'] else 0.0)
                    # Never reorder: a frame leaves no earlier than the one before it.
                    rel = max(q['last'], now + max(0.0, d))
                    q['last'] = rel
                    q['pending'].append((rel, pid))
            off += (ln + 3) & ~3

def request(queue, attrs):
    s = send(MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK)
    deadline = time.monotonic() + 2.0
    while s not in acks:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError('no netlink ack')
        select.select([sock], [], [], left)
        receive()
    err = acks.pop(s)
    if err:
        raise OSError(err, os.strerror(err))

def configure(cfg):
    for k, v in cfg.items():
        n = int(k)
        q = queues.get(n)
        if q is None:
            request(n, [attr(CFG_CMD, struct.pack('!BxH', CMD_BIND, 0))])
            request(n, [attr(CFG_PARAMS, struct.pack('!IB', 0, COPY_META)),
                        attr(CFG_QUEUE_MAXLEN, struct.pack('!I', 16384))])
            try:
                request(n, [attr(CFG_MASK, struct.pack('!I', F_GSO)), attr(CFG_FLAGS, struct.pack('!I', F_GSO))])
            except OSError:
                pass  # old kernel: GSO packets get segmented first, which is only slower
            q = queues[n] = {'pending': collections.deque(), 'last': 0.0}
        q['delay'] = float(v['delayMs']) / 1000.0
        q['jitter'] = float(v.get('jitterMs', 0)) / 1000.0

print('ready', flush=True)
stdin_fd = sys.stdin.fileno()
buf = b''
while True:
    nxt = min((q['pending'][0][0] for q in queues.values() if q['pending']), default=None)
    timeout = None if nxt is None else max(0.0, nxt - time.monotonic())
    r, _, _ = select.select([sock, stdin_fd], [], [], timeout)
    if sock in r:
        receive()
    if stdin_fd in r:
        chunk = os.read(stdin_fd, 65536)
        if not chunk:
            sys.exit(0)
        buf += chunk
        while b'\n' in buf:
            line, buf = buf.split(b'\n', 1)
            if not line.strip():
                continue
            msg = json.loads(line)
            try:
                configure(msg['queues'])
                print('ack %d' % msg['id'], flush=True)
            except Exception as e:
                print('err %d %s' % (msg['id'], str(e).replace('\n', ' ')), flush=True)
    now = time.monotonic()
    for num, q in queues.items():
        last, p = None, q['pending']
        while p and p[0][0] <= now:
            last = p.popleft()[1]
        if last is not None:
            send(MSG_VERDICT_BATCH, num, [attr(VERDICT_HDR, struct.pack('!II', NF_ACCEPT, last))])
`;

type DelayChild = ChildProcessByStdio<Writable, Readable, Readable>;

/** Handle on a running delay line in one namespace. */
export class DelayLine {
  private nextId = 1;
  private readonly waiters = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  private exited: Error | undefined;

  private constructor(
    private readonly child: DelayChild,
    private readonly log: Logger,
  ) {}

  /**
   * Starts the delay line inside `netns` and waits until its netlink socket is open.
   * @throws DependencyError when Python cannot be started or netlink is refused.
   */
  static async start(netns: string, log: Logger, python = 'python3'): Promise<DelayLine> {
    const child = spawn('ip', ['netns', 'exec', netns, python, '-u', '-c', DELAYLINE_PY], { stdio: ['pipe', 'pipe', 'pipe'] });
    const line = new DelayLine(child, log);
    const stderr: string[] = [];
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => {
      stderr.push(d);
      log.warn('delay line stderr', { netns, text: d.trim() });
    });
    child.stdin.on('error', () => {
      // the process died; `exit` below reports it
    });
    const lines = createInterface({ input: child.stdout });
    await new Promise<void>((resolve, reject) => {
      const fail = (e: Error): void => {
        line.exited = e;
        for (const w of line.waiters.values()) w.reject(e);
        line.waiters.clear();
        reject(new DependencyError(python, `delay line did not start: ${e.message}`, { cause: e }));
      };
      child.on('error', fail);
      child.once('exit', (code, signal) => {
        fail(new UnavailableError(`delay line exited (${code ?? signal ?? '?'}): ${stderr.join('').trim().slice(0, 500)}`));
      });
      lines.on('line', (l) => {
        if (l === 'ready') {
          resolve();
          return;
        }
        const m = /^(ack|err) (\d+) ?(.*)$/.exec(l);
        const w = m ? line.waiters.get(Number(m[2])) : undefined;
        if (!m || !w) return;
        line.waiters.delete(Number(m[2]));
        if (m[1] === 'ack') w.resolve();
        else w.reject(new DependencyError('nfnetlink_queue', `delay line refused configuration: ${m[3] ?? ''}`));
      });
    });
    // The testbed's lifetime is explicit; an idle delay line must not keep the process alive.
    line.setRef(false);
    return line;
  }

  /** False once the process has exited (crashed or stopped). */
  get alive(): boolean {
    return this.exited === undefined;
  }

  private setRef(on: boolean): void {
    const streams = [this.child.stdin, this.child.stdout, this.child.stderr] as unknown as { ref?: () => void; unref?: () => void }[];
    for (const s of streams) (on ? s.ref : s.unref)?.call(s);
    if (on) this.child.ref();
    else this.child.unref();
  }

  /**
   * Sets the delay of each queue (binding new queues) and resolves once the process applied it.
   * @throws UnavailableError when the process has exited, DependencyError when netlink refused.
   */
  async configure(queues: ReadonlyMap<number, QueueDelay>): Promise<void> {
    if (this.exited) throw new UnavailableError(`delay line is gone: ${this.exited.message}`);
    const id = this.nextId++;
    const payload: Record<string, QueueDelay> = {};
    for (const [q, d] of queues) payload[String(q)] = d;
    this.setRef(true);
    try {
      await new Promise<void>((resolve, reject) => {
        this.waiters.set(id, { resolve, reject });
        this.child.stdin.write(JSON.stringify({ id, queues: payload }) + '\n');
      });
    } finally {
      this.setRef(false);
    }
    this.log.debug('delay line configured', { queues: payload });
  }

  /** Stops the process (queued frames are dropped by the kernel; rules use --queue-bypass). */
  stop(): void {
    this.child.stdin.end();
    this.child.kill('SIGTERM');
  }
}
