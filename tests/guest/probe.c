/*
 * husk probe guest.
 *
 * A tiny freestanding program that boots like a vmlinux and exercises the
 * VMM from inside the guest. It reads `probe=<check>[,<check>...]` tokens
 * from the kernel command line, runs the checks in order, and prints one
 * line per check on the 8250 serial port:
 *
 *     PROBE <check> OK [details]
 *     PROBE <check> FAIL <reason>
 *
 * then `PROBE DONE`, and resets the machine through the i8042.
 *
 * Emulated guests on PVM hosts cannot take interrupts or exceptions, so
 * the probe never enables interrupts, polls every device, and never faults.
 * Keep each check well under a million instructions.
 *
 * Files: probe.h (helpers every check uses), probe.c (boot information,
 * the built-in checks and the table of all checks), virtio.c/virtio.h (a
 * polled virtio-mmio driver), one file per virtio check (rng.c, blk.c,
 * vsock.c, net.c, fs.c, cpu.c, clock.c, pmem.c, mem.c; a check that goes on with the device an earlier check set
 * up, as blk-again and vsock-reset do after a snapshot restore, lives in
 * that check's file). A new check goes in its own file, is declared in
 * probe.h, listed in `checks[]` below, and its file added to build.rs's
 * SOURCES.
 */
#include "probe.h"

/* ---- boot_params (zero page) offsets, see Documentation/arch/x86/zero-page.rst */
#define BP_E820_ENTRIES 0x1e8
#define BP_RAMDISK_IMAGE 0x218
#define BP_RAMDISK_SIZE 0x21c
#define BP_CMD_LINE_PTR 0x228
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_TABLE 0x2d0
#define E820_ENTRY_SIZE 20
#define E820_MAX_ENTRIES 128

/* ---- hvm_start_info (PVH), see xen/include/public/arch-x86/hvm/start_info.h */
#define PVH_MAGIC 0x336ec578
#define SI_MAGIC 0
#define SI_NR_MODULES 12
#define SI_MODLIST_PADDR 16
#define SI_CMDLINE_PADDR 24
#define SI_MEMMAP_PADDR 40
#define SI_MEMMAP_ENTRIES 48
#define PVH_MEMMAP_ENTRY_SIZE 24
#define PVH_MODLIST_ENTRY_SIZE 32

/* How the VMM entered the probe (set by start.S). */
#define BOOT_LINUX64 0
#define BOOT_PVH 1

/* ---- legacy ports */
#define COM1 0x3f8
#define COM1_LSR (COM1 + 5)
#define LSR_DATA_READY 0x01
#define I8042_DATA 0x60
#define I8042_STATUS 0x64
#define I8042_OBF 0x01
#define I8042_CMD_RESET 0xfe

/* How many times a check polls a device before it gives up. */
#define INPUT_POLL_LIMIT 400000

/* gcc may emit calls to these even in freestanding code. */
void *memset(void *dst, int c, size_t n)
{
	volatile uint8_t *d = dst;
	while (n--)
		*d++ = (uint8_t)c;
	return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
	volatile uint8_t *d = dst;
	const uint8_t *s = src;
	while (n--)
		*d++ = *s++;
	return dst;
}

/* ---- serial output */

void putc_serial(char c) { outb(COM1, (uint8_t)c); }

void puts_serial(const char *s)
{
	while (*s)
		putc_serial(*s++);
}

void put_hex(uint64_t v)
{
	char buf[19];
	int i = 18;
	buf[i] = 0;
	do {
		buf[--i] = "0123456789abcdef"[v & 0xf];
		v >>= 4;
	} while (v);
	buf[--i] = 'x';
	buf[--i] = '0';
	puts_serial(&buf[i]);
}

void put_dec(uint64_t v)
{
	char buf[21];
	int i = 20;
	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	puts_serial(&buf[i]);
}

static void put_name(const struct check *c)
{
	for (size_t i = 0; i < c->len; i++)
		putc_serial(c->name[i]);
}

void begin(const struct check *c, const char *verdict)
{
	puts_serial("PROBE ");
	put_name(c);
	putc_serial(' ');
	puts_serial(verdict);
}

void ok(const struct check *c) { begin(c, "OK"); }

void fail(const struct check *c, const char *why)
{
	begin(c, "FAIL ");
	puts_serial(why);
	putc_serial('\n');
}

/* ---- identity maps above 4 GiB */

#define PAGE_2M (2ull << 20)
#define PT_PRESENT_RW 3ull
#define PT_HUGE 0x80ull
#define PT_POOL 16

