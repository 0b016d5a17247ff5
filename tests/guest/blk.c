/*
 * Check `blk`: virtio-blk (DeviceID 2, one queue, "requestq").
 *
 * A request is one chain: a 16-byte header {u32 type, u32 reserved,
 * u64 sector} the device reads, the data (device-writable for IN,
 * device-readable for OUT, none for FLUSH), then one device-writable
 * status byte (spec section 5.2.6).
 *
 * The first block device is a writable drive. The check negotiates FLUSH,
 * reads the capacity from the configuration space, reads sector 0 (the
 * host test writes ASCII there), writes sector 1 ("HUSK-PROBE-WRITE",
 * then zeros), flushes, reads sector 1 back and compares, and reads the
 * sector at `capacity` (one past the end), which must come back IOERR.
 * The first request's interrupt must reach the LAPIC IRR.
 *
 * Drive 0 is left set up (not reset), its device and queue static, for
 * `blk-again` below.
 *
 * A second block device, when there is one, is a read-only drive: it must
 * offer VIRTIO_BLK_F_RO, refuse a write to sector 0 with IOERR (and not
 * change it), and serve a read of sector 0. It has a queue of its own and
 * is reset afterwards.
 *
 * Prints `PROBE blk OK capacity=<sectors> head=<16 bytes> wrote=1
 * past_end=ioerr irq=1[ ro=ioerr]`, the head's bytes outside '!'..'~'
 * shown as '.'.
 *
 * Check `blk-again`: goes on with drive 0 as `blk` left it, without a
 * reset, so that after a snapshot restore it drives the restored queue:
 * the device must carry on from the ring indices it had (the driver's
 * side of them is in guest memory, which the snapshot restores). It checks
 * that the device is still live (DRIVER_OK, no DEVICE_NEEDS_RESET), that
 * the LAPIC and the IOAPIC entry still deliver the vector `blk` gave it,
 * routes it to a fresh vector (the old one's IRR bit stays set, since
 * interrupts are never accepted), writes sector 2 ("HUSK-AFTER-RESTORE",
 * then zeros: byte 1024 on of the backing file), whose interrupt must
 * reach the LAPIC IRR, flushes, and reads sector 2 back. Without an earlier successful `blk` in this boot it
 * fails with "blk not set up".
 *
 * Prints `PROBE blk-again OK wrote=1`.
 */
#include "virtio.h"

/* ---- virtio-blk (spec section 5.2) */
#define VIRTIO_BLK_F_RO (1ull << 5)
#define VIRTIO_BLK_F_FLUSH (1ull << 9)

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4

#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define SECTOR 512
/* The status byte before the device writes it: no valid status. */
#define STATUS_UNSET 0xff

#define WRITE_MARK "HUSK-PROBE-WRITE" /* 16 bytes */
#define AGAIN_MARK "HUSK-AFTER-RESTORE" /* 18 bytes */
#define AGAIN_SECTOR 2

struct blk_req_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

/* Drive 0, live from a successful `blk` on (for `blk-again`). */
static struct virtio_dev blk_dev;
static struct virtq blk_queue;
static int blk_live;
/* Drive 1 (read-only), reset after `blk`. */
static struct virtio_dev blk_ro_dev;
static struct virtq blk_ro_queue;
static struct blk_req_hdr blk_hdr;
static uint8_t blk_status;
static uint8_t blk_out[SECTOR]; /* what a write sends */
static uint8_t blk_in[SECTOR];  /* what a read gets */

/* "<step>: <err>" in a static buffer (err may be virtio_why's buffer). */
static const char *step_why(const char *step, const char *err)
{
	static char buf[160];
	size_t n = 0;
	while (*step && n < sizeof(buf) - 3)
		buf[n++] = *step++;
	buf[n++] = ':';
	buf[n++] = ' ';
	while (*err && n < sizeof(buf) - 1)
		buf[n++] = *err++;
	buf[n] = 0;
	return buf;
}

