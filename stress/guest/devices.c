/*
 * The devices a real VM has, brought up by the static /init without modprobe, busybox or udev:
 *
 *  - Kernel modules. Debian's kernel builds virtio, virtio_pci, virtio_blk, virtio_net and
 *    virtio_scsi as modules. The image builder (stress/image/modules.ts) copies them from the
 *    kernel package into /lib/modules and writes /lib/modules/load.order, one file name per
 *    line, dependencies first (from each module's modinfo `depends=`, which is what depmod reads;
 *    the package ships no modules.dep). /init loads them with finit_module(2).
 *  - The NIC. Debian's kernel has no IP autoconfiguration: `migd.ip=A.B.C.D/LEN` on the kernel
 *    command line gives eth0 (or migd.ifname) its address, set with SIOCSIFADDR/SIOCSIFNETMASK
 *    and brought up with SIOCSIFFLAGS; lo comes up too (the kernel gives it 127.0.0.1 itself).
 *  - A UDP echo on migd.echo_port (default 7, RFC 862) in its own real-time thread, so a guest
 *    whose vCPU is busy dirtying memory still answers the host's prober at once: the kernel
 *    answers ping by itself, and this makes the blackout measurable without ICMP privileges.
 *
 * Telemetry: `modules loaded=N failed=N ms=N`, `net if=eth0 ip=A.B.C.D/LEN mac=… echo_port=N`,
 * `warn reason=module|net|echo …` (see services/shared/guest/telemetry.ts).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "guest.h"

#define MODULE_DIR "/lib/modules"
#define NIC_WAIT_NS (5ull * 1000000000ull)

/* --------------------------------------------------------------------------------- modules */

/* True when the machine has a virtio PCI device (vendor 0x1af4), or when that cannot be told. */
static int have_virtio_pci(void) {
  DIR *d = opendir("/sys/bus/pci/devices");
  if (!d) return 1;
  int found = 0;
  for (struct dirent *e; !found && (e = readdir(d)) != NULL;) {
    if (e->d_name[0] == '.') continue;
    char path[300], id[16] = "";
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vendor", e->d_name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t n = read(fd, id, sizeof id - 1);
    close(fd);
    if (n > 0 && !strncmp(id, "0x1af4", 6)) found = 1;
  }
  closedir(d);
  return found;
}

void load_modules(void) {
  int list = open(MODULE_DIR "/load.order", O_RDONLY);
  if (list < 0) return; /* an image without modules: nothing to do */
  /* Loading costs ~1.4 s of boot under TCG: skip it on a machine without virtio devices. */
  if (!have_virtio_pci()) {
    close(list);
    emit("modules", "loaded=0 failed=0 ms=0 skipped=no_virtio_device");
    return;
  }
  char buf[4096];
  ssize_t n = read(list, buf, sizeof buf - 1);
  close(list);
  if (n <= 0) return;
  buf[n] = '\0';
  uint64_t t0 = now_ns();
  unsigned loaded = 0, failed = 0;
  char *save = NULL;
  for (char *name = strtok_r(buf, "\n", &save); name; name = strtok_r(NULL, "\n", &save)) {
    char path[256];
    snprintf(path, sizeof path, MODULE_DIR "/%s", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    long r = fd < 0 ? -1 : syscall(SYS_finit_module, fd, "", 0);
    int err = errno;
    if (fd >= 0) close(fd);
    if (r == 0 || err == EEXIST) {
      loaded++;
    } else {
      failed++;
      emit("warn", "reason=module name=%.60s errno=%d", name, err);
    }
  }
  emit("modules", "loaded=%u failed=%u ms=%llu", loaded, failed,
       (unsigned long long)((now_ns() - t0) / 1000000u));
}

/* ------------------------------------------------------------------------------------- NIC */

static char ifname[IFNAMSIZ] = "eth0";
static struct in_addr ip_addr;
static unsigned prefix_len;
static int have_ip;
static unsigned echo_port = 7;

int net_param(const char *key, const char *val) {
  uint64_t v = 0;
  if (!strcmp(key, "ip")) {
    char addr[32];
    const char *slash = strchr(val, '/');
    size_t len = slash ? (size_t)(slash - val) : strlen(val);
    if (len == 0 || len >= sizeof addr) goto bad;
    memcpy(addr, val, len);
    addr[len] = '\0';
    if (inet_pton(AF_INET, addr, &ip_addr) != 1) goto bad;
    prefix_len = 24;
    if (slash && (parse_u64(slash + 1, &v) || v < 1 || v > 32)) goto bad;
    if (slash) prefix_len = (unsigned)v;
    have_ip = 1;
    return 0;
  }
  if (!strcmp(key, "ifname")) {
    if (strlen(val) == 0 || strlen(val) >= IFNAMSIZ) goto bad;
    strcpy(ifname, val);
    return 0;
  }
  if (!strcmp(key, "echo_port")) {
    if (parse_u64(val, &v) || v < 1 || v > 65535) goto bad;
    echo_port = (unsigned)v;
    return 0;
  }
  return -1;
bad:
  emit("warn", "reason=bad_param key=migd.%s", key);
  return 0;
}

static int set_up(int s, const char *name) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
  if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) return -1;
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  return ioctl(s, SIOCSIFFLAGS, &ifr);
}

