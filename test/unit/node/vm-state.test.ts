import { describe, expect, it } from 'vitest';
import { vmStateOf } from '../../../services/node/daemon.js';
import { VmState } from '../../../services/shared/gen/migd/v1/common.js';

const exited = (reason: string, role: 'running' | 'incoming' | 'migrating' = 'running') => ({ status: 'exited' as const, role, exited: { at: '', reason, code: null, signal: null } });

describe('vmStateOf', () => {
  it('reports a QEMU that died on its own as FAILED, so the loss is never silent', () => {
    expect(vmStateOf(exited('exited'))).toBe(VmState.VM_STATE_FAILED);
    expect(vmStateOf(exited('dead at reattach', 'migrating'))).toBe(VmState.VM_STATE_FAILED);
    expect(vmStateOf(exited('host-signal'))).toBe(VmState.VM_STATE_FAILED);
  });

  it('reports a VM migd stopped, a guest that shut down, or an incoming copy that ended as STOPPED', () => {
    expect(vmStateOf(exited('stopped'))).toBe(VmState.VM_STATE_STOPPED);
    expect(vmStateOf(exited('killed'))).toBe(VmState.VM_STATE_STOPPED);
    expect(vmStateOf(exited('guest-shutdown'))).toBe(VmState.VM_STATE_STOPPED);
    expect(vmStateOf(exited('exited', 'incoming'))).toBe(VmState.VM_STATE_STOPPED);
  });

  it('maps running VMs by role', () => {
    expect(vmStateOf({ status: 'running', role: 'running', exited: undefined })).toBe(VmState.VM_STATE_RUNNING);
    expect(vmStateOf({ status: 'running', role: 'incoming', exited: undefined })).toBe(VmState.VM_STATE_INCOMING);
    expect(vmStateOf({ status: 'running', role: 'migrating', exited: undefined })).toBe(VmState.VM_STATE_MIGRATING);
  });
});
