/*
 * What the vCPU's CPUID and MSRs say, for the CPU template tests.
 *
 * cpuid-regs prints the feature registers CPU templates change, as
 * `<leaf>.<subleaf>.<reg>=0x...`; msr:N prints MSR N (decimal), which
 * must exist: reading one KVM lacks faults, and the probe cannot take a
 * fault.
 */
#include "probe.h"

static void cpuid_regs(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
	__asm__ volatile("cpuid"
			 : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
			 : "a"(leaf), "c"(sub));
}

static const struct {
	uint32_t leaf, sub;
	const char *name; /* printed before '=' */
	int reg;	  /* 0..3: eax..edx */
} shown[] = {
	{0x1, 0, "1.0.eax", 0},
	{0x1, 0, "1.0.ecx", 2},
	{0x1, 0, "1.0.edx", 3},
	{0x7, 0, "7.0.ebx", 1},
	{0x7, 0, "7.0.ecx", 2},
	{0x7, 0, "7.0.edx", 3},
	{0xd, 1, "d.1.eax", 0},
	{0x80000001, 0, "80000001.0.ecx", 2},
	{0x80000001, 0, "80000001.0.edx", 3},
	{0x80000008, 0, "80000008.0.ebx", 1},
};

void check_cpuid_regs(const struct check *c)
{
	uint32_t max_basic[4], max_ext[4];
	cpuid_regs(0, 0, max_basic);
	cpuid_regs(0x80000000, 0, max_ext);
	ok(c);
	for (size_t i = 0; i < sizeof(shown) / sizeof(shown[0]); i++) {
		uint32_t leaf = shown[i].leaf, r[4] = {0, 0, 0, 0};
		uint32_t max = leaf >= 0x80000000 ? max_ext[0] : max_basic[0];
		if (leaf <= max)
			cpuid_regs(leaf, shown[i].sub, r);
		putc_serial(' ');
		puts_serial(shown[i].name);
		putc_serial('=');
		put_hex(r[shown[i].reg]);
	}
	putc_serial('\n');
}

void check_msr(const struct check *c)
{
	int64_t n = check_arg(c, 4); /* "msr:" */
	if (n < 0) {
		fail(c, "usage: msr:N (decimal)");
		return;
	}
	uint32_t lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"((uint32_t)n));
	ok(c);
	puts_serial(" value=");
	put_hex(((uint64_t)hi << 32) | lo);
	putc_serial('\n');
}
