/*
 * Shared helpers of the husk probe guest (see probe.c for what it is).
 *
 * A check lives in any .c file: it is a `void check_xxx(const struct check *)`
 * declared below (under "Checks") and listed in the table in probe.c. It
 * prints exactly one verdict line, through ok() + details + '\n', or
 * through fail(). Rules for every check: no `sti`, no SSE, never fault,
 * poll with a bound, and stay well under a million guest instructions.
 */
#ifndef PROBE_H
#define PROBE_H

#include <stddef.h>
#include <stdint.h>

/* ---- freestanding libc (gcc may emit calls to these) */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);

/* ---- port I/O */
static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

/* ---- memory and MMIO (guest-physical == virtual) */
static inline uint8_t rd8(uint64_t addr) { return *(volatile uint8_t *)addr; }
static inline uint16_t rd16(uint64_t addr) { return *(volatile uint16_t *)addr; }
static inline uint32_t rd32(uint64_t addr) { return *(volatile uint32_t *)addr; }
static inline uint64_t rd64(uint64_t addr) { return *(volatile uint64_t *)addr; }
static inline void wr8(uint64_t addr, uint8_t v) { *(volatile uint8_t *)addr = v; }
static inline void wr16(uint64_t addr, uint16_t v) { *(volatile uint16_t *)addr = v; }
static inline void wr32(uint64_t addr, uint32_t v) { *(volatile uint32_t *)addr = v; }
static inline void wr64(uint64_t addr, uint64_t v) { *(volatile uint64_t *)addr = v; }

/*
 * A full memory barrier. `lock addl` rather than `mfence`, as Linux's
 * smp_mb() on x86-64: it orders the same, and KVM's instruction emulator
 * (which runs this guest on hosts without hardware virtualization)
 * implements locked ALU instructions but not every fence.
 */
static inline void mb(void)
{
	__asm__ volatile("lock addl $0, -4(%%rsp)" ::: "memory", "cc");
}

/* Keeps the compiler from reordering memory accesses across it. */
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

/* ---- serial output (COM1) */
void putc_serial(char c);
void puts_serial(const char *s);
void put_hex(uint64_t v);
void put_dec(uint64_t v);

/* ---- checks */

/* A check's name is the whole token, e.g. "count:3". */
struct check {
	const char *name;
	size_t len;
};

/* Prints "PROBE <name> <verdict>" (no newline). */
void begin(const struct check *c, const char *verdict);
/* Prints "PROBE <name> OK"; the check adds details, then '\n'. */
void ok(const struct check *c);
/* Prints "PROBE <name> FAIL <why>\n". */
void fail(const struct check *c, const char *why);

/* ---- boot information */

/* The kernel command line ("" when there is none). */
const char *cmdline(void);

/* ---- memory above the 4 GiB the boot page tables map */

/*
 * Identity-maps [addr, addr + len) with 2 MiB pages in the current page
 * tables (whichever CR3 names), for device memory far above RAM: pmem
 * windows and hotpluggable memory. Returns NULL, or why it could not
 * (its pool of page-table pages ran out).
 */
const char *map_phys(uint64_t addr, uint64_t len);

/* ---- strings */
int starts_with(const char *s, const char *prefix);
int name_is(const struct check *c, const char *s);
/* Parses the decimal argument after "name:" (prefix_len = strlen("name:")).
 * Returns -1 when malformed. */
int64_t check_arg(const struct check *c, size_t prefix_len);

/* ---- Checks in other files, listed in the table in probe.c */
void check_rng(const struct check *c); /* rng.c */
void check_blk(const struct check *c); /* blk.c */
void check_blk_again(const struct check *c); /* blk.c */
void check_blk_hostile(const struct check *c); /* blk.c */
void check_blk_bench(const struct check *c); /* blk.c */
void check_vsock(const struct check *c); /* vsock.c */
void check_vsock_reset(const struct check *c); /* vsock.c */
void check_net(const struct check *c); /* net.c */
void check_fs(const struct check *c); /* fs.c */
void check_fs_again(const struct check *c); /* fs.c */
void check_balloon(const struct check *c); /* balloon.c */
void check_balloon_inflate(const struct check *c); /* balloon.c */
void check_balloon_deflate(const struct check *c); /* balloon.c */
void check_balloon_stats(const struct check *c); /* balloon.c */
void check_balloon_hostile(const struct check *c); /* balloon.c */
void check_balloon_report(const struct check *c); /* balloon.c */
void check_balloon_hint(const struct check *c); /* balloon.c */
void check_balloon_decline_hint(const struct check *c); /* balloon.c */
void check_balloon_hint_done(const struct check *c); /* balloon.c */
void check_cpuid_regs(const struct check *c); /* cpu.c */
void check_pmem(const struct check *c); /* pmem.c */
void check_pmem_hostile(const struct check *c); /* pmem.c */
void check_pmem_again(const struct check *c); /* pmem.c */
void check_mem(const struct check *c); /* mem.c */
void check_mem_plug(const struct check *c); /* mem.c */
void check_mem_unplug(const struct check *c); /* mem.c */
void check_mem_unplug_all(const struct check *c); /* mem.c */
void check_mem_check(const struct check *c); /* mem.c */
void check_mem_hostile(const struct check *c); /* mem.c */
void check_msr(const struct check *c); /* cpu.c */
void check_mmds(const struct check *c); /* mmds.c */
void check_mmds_notoken(const struct check *c); /* mmds.c */
void check_mmds_hostile(const struct check *c); /* mmds.c */
void check_kvmclock(const struct check *c); /* clock.c */
void check_kvmclock_again(const struct check *c); /* clock.c */

#endif
