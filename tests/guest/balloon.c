/*
 * Checks `balloon`, `balloon-inflate`, `balloon-deflate`, `balloon-stats`
 * and `balloon-hostile`: virtio-balloon (DeviceID 5; inflateq, deflateq,
 * and statsq when VIRTIO_BALLOON_F_STATS_VQ is offered). They share one
 * device set up by `balloon` and run in this order.
 *
 * `balloon` sets the device up (accepting DEFLATE_ON_OOM and STATS_VQ
 * when offered, and giving the statistics queue its first buffer, as
 * Linux does), reads num_pages, and writes one byte into each of
 * BALLOON_PAGES pages from BALLOON_BASE, so they are resident in the VMM.
 * Prints `PROBE balloon OK target=<num_pages> features=0x<f> touched=<N>`.
 *
 * `balloon-inflate` waits (up to about 15 s) for a configuration-change
 * interrupt (the host's PATCH /balloon), reads the new num_pages, puts
 * min(num_pages, N) of the touched pages on the inflate queue, 256 PFNs
 * a buffer, and writes `actual`. Prints
 * `PROBE balloon-inflate OK target=<num_pages> inflated=<n> config-irq=1`.
 *
 * `balloon-deflate` looks whether the inflated pages now read as zeros
 * (the host dropped them: so they do on anonymous memory; after a restore
 * from a memory file they read as the file has them), takes them back
 * through the deflate queue, writes `actual` 0 and prints
 * `PROBE balloon-deflate OK deflated=<n> zeroed=<1 if all read 0, else 0>`.
 *
 * `balloon-stats` waits (up to about 5 s) for the device to hand the
 * statistics buffer back, then refills it with new figures and gives it
 * again. Prints `PROBE balloon-stats OK round=<k>`.
 *
 * `balloon-report` (with VIRTIO_BALLOON_F_PAGE_REPORTING) reports the
 * touched pages as free: one device-writable buffer over all of them on
 * the reporting queue, as Linux's page reporting does. Prints
 * `PROBE balloon-report OK reported=<N>`.
 *
 * `balloon-hint` (with VIRTIO_BALLOON_F_FREE_PAGE_HINT) waits for a
 * run id (2 or more) in free_page_hint_cmd_id, answers with that id on the hinting queue,
 * hints the touched pages as free (four device-writable buffers of 4 MiB,
 * as Linux hints MAX_ORDER blocks), and ends the run with STOP (0).
 * Prints `PROBE balloon-hint OK id=<id> hinted=<N>`.
 *
 * `balloon-hint-done` waits for the host's DONE (1) in
 * free_page_hint_cmd_id, and looks whether the hinted pages read as zeros
 * (the host dropped them). Prints
 * `PROBE balloon-hint-done OK cmd=1 zeroed=<1 if all read 0, else 0>`.
 *
 * `balloon-decline-hint` is `balloon` with VIRTIO_BALLOON_F_FREE_PAGE_HINT
 * declined: the reporting queue then has the hinting queue's index.
 *
 * `balloon-hostile` sends the inflate queue PFNs outside guest memory, a
 * buffer of 2 bytes and a device-writable buffer, expects each back on
 * the used ring, and prints `PROBE balloon-hostile OK`.
 */
#include "virtio.h"

#define F_STATS_VQ (1ull << 1)
#define F_DEFLATE_ON_OOM (1ull << 2)
#define F_FREE_PAGE_HINT (1ull << 3)
#define F_PAGE_REPORTING (1ull << 5)
#define HINT_CMD_ID 8
#define HINT_DONE 1u
#define HINT_BLOCK (4u << 20)
#define BALLOON_BASE (32ull << 20)
#define BALLOON_PAGES 4096u
#define PFNS_PER_BUF 256u
#define STAT_LEN 10

static struct virtio_dev dev;
static struct virtq inflateq, deflateq, statsq, hintq, reportq;
static uint32_t pfns[PFNS_PER_BUF];
static uint8_t stats_buf[4 * STAT_LEN];
static int balloon_up;
static uint32_t inflated;
static uint32_t stats_round;

