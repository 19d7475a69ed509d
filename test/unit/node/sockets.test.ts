import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { destroyTcpSockets, parseSsSockets, socketInodes, ssHost } from '../../../services/node/host/sockets.js';

describe('ss output', () => {
  it('reads state, addresses and inode, skipping sockets no process holds', () => {
    const text = [
      'LISTEN     0      2        198.19.3.11:43761       0.0.0.0:*     ino:1110517 sk:1012 cgroup:/ <->',
      'ESTAB      0      373      198.19.3.10:34748  198.19.3.11:43761 timer:(on,16s,7) ino:2210 sk:9 cgroup:/ <->',
      'SYN-SENT   0      1        [fd00::1]:40000   [fd00::2]:7001 timer:(on,3s,2) ino:2211 sk:a <->',
      'TIME-WAIT  0      0        127.0.0.1:5000       127.0.0.1:6000 timer:(timewait,50sec,0) ino:0 sk:b',
      'FIN-WAIT-1 0      1646534  198.19.3.10:34738  198.19.3.11:43761 timer:(on,15s,6)',
      '',
    ].join('\n');
    expect(parseSsSockets(text)).toEqual([
      { state: 'LISTEN', local: '198.19.3.11:43761', peer: '0.0.0.0:*', inode: 1110517 },
      { state: 'ESTAB', local: '198.19.3.10:34748', peer: '198.19.3.11:43761', inode: 2210 },
      { state: 'SYN-SENT', local: '[fd00::1]:40000', peer: '[fd00::2]:7001', inode: 2211 },
    ]);
    expect(ssHost('198.19.3.11:43761')).toBe('198.19.3.11');
    expect(ssHost('[fd00::2]:7001')).toBe('fd00::2');
  });
});

describe('destroyTcpSockets (real sockets, ss -K)', () => {
  let server: Server | undefined;
  let child: ChildProcess | undefined;
  afterEach(async () => {
    child?.kill('SIGKILL');
    child = undefined;
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
    server = undefined;
  });

  /** A child process holding two connections to a loopback server here; returns its pid and our ends. */
  async function childWithConnections(): Promise<{ pid: number; ends: Socket[] }> {
    const ends: Socket[] = [];
    server = createServer((s) => {
      s.on('error', () => undefined);
      ends.push(s);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    const code = `const net=require('net');const a=net.connect(${port},'127.0.0.1');const b=net.connect(${port},'127.0.0.1');a.on('error',()=>{});b.on('error',()=>{});let n=0;const up=()=>{if(++n===2)process.stdout.write('up\\n')};a.on('connect',up);b.on('connect',up);setInterval(()=>{},1000);`;
    child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    await once(child.stdout!, 'data');
    while (ends.length < 2) await new Promise((r) => setTimeout(r, 20));
    return { pid: child.pid!, ends };
  }

  it("aborts the process's connections to the named peer, and only that process's", async () => {
    const { pid, ends } = await childWithConnections();
    expect((await socketInodes(pid)).size).toBeGreaterThanOrEqual(2);
    const closed = ends.map((e) => new Promise((r) => e.on('close', r)));
    // Another peer: nothing of the child's is touched.
    expect(await destroyTcpSockets(pid, { peers: ['192.0.2.1'] })).toEqual([]);
    const aborted = await destroyTcpSockets(pid, { peers: ['127.0.0.1'] });
    expect(aborted.map((s) => s.state)).toEqual(['ESTAB', 'ESTAB']);
    expect(aborted.every((s) => ssHost(s.peer) === '127.0.0.1')).toBe(true);
    // The kernel aborted the child's ends: ours see the connection go.
    await Promise.all(closed);
    // The server's own sockets (this process) are untouched: it still accepts.
    expect(server!.listening).toBe(true);
  });

  it('does nothing for a process that is gone', async () => {
    const { pid } = await childWithConnections();
    child!.kill('SIGKILL');
    await once(child!, 'exit');
    expect(await destroyTcpSockets(pid, { peers: ['127.0.0.1'] })).toEqual([]);
  });
});
