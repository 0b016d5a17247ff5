/*
 * kvmclock, for the snapshot tests of `clock_realtime`.
 *
 * kvmclock registers a pvclock page: the probe writes its address (with
 * bit 0, enable) to MSR_KVM_SYSTEM_TIME_NEW, and KVM keeps the page's
 * pvclock_vcpu_time_info up to date. The guest's clock is then
 *
 *     system_time + scale(rdtsc() - tsc_timestamp)
 *
 * read under the page's version (odd while KVM rewrites it). The MSR
 * exists only where CPUID's KVM leaves offer KVM_FEATURE_CLOCKSOURCE2;
 * writing it elsewhere would fault, which the probe cannot take, so the
 * check asks first.
 *
 * `kvmclock` registers the page and prints `ns=<now>`; `kvmclock-again`
 * prints `ns=<now> since=<now minus the kvmclock reading>`. Across a
 * snapshot restore `since` shows whether kvmclock jumped by the time the
 * snapshot spent on disk (KVM_CLOCK_REALTIME) or went on from where it was.
 */
#include "probe.h"

#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01
#define KVM_CPUID_SIGNATURE 0x40000000
#define KVM_CPUID_FEATURES 0x40000001
#define KVM_FEATURE_CLOCKSOURCE2 (1u << 3)

/* struct pvclock_vcpu_time_info: 32 bytes, which must not cross a page. */
static volatile struct {
	uint32_t version;
	uint32_t pad0;
	uint64_t tsc_timestamp;
	uint64_t system_time;
	uint32_t tsc_to_system_mul;
	int8_t tsc_shift;
	uint8_t flags;
	uint8_t pad[2];
} pvclock __attribute__((aligned(64)));

static int registered;
static uint64_t first_ns;

static void cpuid4(uint32_t leaf, uint32_t r[4])
{
	__asm__ volatile("cpuid"
			 : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
			 : "a"(leaf), "c"(0));
}

static void wrmsr(uint32_t msr, uint64_t v)
{
	__asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}

/* The guest's kvmclock now, in nanoseconds. */
static uint64_t kvmclock_ns(void)
{
	uint32_t v, mul;
	uint64_t tsc, sys, now;
	int8_t shift;
	do {
		v = pvclock.version;
		barrier();
		tsc = pvclock.tsc_timestamp;
		sys = pvclock.system_time;
		mul = pvclock.tsc_to_system_mul;
		shift = pvclock.tsc_shift;
		now = rdtsc();
		barrier();
	} while ((v & 1) || v != pvclock.version);
	uint64_t delta = now > tsc ? now - tsc : 0;
	if (shift < 0)
		delta >>= -shift;
	else
		delta <<= shift;
	return sys + (uint64_t)(((unsigned __int128)delta * mul) >> 32);
}

void check_kvmclock(const struct check *c)
{
	uint32_t sig[4], feat[4];
	cpuid4(KVM_CPUID_SIGNATURE, sig);
	/* "KVMKVMKVM\0\0\0" in ebx, ecx, edx. */
	if (sig[1] != 0x4b4d564b || sig[2] != 0x564b4d56 || sig[3] != 0x4d) {
		fail(c, "no KVM CPUID signature");
		return;
	}
	cpuid4(KVM_CPUID_FEATURES, feat);
	if (!(feat[0] & KVM_FEATURE_CLOCKSOURCE2)) {
		fail(c, "no KVM_FEATURE_CLOCKSOURCE2");
		return;
	}
	wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (uint64_t)(uintptr_t)&pvclock | 1);
	/* KVM fills the page on the next entry: the wrmsr exit was one. */
	uint32_t spins = 0;
	while (pvclock.version == 0 && ++spins < 100000)
		barrier();
	if (pvclock.version == 0) {
		fail(c, "KVM never wrote the pvclock page");
		return;
	}
	registered = 1;
	first_ns = kvmclock_ns();
	ok(c);
	puts_serial(" ns=");
	put_dec(first_ns);
	putc_serial('\n');
}

void check_kvmclock_again(const struct check *c)
{
	if (!registered) {
		fail(c, "kvmclock not set up");
		return;
	}
	uint64_t now = kvmclock_ns();
	ok(c);
	puts_serial(" ns=");
	put_dec(now);
	puts_serial(" since=");
	put_dec(now > first_ns ? now - first_ns : 0);
	putc_serial('\n');
}