static uint32_t num_pages(void)
{
	return (uint32_t)virtio_config_read(&dev, 0, 4);
}

static void set_actual(uint32_t n)
{
	virtio_wr(&dev, VIRTIO_MMIO_CONFIG + 4, n);
}

static void put_stat(unsigned i, uint16_t tag, uint64_t val)
{
	uint8_t *r = &stats_buf[i * STAT_LEN];
	r[0] = (uint8_t)tag;
	r[1] = (uint8_t)(tag >> 8);
	for (unsigned b = 0; b < 8; b++)
		r[2 + b] = (uint8_t)(val >> (8 * b));
}

/* Fills the statistics buffer for round `k` and makes it available. */
static const char *give_stats(uint32_t k)
{
	put_stat(0, 4, 1000000ull + k);  /* free_memory */
	put_stat(1, 5, 128ull << 20);    /* total_memory */
	put_stat(2, 2, k);               /* major_faults */
	put_stat(3, 10, 7 + k);          /* oom_kill */
	struct virtq_buf b = {(uint64_t)(uintptr_t)stats_buf, sizeof(stats_buf), 0};
	uint16_t head;
	const char *err = virtq_add(&statsq, &b, 1, &head);
	if (err)
		return err;
	virtq_kick(&statsq);
	return NULL;
}

/* Sends PFNs of `count` pages from `first_page` through `q`, a buffer of
 * at most PFNS_PER_BUF at a time. */
static const char *send_pages(struct virtq *q, uint32_t first_page, uint32_t count)
{
	uint32_t done = 0;
	while (done < count) {
		uint32_t n = count - done;
		if (n > PFNS_PER_BUF)
			n = PFNS_PER_BUF;
		for (uint32_t i = 0; i < n; i++)
			pfns[i] = first_page + done + i;
		struct virtq_buf b = {(uint64_t)(uintptr_t)pfns, n * 4, 0};
		uint32_t len;
		const char *err = virtq_transfer(q, &b, 1, &len);
		if (err)
			return err;
		done += n;
	}
	return NULL;
}

/* The next queue index after the ones set up (queues of features not
 * negotiated do not exist). */
static uint16_t next_index;

static const char *setup_if(uint64_t feature, struct virtq *q)
{
	if (!(dev.features & feature))
		return NULL;
	return virtq_setup(&dev, q, next_index++, 8);
}

/* Sets the device up accepting `wanted` of what it offers. */
static void balloon_up_with(const struct check *c, uint64_t wanted)
{
	const char *err;
	balloon_up = 0;
	next_index = 2;
	if ((err = virtio_find(VIRTIO_ID_BALLOON, 0, &dev)) ||
	    (err = virtio_irq_route(&dev)) ||
	    (err = virtio_init(&dev, wanted)) ||
	    (err = virtq_setup(&dev, &inflateq, 0, 64)) ||
	    (err = virtq_setup(&dev, &deflateq, 1, 64)) ||
	    (err = setup_if(F_STATS_VQ, &statsq)) ||
	    (err = setup_if(F_FREE_PAGE_HINT, &hintq)) ||
	    (err = setup_if(F_PAGE_REPORTING, &reportq)) ||
	    (err = virtio_driver_ok(&dev)) ||
	    ((dev.features & F_STATS_VQ) && (err = give_stats(0)))) {
		fail(c, err);
		return;
	}
	uint32_t target = num_pages();
	for (uint32_t i = 0; i < BALLOON_PAGES; i++)
		wr8(BALLOON_BASE + (uint64_t)i * 4096, 0xab);
	balloon_up = 1;
	ok(c);
	puts_serial(" target=");
	put_dec(target);
	puts_serial(" features=");
	put_hex(dev.features);
	puts_serial(" touched=");
	put_dec(BALLOON_PAGES);
	putc_serial('\n');
}

void check_balloon(const struct check *c)
{
	balloon_up_with(c, F_STATS_VQ | F_DEFLATE_ON_OOM | F_FREE_PAGE_HINT | F_PAGE_REPORTING);
}

