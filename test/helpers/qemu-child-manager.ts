/**
 * A stand-in node daemon for the reattach test: opens a VmManager on argv[2], creates one VM
 * (name argv[3], multiboot kernel argv[4]), prints `{"pid": …, "name": …}` and waits to be killed.
 */
import { VmManager } from '../../services/node/vm/manager.js';

const [stateDir, name, kernel] = process.argv.slice(2);
if (stateDir === undefined || name === undefined || kernel === undefined) {
  process.stderr.write('usage: qemu-child-manager <stateDir> <name> <kernel>\n');
  process.exit(2);
}
const manager = await VmManager.open({ stateDir });
const vm = await manager.create({ name, memoryMiB: 128, accel: 'tcg', kernel });
process.stdout.write(JSON.stringify({ pid: vm.pid, name: vm.name, daemonPid: process.pid }) + '\n');
setInterval(() => undefined, 60_000);
