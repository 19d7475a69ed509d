/*
 * What the parts of the guest /init share: the serial telemetry writer and clocks (stress.c), the
 * devices a real VM has (devices.c: kernel modules, eth0, the UDP echo) and the disk workload
 * (disk.c). Line format: see stress.c and services/shared/guest/telemetry.ts.
 */
#ifndef MIGD_GUEST_H
#define MIGD_GUEST_H

#include <stdint.h>

/** One telemetry line `migd-stress v1 <mono_ms> <kind> <fmt...> *<crc>`, written atomically. */
void emit(const char *kind, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
uint64_t now_ns(void);
void sleep_ns(uint64_t ns);
/** "64M", "512K", "1G", "4096" (binary multiples); 0 on success. */
int parse_size(const char *s, uint64_t *out);
int parse_u64(const char *s, uint64_t *out);
/** True when running as PID 1 of the guest (false when run natively by a host test). */
extern int is_pid1;
/** Report window of the workload (migd.report_ms). */
extern unsigned report_ms_param;

/* devices.c ---------------------------------------------------------------------------- */

/** Loads /lib/modules/load.order (file names in dependency order) with finit_module(2). */
void load_modules(void);
/** migd.ip=A.B.C.D/LEN, migd.ifname=NAME, migd.echo_port=N; 0 when the key was one of them. */
int net_param(const char *key, const char *val);
/** Brings up lo and the NIC (when migd.ip was given) and starts the UDP echo thread. */
void net_start(void);

/* disk.c ------------------------------------------------------------------------------- */

/** migd.disk=DEV[,size=SIZE][,rate=SIZE][,verify_ms=N]; 0 when the key was `disk`. */
int disk_param(const char *key, const char *val);
/** Starts the disk writer thread (when migd.disk was given); `seed` is the run's content seed. */
void disk_start(uint64_t seed);
/** Serial command `dverify`: verify every written block at the writer's next chunk boundary. */
void disk_request_verify(void);
/** True when a disk workload runs. */
int disk_enabled(void);

#endif