/* As `balloon`, declining free page hinting, as a driver may: the queues
 * after it move down by one. */
void check_balloon_decline_hint(const struct check *c)
{
	balloon_up_with(c, F_STATS_VQ | F_DEFLATE_ON_OOM | F_PAGE_REPORTING);
}

void check_balloon_inflate(const struct check *c)
{
	const char *err;
	if (!balloon_up) {
		fail(c, "run `balloon` first");
		return;
	}
	if ((err = virtio_wait_config(&dev))) {
		fail(c, err);
		return;
	}
	uint32_t target = num_pages();
	uint32_t n = target < BALLOON_PAGES ? target : BALLOON_PAGES;
	if ((err = send_pages(&inflateq, (uint32_t)(BALLOON_BASE >> 12), n))) {
		fail(c, err);
		return;
	}
	inflated = n;
	set_actual(n);
	ok(c);
	puts_serial(" target=");
	put_dec(target);
	puts_serial(" inflated=");
	put_dec(n);
	puts_serial(" config-irq=1\n");
}

void check_balloon_deflate(const struct check *c)
{
	const char *err;
	if (!balloon_up) {
		fail(c, "run `balloon` first");
		return;
	}
	uint32_t zeroed = 1;
	for (uint32_t i = 0; i < inflated; i++)
		if (rd8(BALLOON_BASE + (uint64_t)i * 4096))
			zeroed = 0;
	if ((err = send_pages(&deflateq, (uint32_t)(BALLOON_BASE >> 12), inflated))) {
		fail(c, err);
		return;
	}
	set_actual(0);
	ok(c);
	puts_serial(" deflated=");
	put_dec(inflated);
	puts_serial(" zeroed=");
	put_dec(zeroed);
	putc_serial('\n');
	inflated = 0;
}

void check_balloon_stats(const struct check *c)
{
	const char *err = NULL;
	uint16_t id;
	uint32_t len;
	if (!balloon_up || !(dev.features & F_STATS_VQ)) {
		fail(c, "run `balloon` first, with statistics on");
		return;
	}
	/* Each wait gives up after about 0.4 s; the host's interval is 1 s. */
	for (int tries = 0; tries < 12; tries++) {
		err = virtq_wait_used(&statsq, &id, &len);
		if (!err)
			break;
	}
	if (err) {
		fail(c, "the device never handed the statistics buffer back");
		return;
	}
	stats_round++;
	if ((err = give_stats(stats_round))) {
		fail(c, err);
		return;
	}
	ok(c);
	puts_serial(" round=");
	put_dec(stats_round);
	putc_serial('\n');
}

void check_balloon_hostile(const struct check *c)
{
	static uint32_t bad[4];
	static uint8_t junk[8];
	const char *err;
	uint32_t len;
	if (!balloon_up) {
		fail(c, "run `balloon` first");
		return;
	}
	bad[0] = 0xffffffffu;
	bad[1] = 0x00100000u; /* 4 GiB: past any probe guest's memory */
	bad[2] = 0xfee00u;    /* the LAPIC page */
	bad[3] = 0x000fffffu;
	struct virtq_buf pfn_buf = {(uint64_t)(uintptr_t)bad, sizeof(bad), 0};
	struct virtq_buf short_buf = {(uint64_t)(uintptr_t)junk, 2, 0};
	struct virtq_buf wr_buf = {(uint64_t)(uintptr_t)junk, sizeof(junk), 1};
	struct virtq_buf outside = {0xfffff000ull << 12, 4096, 0};
	if ((err = virtq_transfer(&inflateq, &pfn_buf, 1, &len)) ||
	    (err = virtq_transfer(&inflateq, &short_buf, 1, &len)) ||
	    (err = virtq_transfer(&inflateq, &wr_buf, 1, &len)) ||
	    (err = virtq_transfer(&inflateq, &outside, 1, &len)) ||
	    (err = virtq_transfer(&deflateq, &pfn_buf, 1, &len))) {
		fail(c, err);
		return;
	}
	ok(c);
	putc_serial('\n');
}