static uint64_t pt_pool[PT_POOL][512] __attribute__((aligned(4096)));
static unsigned pt_used;

/* The table an entry points at, made (zeroed) when the entry is empty;
 * NULL when the pool is spent. */
static uint64_t *pt_next_level(uint64_t *entry)
{
	if (!(*entry & 1)) {
		if (pt_used == PT_POOL)
			return NULL;
		uint64_t *t = pt_pool[pt_used++];
		memset(t, 0, 4096);
		*entry = (uint64_t)(uintptr_t)t | PT_PRESENT_RW;
	}
	return (uint64_t *)(uintptr_t)(*entry & ~0xfffull);
}

const char *map_phys(uint64_t addr, uint64_t len)
{
	uint64_t cr3;
	__asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
	uint64_t *pml4 = (uint64_t *)(uintptr_t)(cr3 & ~0xfffull);
	for (uint64_t a = addr & ~(PAGE_2M - 1); a < addr + len; a += PAGE_2M) {
		uint64_t *pdpt = pt_next_level(&pml4[(a >> 39) & 511]);
		if (!pdpt)
			return "out of page-table pages";
		uint64_t *e = &pdpt[(a >> 30) & 511];
		if (*e & PT_HUGE)
			continue;
		uint64_t *pd = pt_next_level(e);
		if (!pd)
			return "out of page-table pages";
		pd[(a >> 21) & 511] = a | PT_PRESENT_RW | PT_HUGE;
	}
	__asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
	return NULL;
}

/* ---- boot information, from the zero page or from hvm_start_info */

static uint64_t boot_info;
static uint64_t boot_protocol;

const char *cmdline(void)
{
	uint64_t p;
	if (boot_protocol == BOOT_PVH)
		p = rd64(boot_info + SI_CMDLINE_PADDR);
	else
		p = rd32(boot_info + BP_CMD_LINE_PTR) |
		    ((uint64_t)rd32(boot_info + BP_EXT_CMD_LINE_PTR) << 32);
	return p ? (const char *)p : "";
}

struct mem_range {
	uint64_t addr, size;
	uint32_t type;
};

/* The i-th memory map entry; returns 0 past the end. */
static int memmap_entry(uint32_t i, struct mem_range *r)
{
	uint64_t e;
	if (boot_protocol == BOOT_PVH) {
		if (i >= rd32(boot_info + SI_MEMMAP_ENTRIES))
			return 0;
		e = rd64(boot_info + SI_MEMMAP_PADDR) + (uint64_t)i * PVH_MEMMAP_ENTRY_SIZE;
	} else {
		if (i >= rd8(boot_info + BP_E820_ENTRIES) || i >= E820_MAX_ENTRIES)
			return 0;
		e = boot_info + BP_E820_TABLE + (uint64_t)i * E820_ENTRY_SIZE;
	}
	r->addr = rd64(e);
	r->size = rd64(e + 8);
	r->type = rd32(e + 16);
	return 1;
}

/* The initrd (the first PVH module); returns 0 when there is none. */
static int initrd_range(struct mem_range *r)
{
	if (boot_protocol == BOOT_PVH) {
		if (rd32(boot_info + SI_NR_MODULES) == 0)
			return 0;
		uint64_t m = rd64(boot_info + SI_MODLIST_PADDR);
		r->addr = rd64(m);
		r->size = rd64(m + 8);
	} else {
		r->addr = rd32(boot_info + BP_RAMDISK_IMAGE) |
			  ((uint64_t)rd32(boot_info + BP_EXT_RAMDISK_IMAGE) << 32);
		r->size = rd32(boot_info + BP_RAMDISK_SIZE) |
			  ((uint64_t)rd32(boot_info + BP_EXT_RAMDISK_SIZE) << 32);
	}
	return r->addr != 0 && r->size != 0;
}

int starts_with(const char *s, const char *prefix)
{
	while (*prefix)
		if (*s++ != *prefix++)
			return 0;
	return 1;
}

int name_is(const struct check *c, const char *s)
{
	size_t i = 0;
	for (; i < c->len; i++)
		if (s[i] != c->name[i])
			return 0;
	return s[i] == 0;
}

/* Parses the decimal argument after "name:". Returns -1 when malformed. */
int64_t check_arg(const struct check *c, size_t prefix_len)
{
	int64_t v = 0;
	if (c->len <= prefix_len)
		return -1;
	for (size_t i = prefix_len; i < c->len; i++) {
		char d = c->name[i];
		if (d < '0' || d > '9' || v > 100000000)
			return -1;
		v = v * 10 + (d - '0');
	}
	return v;
}

/* ---- checks */