/*
 * One request on queue q. `data` is NULL for FLUSH, else one sector
 * (blk_in for IN, blk_out for OUT). Returns a transport failure; the
 * device's status goes to *status and the used length to *len.
 */
static const char *blk_request(struct virtq *q, uint32_t type, uint64_t sector, uint8_t *data,
			       uint8_t *status, uint32_t *len)
{
	struct virtq_buf bufs[3];
	unsigned n = 0;
	blk_hdr.type = type;
	blk_hdr.reserved = 0;
	blk_hdr.sector = sector;
	wr8((uint64_t)(uintptr_t)&blk_status, STATUS_UNSET);
	bufs[n++] = (struct virtq_buf){(uint64_t)(uintptr_t)&blk_hdr, sizeof(blk_hdr), 0};
	if (data)
		bufs[n++] = (struct virtq_buf){(uint64_t)(uintptr_t)data, SECTOR,
					       type == VIRTIO_BLK_T_IN};
	bufs[n++] = (struct virtq_buf){(uint64_t)(uintptr_t)&blk_status, 1, 1};
	*len = 0;
	const char *err = virtq_transfer(q, bufs, n, len);
	*status = rd8((uint64_t)(uintptr_t)&blk_status);
	return err;
}

/*
 * A request that must succeed: status OK and the used length the spec
 * asks for (the data and status bytes the device wrote: 513 for a
 * one-sector IN, 1 otherwise).
 */
static const char *blk_request_ok(struct virtq *q, const char *step, uint32_t type,
				  uint64_t sector, uint8_t *data)
{
	uint8_t status;
	uint32_t len;
	const char *err = blk_request(q, type, sector, data, &status, &len);
	if (err)
		return step_why(step, err);
	if (status != VIRTIO_BLK_S_OK)
		return step_why(step, virtio_why("status", status));
	uint32_t want = type == VIRTIO_BLK_T_IN ? SECTOR + 1 : 1;
	if (len != want)
		return step_why(step, virtio_why("used length", len));
	return NULL;
}

/* A request that must come back IOERR. */
static const char *blk_request_ioerr(struct virtq *q, const char *step, uint32_t type,
				     uint64_t sector, uint8_t *data)
{
	uint8_t status;
	uint32_t len;
	const char *err = blk_request(q, type, sector, data, &status, &len);
	if (err)
		return step_why(step, err);
	if (status != VIRTIO_BLK_S_IOERR)
		return step_why(step, virtio_why("status (want IOERR 0x1)", status));
	if (len == 0)
		return step_why(step, "used length 0 (the status byte was written)");
	return NULL;
}

static void fill(uint8_t *buf, uint8_t v)
{
	for (unsigned i = 0; i < SECTOR; i++)
		wr8((uint64_t)(uintptr_t)&buf[i], v);
}

/* Index of the first byte where blk_in differs from blk_out, or -1. */
static int in_differs(void)
{
	for (unsigned i = 0; i < SECTOR; i++)
		if (rd8((uint64_t)(uintptr_t)&blk_in[i]) != blk_out[i])
			return (int)i;
	return -1;
}

/* Finds, routes (if `route`) and starts block device `nth` with queue q. */
static const char *blk_start(unsigned nth, struct virtio_dev *dev, struct virtq *q, int route)
{
	const char *err;
	if ((err = virtio_find(VIRTIO_ID_BLOCK, nth, dev)) ||
	    (route && (err = virtio_irq_route(dev))) ||
	    (err = virtio_init(dev, VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_RO)) ||
	    (err = virtq_setup(dev, q, 0, 8)) ||
	    (err = virtio_driver_ok(dev)))
		return err;
	return NULL;
}

/*
 * Writes `mark` and zeros to `sector` of drive 0, flushes, and reads the
 * sector back. With `irq`, the write's interrupt must reach the LAPIC IRR.
 */