static int set_addr(int s, unsigned long req, struct in_addr a) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr = a};
  memcpy(&ifr.ifr_addr, &sin, sizeof sin);
  return ioctl(s, req, &ifr);
}

/* Returns 0 when the NIC is up with its address. */
static int configure_nic(int s) {
  /* virtio_net registers eth0 while its module loads; wait a little in case probing lags. */
  uint64_t deadline = now_ns() + NIC_WAIT_NS;
  while (if_nametoindex(ifname) == 0) {
    if (now_ns() > deadline) {
      emit("warn", "reason=net detail=no_such_interface if=%s", ifname);
      return -1;
    }
    sleep_ns(20 * 1000000ull);
  }
  struct in_addr mask = {.s_addr = htonl(prefix_len ? 0xffffffffu << (32 - prefix_len) : 0)};
  if (set_addr(s, SIOCSIFADDR, ip_addr) != 0 || set_addr(s, SIOCSIFNETMASK, mask) != 0 ||
      set_up(s, ifname) != 0) {
    emit("warn", "reason=net detail=ioctl if=%s errno=%d", ifname, errno);
    return -1;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
  unsigned char mac[6] = {0};
  if (ioctl(s, SIOCGIFHWADDR, &ifr) == 0) memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
  char ip[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &ip_addr, ip, sizeof ip);
  emit("net", "if=%s ip=%s/%u mac=%02x:%02x:%02x:%02x:%02x:%02x echo_port=%u", ifname, ip,
       prefix_len, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], echo_port);
  return 0;
}

/* ------------------------------------------------------------------------------------ echo */

static void *echo_main(void *arg) {
  int s = (int)(intptr_t)arg;
  char buf[2048];
  for (;;) {
    struct sockaddr_in from;
    socklen_t len = sizeof from;
    ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    if (n < 0) {
      if (errno == EINTR) continue;
      emit("warn", "reason=echo detail=recv errno=%d", errno);
      sleep_ns(100 * 1000000ull);
      continue;
    }
    sendto(s, buf, (size_t)n, 0, (struct sockaddr *)&from, len);
  }
  return NULL;
}

static void start_echo(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in any = {.sin_family = AF_INET, .sin_port = htons((uint16_t)echo_port)};
  if (s < 0 || bind(s, (struct sockaddr *)&any, sizeof any) != 0) {
    emit("warn", "reason=echo detail=bind port=%u errno=%d", echo_port, errno);
    if (s >= 0) close(s);
    return;
  }
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  if (is_pid1) {
    /* Real-time priority: answers preempt the memory workers the moment a probe arrives. */
    struct sched_param sp = {.sched_priority = 10};
    pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED);
    pthread_attr_setschedpolicy(&attr, SCHED_FIFO);
    pthread_attr_setschedparam(&attr, &sp);
  }
  pthread_t t;
  int e = pthread_create(&t, &attr, echo_main, (void *)(intptr_t)s);
  if (e && is_pid1) {
    /* No real-time scheduling available: an ordinary thread still answers. */
    pthread_attr_setinheritsched(&attr, PTHREAD_INHERIT_SCHED);
    e = pthread_create(&t, &attr, echo_main, (void *)(intptr_t)s);
  }
  pthread_attr_destroy(&attr);
  if (e) emit("warn", "reason=echo detail=pthread_create errno=%d", e);
}

void net_start(void) {
  if (!have_ip) return; /* no NIC asked for (and natively, never touch the host's interfaces) */
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) {
    emit("warn", "reason=net detail=socket errno=%d", errno);
    return;
  }
  if (is_pid1) {
    set_up(s, "lo");
    if (configure_nic(s) != 0) {
      close(s);
      return;
    }
  }
  close(s);
  start_echo();
}