static void check_cmdline(const struct check *c)
{
	ok(c);
	putc_serial(' ');
	puts_serial(cmdline());
	putc_serial('\n');
}

static void check_e820(const struct check *c)
{
	struct mem_range r;
	if (!memmap_entry(0, &r)) {
		fail(c, "no memory map");
		return;
	}
	ok(c);
	for (uint32_t i = 0; memmap_entry(i, &r); i++) {
		putc_serial(' ');
		put_hex(r.addr);
		putc_serial(':');
		put_hex(r.size);
		putc_serial(':');
		put_dec(r.type);
	}
	putc_serial('\n');
}

/* Looks for the MP floating pointer structure in [start, end). */
static uint64_t find_mp_floating(uint64_t start, uint64_t end)
{
	for (uint64_t p = start; p + 16 <= end; p += 16) {
		if (rd32(p) != 0x5f504d5f) /* "_MP_" */
			continue;
		uint8_t sum = 0;
		for (int i = 0; i < 16; i++)
			sum += rd8(p + i);
		if (sum == 0)
			return p;
	}
	return 0;
}

static void check_cpus(const struct check *c)
{
	uint64_t mpf = find_mp_floating(0x9fc00, 0xa0000);
	if (!mpf)
		mpf = find_mp_floating(0xf0000, 0x100000);
	if (!mpf) {
		fail(c, "no MP floating pointer");
		return;
	}
	uint64_t table = rd32(mpf + 4);
	if (table == 0 || rd32(table) != 0x504d4350) { /* "PCMP" */
		fail(c, "bad MP config table");
		return;
	}
	uint16_t length = rd16(table + 4);
	uint8_t sum = 0;
	for (uint16_t i = 0; i < length; i++)
		sum += rd8(table + i);
	if (sum != 0) {
		fail(c, "MP config table checksum");
		return;
	}
	uint16_t count = rd16(table + 0x22);
	uint64_t e = table + 0x2c;
	uint64_t end = table + length;
	unsigned cpus = 0;
	for (uint16_t i = 0; i < count && e < end; i++) {
		uint8_t type = rd8(e);
		if (type == 0) {
			if (rd8(e + 3) & 1) /* CPU enabled */
				cpus++;
			e += 20;
		} else if (type <= 4) {
			e += 8;
		} else {
			fail(c, "unknown MP entry type");
			return;
		}
	}
	ok(c);
	putc_serial(' ');
	put_dec(cpus);
	putc_serial('\n');
}

static void check_serial(const struct check *c)
{
	char line[128];
	size_t n = 0;
	uint32_t idle = 0;
	for (;;) {
		if (!(inb(COM1_LSR) & LSR_DATA_READY)) {
			if (++idle > INPUT_POLL_LIMIT) {
				fail(c, "timed out waiting for input");
				return;
			}
			continue;
		}
		idle = 0;
		char ch = (char)inb(COM1);
		if (ch == '\n' || ch == '\r')
			break;
		if (n < sizeof(line) - 1)
			line[n++] = ch;
	}
	line[n] = 0;
	ok(c);
	putc_serial(' ');
	puts_serial(line);
	putc_serial('\n');
}

static void check_count(const struct check *c)
{
	int64_t n = check_arg(c, 6); /* "count:" */
	if (n < 0) {
		fail(c, "usage: count:N");
		return;
	}
	for (int64_t i = 1; i <= n; i++) {
		puts_serial("COUNT ");
		put_dec((uint64_t)i);
		putc_serial('\n');
	}
	ok(c);
	putc_serial('\n');
}

/*
 * Check `dirty:N`: writes one byte into each of N distinct 4 KiB pages of
 * guest RAM that nothing else uses, so that a diff snapshot taken after it
 * holds about N more pages than one taken before. The pages start at
 * DIRTY_BASE (64 MiB: far above the probe's image, page tables, stack and
 * virtio rings, all static in the ELF at 1 MiB, and the boot structures
 * below it) and run up; a later `dirty:N` in the same boot continues after
 * the last page the previous one wrote, so each run dirties pages no
 * earlier run touched. The byte at offset 0 of page p (p = address >> 12)
 * is the low byte of p | 1, never 0, so every write changes a page that
 * was zero. One store per page, seven guest instructions: N = 100000
 * stays under a million. The pages must fit in the usable RAM range
 * holding them, below the initrd if it is there.
 *
 * Prints `PROBE dirty:N OK pages=N first=0x<address of the first page>`.
 */
#define DIRTY_BASE (64ull << 20)
#define PAGE_SIZE 4096ull
#define E820_RAM 1