static const char *blk_write_back(uint64_t sector, const char *mark, int irq)
{
	struct virtio_dev *dev = &blk_dev;
	const char *err;
	memset(blk_out, 0, sizeof(blk_out));
	for (unsigned i = 0; mark[i]; i++)
		blk_out[i] = (uint8_t)mark[i];
	if ((err = blk_request_ok(&blk_queue, "write", VIRTIO_BLK_T_OUT, sector, blk_out)))
		return err;
	if (irq && (err = virtio_irq_wait(dev)))
		return step_why("write", err);
	virtio_irq_ack(dev);
	if ((err = blk_request_ok(&blk_queue, "flush", VIRTIO_BLK_T_FLUSH, 0, NULL)))
		return err;
	virtio_irq_ack(dev);
	fill(blk_in, 0xa5);
	if ((err = blk_request_ok(&blk_queue, "read back", VIRTIO_BLK_T_IN, sector, blk_in)))
		return err;
	virtio_irq_ack(dev);
	int at = in_differs();
	if (at >= 0)
		return virtio_why("read back differs from what was written at byte", (uint64_t)at);
	return NULL;
}

/* The writable drive. Fills *capacity and head[16]. */
static const char *blk_rw(uint64_t *capacity, char *head)
{
	struct virtio_dev *dev = &blk_dev;
	const char *err;
	blk_live = 0;
	if ((err = blk_start(0, dev, &blk_queue, 1)))
		return step_why("drive 0", err);
	if (dev->device_features & VIRTIO_BLK_F_RO)
		return "drive 0 offers VIRTIO_BLK_F_RO but is writable";
	if (!(dev->features & VIRTIO_BLK_F_FLUSH))
		return "drive 0 does not offer VIRTIO_BLK_F_FLUSH";

	uint64_t cap = virtio_config_read(dev, 0, 8);
	*capacity = cap;
	if (cap < 2)
		return virtio_why("capacity below 2 sectors:", cap);

	/* Sector 0; its interrupt proves the routing. */
	fill(blk_in, 0xa5);
	if ((err = blk_request_ok(&blk_queue, "read sector 0", VIRTIO_BLK_T_IN, 0, blk_in)))
		return err;
	if ((err = virtio_irq_wait(dev)))
		return step_why("read sector 0", err);
	for (unsigned i = 0; i < 16; i++) {
		uint8_t b = rd8((uint64_t)(uintptr_t)&blk_in[i]);
		head[i] = b >= '!' && b <= '~' ? (char)b : '.';
	}

	/* Sector 1: the mark, then zeros; flushed; read back. */
	if ((err = blk_write_back(1, WRITE_MARK, 0)))
		return step_why("sector 1", err);

	/* One past the end. */
	if ((err = blk_request_ioerr(&blk_queue, "read past the end", VIRTIO_BLK_T_IN, cap,
				     blk_in)))
		return err;
	virtio_irq_ack(dev);
	/* Left running: blk-again goes on with this queue. */
	blk_live = 1;
	return NULL;
}

/* The read-only drive: 1 when tested, 0 when absent, -1 with *why set. */
static int blk_ro(const char **why)
{
	struct virtio_dev *dev = &blk_ro_dev;
	const char *err;
	if ((err = virtio_find(VIRTIO_ID_BLOCK, 1, dev))) {
		if (starts_with(err, "no virtio-mmio device"))
			return 0;
		*why = step_why("drive 1", err);
		return -1;
	}
	if ((err = blk_start(1, dev, &blk_ro_queue, 0))) {
		*why = step_why("drive 1", err);
		return -1;
	}
	if (!(dev->device_features & VIRTIO_BLK_F_RO)) {
		*why = "drive 1 (read-only) does not offer VIRTIO_BLK_F_RO";
		return -1;
	}
	/* blk_out still holds the mark: it must not land on sector 0. */
	if ((err = blk_request_ioerr(&blk_ro_queue, "drive 1 write sector 0", VIRTIO_BLK_T_OUT, 0,
				     blk_out)) ||
	    (err = blk_request_ok(&blk_ro_queue, "drive 1 read sector 0", VIRTIO_BLK_T_IN, 0,
				  blk_in))) {
		*why = err;
		return -1;
	}
	virtio_irq_ack(dev);
	if (in_differs() < 0) {
		*why = "drive 1: the refused write landed on sector 0";
		return -1;
	}
	if ((err = virtio_reset(dev))) {
		*why = step_why("drive 1 reset", err);
		return -1;
	}
	return 1;
}