void check_balloon_report(const struct check *c)
{
	const char *err;
	uint32_t len;
	if (!balloon_up || !(dev.features & F_PAGE_REPORTING)) {
		fail(c, "run `balloon` first, with free page reporting on");
		return;
	}
	struct virtq_buf b = {BALLOON_BASE, BALLOON_PAGES * 4096, 1};
	if ((err = virtq_transfer(&reportq, &b, 1, &len))) {
		fail(c, err);
		return;
	}
	ok(c);
	puts_serial(" reported=");
	put_dec(BALLOON_PAGES);
	putc_serial('\n');
}

static uint32_t hint_cmd(void)
{
	return (uint32_t)virtio_config_read(&dev, HINT_CMD_ID, 4);
}

/*
 * Polls free_page_hint_cmd_id (up to about 15 s) until it is `want`, or
 * a run id (2 or more) when `want` is 0. Polling, not the interrupt: the
 * host may change it before this check begins, and with
 * acknowledge_on_stop the device changes it while the guest's STOP is
 * being served.
 */
static const char *wait_hint_cmd(uint32_t want, uint32_t *got)
{
	uint64_t t0 = rdtsc();
	for (;;) {
		uint32_t id = hint_cmd();
		if (want ? id == want : id > HINT_DONE) {
			*got = id;
			return NULL;
		}
		if (rdtsc() - t0 > (1ull << 35))
			return want ? "free_page_hint_cmd_id never became DONE"
				    : "free_page_hint_cmd_id never brought a run id";
		__asm__ volatile("pause" ::: "memory");
	}
}

/* Sends a command id to the device on the hinting queue. */
static const char *send_cmd(uint32_t id)
{
	static uint32_t cmd;
	uint32_t len;
	cmd = id;
	struct virtq_buf b = {(uint64_t)(uintptr_t)&cmd, 4, 0};
	return virtq_transfer(&hintq, &b, 1, &len);
}

void check_balloon_hint(const struct check *c)
{
	const char *err;
	uint32_t len;
	if (!balloon_up || !(dev.features & F_FREE_PAGE_HINT)) {
		fail(c, "run `balloon` first, with free page hinting on");
		return;
	}
	uint32_t id;
	if ((err = wait_hint_cmd(0, &id))) {
		fail(c, err);
		return;
	}
	/* Data in the pages, so a later look can tell they were dropped. */
	for (uint32_t i = 0; i < BALLOON_PAGES; i++)
		wr8(BALLOON_BASE + (uint64_t)i * 4096, (uint8_t)(0x40 + id));
	if ((err = send_cmd(id))) {
		fail(c, err);
		return;
	}
	uint32_t bytes = BALLOON_PAGES * 4096;
	for (uint32_t at = 0; at < bytes; at += HINT_BLOCK) {
		struct virtq_buf b = {BALLOON_BASE + at, HINT_BLOCK, 1};
		if ((err = virtq_transfer(&hintq, &b, 1, &len))) {
			fail(c, err);
			return;
		}
	}
	if ((err = send_cmd(0))) {
		fail(c, err);
		return;
	}
	ok(c);
	puts_serial(" id=");
	put_dec(id);
	puts_serial(" hinted=");
	put_dec(BALLOON_PAGES);
	putc_serial('\n');
}

void check_balloon_hint_done(const struct check *c)
{
	const char *err;
	if (!balloon_up || !(dev.features & F_FREE_PAGE_HINT)) {
		fail(c, "run `balloon` first, with free page hinting on");
		return;
	}
	uint32_t cmd;
	if ((err = wait_hint_cmd(HINT_DONE, &cmd))) {
		fail(c, err);
		return;
	}
	uint32_t zeroed = 1;
	for (uint32_t i = 0; i < BALLOON_PAGES; i++)
		if (rd8(BALLOON_BASE + (uint64_t)i * 4096))
			zeroed = 0;
	ok(c);
	puts_serial(" cmd=1 zeroed=");
	put_dec(zeroed);
	putc_serial('\n');
}