/* The page the next `dirty:N` starts at. */
static uint64_t dirty_next = DIRTY_BASE;

/*
 * The end (exclusive) of the RAM that dirty:N may write from `from` on:
 * the end of the usable memory-map range holding `from`, cut at the initrd
 * when it lies above `from`. Returns `from` when there is no such room.
 */
static uint64_t dirty_limit(uint64_t from)
{
	struct mem_range r;
	uint64_t end = from;
	for (uint32_t i = 0; memmap_entry(i, &r); i++)
		if (r.type == E820_RAM && r.addr <= from && from < r.addr + r.size)
			end = r.addr + r.size;
	if (initrd_range(&r) && r.addr < end && r.addr + r.size > from)
		end = r.addr > from ? r.addr : from;
	return end;
}

static void check_dirty(const struct check *c)
{
	int64_t n = check_arg(c, 6); /* "dirty:" */
	if (n < 0) {
		fail(c, "usage: dirty:N");
		return;
	}
	uint64_t first = dirty_next, end = dirty_limit(first);
	if ((end - first) / PAGE_SIZE < (uint64_t)n) {
		begin(c, "FAIL ");
		put_dec((uint64_t)n);
		puts_serial(" pages from ");
		put_hex(first);
		puts_serial(" do not fit below ");
		put_hex(end);
		puts_serial(" (the end of RAM or the initrd)\n");
		return;
	}
	for (uint64_t a = first; a < first + (uint64_t)n * PAGE_SIZE; a += PAGE_SIZE)
		wr8(a, (uint8_t)((a / PAGE_SIZE) | 1));
	dirty_next = first + (uint64_t)n * PAGE_SIZE;
	ok(c);
	puts_serial(" pages=");
	put_dec((uint64_t)n);
	puts_serial(" first=");
	put_hex(first);
	putc_serial('\n');
}

/*
 * Polls the i8042 output buffer until Ctrl-Alt-Del arrives as set-2
 * scancodes: Ctrl (0x14), Alt (0x11), then Del (0xe0 0x71).
 * It waits without a limit: a host sends the keys when it chooses.
 */
static void check_wait_cad(const struct check *c)
{
	static const uint8_t seq[] = {0x14, 0x11, 0xe0, 0x71};
	size_t matched = 0;
	while (matched < sizeof(seq)) {
		if (!(inb(I8042_STATUS) & I8042_OBF))
			continue;
		uint8_t code = inb(I8042_DATA);
		if (code == seq[matched])
			matched++;
		else
			matched = (code == seq[0]) ? 1 : 0;
	}
	ok(c);
	putc_serial('\n');
}

static void check_initrd(const struct check *c)
{
	struct mem_range r;
	if (!initrd_range(&r)) {
		fail(c, "no initrd");
		return;
	}
	ok(c);
	puts_serial(" addr=");
	put_hex(r.addr);
	puts_serial(" size=");
	put_dec(r.size);
	puts_serial(" head=");
	for (uint64_t i = 0; i < r.size && i < 16; i++) {
		uint8_t b = rd8(r.addr + i);
		putc_serial((b >= 0x20 && b < 0x7f) ? (char)b : '.');
	}
	putc_serial('\n');
}

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
	__asm__ volatile("cpuid"
			 : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
			 : "a"(leaf), "c"(sub));
}

/*
 * Reports what CPUID tells this vCPU: its APIC ID and the logical
 * processor count (leaf 1), the hypervisor bit and signature, and the
 * threads per core and per package from leaf 0xb.
 */
static void check_cpuid(const struct check *c)
{
	uint32_t r[4], sig[4];
	cpuid(1, 0, r);
	uint32_t apic = r[1] >> 24, count = (r[1] >> 16) & 0xff;
	int hv = (r[2] >> 31) & 1;
	cpuid(0x40000000, 0, sig);
	char name[13];
	memcpy(name, &sig[1], 4);
	memcpy(name + 4, &sig[2], 4);
	memcpy(name + 8, &sig[3], 4);
	name[12] = 0;
	for (int i = 0; i < 12; i++) {
		if (name[i] == 0)
			break;
		if (name[i] < 0x20 || name[i] > 0x7e)
			name[i] = '.';
	}
	uint32_t smt[4], core[4];
	cpuid(0xb, 0, smt);
	cpuid(0xb, 1, core);
	ok(c);
	puts_serial(" apic=");
	put_dec(apic);
	puts_serial(" logical=");
	put_dec(count);
	puts_serial(" hypervisor=");
	put_dec((uint64_t)hv);
	puts_serial(" signature=");
	puts_serial(name);
	puts_serial(" threads_per_core=");
	put_dec(smt[1] & 0xffff);
	puts_serial(" threads_per_package=");
	put_dec(core[1] & 0xffff);
	putc_serial('\n');
}