void check_blk(const struct check *c)
{
	uint64_t capacity = 0;
	char head[17];
	const char *err;
	head[16] = 0;
	if ((err = blk_rw(&capacity, head))) {
		fail(c, err);
		return;
	}
	int ro = blk_ro(&err);
	if (ro < 0) {
		fail(c, err);
		return;
	}
	ok(c);
	puts_serial(" capacity=");
	put_dec(capacity);
	puts_serial(" head=");
	puts_serial(head);
	puts_serial(" wrote=1 past_end=ioerr irq=1");
	if (ro)
		puts_serial(" ro=ioerr");
	puts_serial("\n");
}

void check_blk_again(const struct check *c)
{
	struct virtio_dev *dev = &blk_dev;
	const char *err;
	if (!blk_live) {
		fail(c, "blk not set up");
		return;
	}
	uint32_t s = virtio_rd(dev, VIRTIO_MMIO_STATUS);
	if (!(s & VIRTIO_STATUS_DRIVER_OK) || (s & VIRTIO_STATUS_DEVICE_NEEDS_RESET)) {
		fail(c, virtio_why("drive 0 is no longer live; Status", s));
		return;
	}
	uint64_t cap = virtio_config_read(dev, 0, 8);
	if (cap <= AGAIN_SECTOR) {
		fail(c, virtio_why("capacity too small for sector 2:", cap));
		return;
	}
	if ((err = virtio_irq_check_route(dev)) || (err = virtio_irq_route(dev))) {
		fail(c, err);
		return;
	}
	if ((err = blk_write_back(AGAIN_SECTOR, AGAIN_MARK, 1))) {
		fail(c, step_why("sector 2", err));
		return;
	}
	ok(c);
	puts_serial(" wrote=1\n");
}

/*
 * Check `blk-hostile`: goes on with drive 0 as `blk` left it and sends
 * requests no driver should: data outside guest RAM (device-writable for
 * a read, device-readable for a write), a read one sector past the end,
 * a write of a length that is not whole sectors, a header cut short, and
 * an unknown request type. Each must come back with an error status (or,
 * where even the status byte cannot be reached, no status at all), never
 * with OK, and the device must answer every one. Then a good read of
 * sector 0 must still work.
 *
 * Prints `PROBE blk-hostile OK statuses=<one hex digit each>`.
 */
#define OUTSIDE_RAM 0x7f0000000000ull

static const char *hostile_one(uint32_t type, uint64_t sector, uint64_t data, uint32_t data_len,
			       int writable, uint32_t hdr_len, uint8_t *status)
{
	struct virtq_buf bufs[3];
	unsigned n = 0;
	uint32_t len;
	blk_hdr.type = type;
	blk_hdr.reserved = 0;
	blk_hdr.sector = sector;
	wr8((uint64_t)(uintptr_t)&blk_status, STATUS_UNSET);
	bufs[n++] = (struct virtq_buf){(uint64_t)(uintptr_t)&blk_hdr, hdr_len, 0};
	if (data_len)
		bufs[n++] = (struct virtq_buf){data, data_len, writable};
	bufs[n++] = (struct virtq_buf){(uint64_t)(uintptr_t)&blk_status, 1, 1};
	const char *err = virtq_transfer(&blk_queue, bufs, n, &len);
	*status = rd8((uint64_t)(uintptr_t)&blk_status);
	virtio_irq_ack(&blk_dev);
	return err;
}

void check_blk_hostile(const struct check *c)
{
	const struct {
		uint32_t type;
		uint64_t sector;
		uint64_t data;
		uint32_t data_len;
		int writable;
		uint32_t hdr_len;
	} cases[] = {
		{VIRTIO_BLK_T_IN, 0, OUTSIDE_RAM, SECTOR, 1, 16},
		{VIRTIO_BLK_T_OUT, 0, OUTSIDE_RAM, SECTOR, 0, 16},
		{VIRTIO_BLK_T_IN, 1ull << 40, (uint64_t)(uintptr_t)blk_in, SECTOR, 1, 16},
		{VIRTIO_BLK_T_OUT, 3, (uint64_t)(uintptr_t)blk_out, 100, 0, 16},
		{VIRTIO_BLK_T_IN, 0, (uint64_t)(uintptr_t)blk_in, SECTOR, 1, 8},
		{99, 0, (uint64_t)(uintptr_t)blk_in, SECTOR, 1, 16},
	};
	char statuses[sizeof(cases) / sizeof(cases[0]) + 1];
	if (!blk_live) {
		fail(c, "blk not set up");
		return;
	}
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint8_t status;
		const char *err = hostile_one(cases[i].type, cases[i].sector, cases[i].data,
					      cases[i].data_len, cases[i].writable,
					      cases[i].hdr_len, &status);
		if (err) {
			fail(c, step_why("hostile request", err));
			return;
		}
		if (status == VIRTIO_BLK_S_OK) {
			fail(c, virtio_why("a hostile request came back OK; case", i));
			return;
		}
		statuses[i] = "0123456789abcdef"[status & 0xf];
	}
	statuses[sizeof(statuses) - 1] = 0;
	const char *err;
	fill(blk_in, 0xa5);
	if ((err = blk_request_ok(&blk_queue, "read sector 0 after", VIRTIO_BLK_T_IN, 0, blk_in))) {
		fail(c, err);
		return;
	}
	virtio_irq_ack(&blk_dev);
	ok(c);
	puts_serial(" statuses=");
	puts_serial(statuses);
	putc_serial('\n');
}

/*
 * Check `blk-bench:N`: N reads of 4 KiB at pseudo-random 4 KiB-aligned
 * offsets of drive 0 (as `blk` left it), one at a time, each polled to
 * completion. The host times it (the probe has no wall clock); under
 * KVM's instruction emulator the guest's own instructions are much of
 * that time, the same for every drive kind.
 *
 * Prints `PROBE blk-bench:N OK reads=N`.
 */
static uint8_t bench_buf[4096] __attribute__((aligned(4096)));

void check_blk_bench(const struct check *c)
{
	int64_t n = check_arg(c, 10); /* "blk-bench:" */
	if (n < 0) {
		fail(c, "usage: blk-bench:N");
		return;
	}
	if (!blk_live) {
		fail(c, "blk not set up");
		return;
	}
	uint64_t blocks = virtio_config_read(&blk_dev, 0, 8) / 8;
	if (blocks == 0) {
		fail(c, "drive 0 is smaller than 4 KiB");
		return;
	}
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (int64_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		struct virtq_buf bufs[3];
		uint32_t len;
		blk_hdr.type = VIRTIO_BLK_T_IN;
		blk_hdr.reserved = 0;
		blk_hdr.sector = (x % blocks) * 8;
		wr8((uint64_t)(uintptr_t)&blk_status, STATUS_UNSET);
		bufs[0] = (struct virtq_buf){(uint64_t)(uintptr_t)&blk_hdr, sizeof(blk_hdr), 0};
		bufs[1] = (struct virtq_buf){(uint64_t)(uintptr_t)bench_buf, sizeof(bench_buf), 1};
		bufs[2] = (struct virtq_buf){(uint64_t)(uintptr_t)&blk_status, 1, 1};
		const char *err = virtq_transfer(&blk_queue, bufs, 3, &len);
		if (err) {
			fail(c, err);
			return;
		}
		if (rd8((uint64_t)(uintptr_t)&blk_status) != VIRTIO_BLK_S_OK) {
			fail(c, "a read failed");
			return;
		}
	}
	virtio_irq_ack(&blk_dev);
	ok(c);
	puts_serial(" reads=");
	put_dec((uint64_t)n);
	putc_serial('\n');
}