/* Reports how the VMM entered the guest. */
static void check_boot(const struct check *c)
{
	if (boot_protocol == BOOT_PVH) {
		if (rd32(boot_info + SI_MAGIC) != PVH_MAGIC) {
			fail(c, "bad hvm_start_info magic");
			return;
		}
		ok(c);
		puts_serial(" pvh\n");
	} else {
		ok(c);
		puts_serial(" linux64\n");
	}
}

/*
 * Executes an undefined instruction. With no IDT the CPU triple-faults,
 * which the VMM must report as a distinct exit status.
 */
static void check_triple_fault(const struct check *c)
{
	begin(c, "RAISING\n");
	__asm__ volatile("ud2");
}

/*
 * Every check, by name. An entry whose name ends with ':' matches tokens
 * that start with it and carry an argument ("count:3"); any other name
 * matches the whole token. Checks in other files are declared in probe.h.
 */
static const struct {
	const char *name;
	void (*run)(const struct check *c);
} checks[] = {
	{"boot", check_boot},
	{"cmdline", check_cmdline},
	{"e820", check_e820},
	{"cpus", check_cpus},
	{"cpuid", check_cpuid},
	{"cpuid-regs", check_cpuid_regs},
	{"msr:", check_msr},
	{"serial", check_serial},
	{"count:", check_count},
	{"dirty:", check_dirty},
	{"wait-cad", check_wait_cad},
	{"initrd", check_initrd},
	{"triple-fault", check_triple_fault},
	{"rng", check_rng},
	{"blk", check_blk},
	{"blk-again", check_blk_again},
	{"blk-hostile", check_blk_hostile},
	{"blk-bench:", check_blk_bench},
	{"vsock", check_vsock},
	{"vsock-reset", check_vsock_reset},
	{"net", check_net},
	{"mmds", check_mmds},
	{"mmds-notoken", check_mmds_notoken},
	{"mmds-hostile", check_mmds_hostile},
	{"fs", check_fs},
	{"fs-again", check_fs_again},
	{"balloon", check_balloon},
	{"balloon-inflate", check_balloon_inflate},
	{"balloon-deflate", check_balloon_deflate},
	{"balloon-stats", check_balloon_stats},
	{"balloon-hostile", check_balloon_hostile},
	{"balloon-report", check_balloon_report},
	{"pmem:", check_pmem},
	{"pmem-hostile:", check_pmem_hostile},
	{"pmem-again:", check_pmem_again},
	{"mem", check_mem},
	{"mem-plug", check_mem_plug},
	{"mem-unplug", check_mem_unplug},
	{"mem-unplug-all", check_mem_unplug_all},
	{"mem-check", check_mem_check},
	{"mem-hostile", check_mem_hostile},
	{"balloon-hint", check_balloon_hint},
	{"balloon-decline-hint", check_balloon_decline_hint},
	{"balloon-hint-done", check_balloon_hint_done},
	{"kvmclock", check_kvmclock},
	{"kvmclock-again", check_kvmclock_again},
};

static void run_check(const struct check *c)
{
	for (size_t i = 0; i < sizeof(checks) / sizeof(checks[0]); i++) {
		const char *n = checks[i].name;
		size_t len = 0;
		while (n[len])
			len++;
		int match = n[len - 1] == ':'
				    ? c->len > len && starts_with(c->name, n)
				    : name_is(c, n);
		if (match) {
			checks[i].run(c);
			return;
		}
	}
	fail(c, "unknown check");
}

/* Runs every check listed in each `probe=` token, in order. */
static void run_probe_tokens(const char *p)
{
	while (*p) {
		while (*p == ' ')
			p++;
		const char *tok = p;
		while (*p && *p != ' ')
			p++;
		if (!starts_with(tok, "probe="))
			continue;
		const char *q = tok + 6;
		while (q < p) {
			struct check c = {q, 0};
			while (q + c.len < p && q[c.len] != ',')
				c.len++;
			if (c.len)
				run_check(&c);
			q += c.len + 1;
		}
	}
}

void probe_main(uint64_t info, uint64_t protocol)
{
	boot_info = info;
	boot_protocol = protocol;
	puts_serial("PROBE BOOT\n");
	run_probe_tokens(cmdline());
	puts_serial("PROBE DONE\n");
	for (;;)
		outb(I8042_STATUS, I8042_CMD_RESET);
}
