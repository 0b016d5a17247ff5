/*
 * Checks `mem`, `mem-plug`, `mem-check`, `mem-unplug`, `mem-unplug-all`
 * and `mem-hostile`: virtio-mem (DeviceID 24; one request queue). They
 * share one device set up by `mem`.
 *
 * `mem` sets the device up, accepting VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
 * reads the configuration space and maps the whole region (far above
 * RAM). Prints `PROBE mem OK block=<hex> addr=<hex> region=<hex>
 * usable=<hex> requested=<hex> plugged=<hex> features=<hex>`.
 *
 * `mem-plug` waits (up to about 15 s) for a configuration-change
 * interrupt (the host's PATCH /hotplug/memory), reads requested_size (N
 * blocks), then: PLUG of N + 1 blocks (more than requested: NACK); PLUG
 * of one block just past the usable region (ERROR); PLUG of N blocks at
 * the region's start (ACK); writes every 4 KiB page of them and reads
 * them back; STATE of the N blocks (PLUGGED) and of N + 1 (MIXED).
 * Prints `PROBE mem-plug OK requested=<N> plugged=<bytes> nack=<r>
 * outside=<r> state=<s> mixed=<s> touched=<pages> intact=<1|0>`.
 *
 * `mem-check` reads the plugged pages again (after a snapshot restore,
 * they must still hold what `mem-plug` wrote) and asks their STATE.
 * Prints `PROBE mem-check OK plugged=<bytes> intact=<1|0> state=<s>`.
 *
 * `mem-unplug` unplugs those N blocks (ACK), unplugs them again (ERROR),
 * asks their STATE (UNPLUGGED) and reads their first byte (the slot is
 * out of the guest: the VMM answers 0). Prints `PROBE mem-unplug OK
 * resp=<r> again=<r> state=<s> plugged=<bytes> read=<hex>`.
 *
 * `mem-unplug-all` plugs one block, then asks for UNPLUG_ALL. Prints
 * `PROBE mem-unplug-all OK plug=<r> all=<r> plugged=<bytes> usable=<hex>`.
 *
 * `mem-hostile` sends chains a driver never would: a short request, a
 * device-writable request, an unknown type (each answered ERROR), a
 * device-readable response and a 4-byte one (both returned unanswered),
 * then a good STATE (so after `mem-plug`: the usable region must not be
 * empty). Prints `PROBE mem-hostile OK`.
 *
 * Responses: 0 ACK, 1 NACK, 2 BUSY, 3 ERROR; states: 0 PLUGGED,
 * 1 UNPLUGGED, 2 MIXED.
 */
#include "virtio.h"

#define F_UNPLUGGED_INACCESSIBLE (1ull << 1)
#define REQ_PLUG 0
#define REQ_UNPLUG 1
#define REQ_UNPLUG_ALL 2
#define REQ_STATE 3
#define RESP_UNSET 0x77

/* Configuration space offsets. */
#define CFG_BLOCK 0
#define CFG_ADDR 16
#define CFG_REGION 24
#define CFG_USABLE 32
#define CFG_PLUGGED 40
#define CFG_REQUESTED 48

struct mem_req {
	uint16_t type;
	uint16_t padding[3];
	uint64_t addr;
	uint16_t nb_blocks;
	uint16_t padding2[3];
};

struct mem_resp {
	uint16_t type;
	uint16_t padding[3];
	uint16_t state;
};

static struct virtio_dev dev;
static struct virtq q;
static struct mem_req req __attribute__((aligned(16)));
static struct mem_resp resp __attribute__((aligned(16)));
static int mem_up;
static uint64_t block, base, region;
/* What mem-plug plugged: blocks from `base`. */
static uint64_t plugged_blocks;

static uint64_t cfg(unsigned off)
{
	return virtio_config_read(&dev, off, 8);
}

/* Sends a request; *type and *state get the response's. */
static const char *send(uint16_t t, uint64_t addr, uint16_t nb, uint16_t *type, uint16_t *state)
{
	uint32_t len;
	req.type = t;
	req.addr = addr;
	req.nb_blocks = nb;
	resp.type = RESP_UNSET;
	resp.state = RESP_UNSET;
	struct virtq_buf b[2] = {
		{(uint64_t)(uintptr_t)&req, sizeof(req), 0},
		{(uint64_t)(uintptr_t)&resp, sizeof(resp), 1},
	};
	const char *err = virtq_transfer(&q, b, 2, &len);
	if (err)
		return err;
	if (len != sizeof(resp))
		return virtio_why("a response of length", len);
	*type = resp.type;
	if (state)
		*state = resp.state;
	return NULL;
}

static uint64_t pattern(uint64_t page)
{
	return page ^ 0x5a5a5a5a5a5a5a5aull;
}

/* Whether the first `pages` pages from `base` hold their pattern. */
static int intact(uint64_t pages)
{
	for (uint64_t i = 0; i < pages; i++) {
		uint64_t a = base + i * 4096;
		if (rd64(a) != pattern(a))
			return 0;
	}
	return 1;
}

void check_mem(const struct check *c)
{
	const char *err;
	mem_up = 0;
	if ((err = virtio_find(VIRTIO_ID_MEM, 0, &dev)) ||
	    (err = virtio_irq_route(&dev)) ||
	    (err = virtio_init(&dev, F_UNPLUGGED_INACCESSIBLE)) ||
	    (err = virtq_setup(&dev, &q, 0, 8)) ||
	    (err = virtio_driver_ok(&dev))) {
		fail(c, err);
		return;
	}
	block = cfg(CFG_BLOCK);
	base = cfg(CFG_ADDR);
	region = cfg(CFG_REGION);
	if (!block || (block & (block - 1)) || base % block || !region) {
		fail(c, virtio_why("a region that makes no sense at", base));
		return;
	}
	if ((err = map_phys(base, region))) {
		fail(c, err);
		return;
	}
	mem_up = 1;
	ok(c);
	puts_serial(" block=");
	put_hex(block);
	puts_serial(" addr=");
	put_hex(base);
	puts_serial(" region=");
	put_hex(region);
	puts_serial(" usable=");
	put_hex(cfg(CFG_USABLE));
	puts_serial(" requested=");
	put_hex(cfg(CFG_REQUESTED));
	puts_serial(" plugged=");
	put_hex(cfg(CFG_PLUGGED));
	puts_serial(" features=");
	put_hex(dev.features);
	putc_serial('\n');
}

void check_mem_plug(const struct check *c)
{
	const char *err;
	uint16_t nack, outside, ack, state, mixed;
	if (!mem_up) {
		fail(c, "run `mem` first");
		return;
	}
	if ((err = virtio_wait_config(&dev))) {
		fail(c, err);
		return;
	}
	uint64_t n = cfg(CFG_REQUESTED) / block;
	uint64_t usable = cfg(CFG_USABLE);
	if (n == 0 || n > 0xfffe) {
		fail(c, virtio_why("a requested size of blocks", n));
		return;
	}
	if ((err = send(REQ_PLUG, base, (uint16_t)(n + 1), &nack, NULL)) ||
	    (err = send(REQ_PLUG, base + usable, 1, &outside, NULL)) ||
	    (err = send(REQ_PLUG, base, (uint16_t)n, &ack, NULL))) {
		fail(c, err);
		return;
	}
	if (ack != 0) {
		fail(c, virtio_why("PLUG of the requested blocks answered", ack));
		return;
	}
	plugged_blocks = n;
	uint64_t pages = n * block / 4096;
	for (uint64_t i = 0; i < pages; i++) {
		uint64_t a = base + i * 4096;
		wr64(a, pattern(a));
	}
	int whole = intact(pages);
	if ((err = send(REQ_STATE, base, (uint16_t)n, &ack, &state)) ||
	    (err = send(REQ_STATE, base, (uint16_t)(n + 1), &ack, &mixed))) {
		fail(c, err);
		return;
	}
	ok(c);
	puts_serial(" requested=");
	put_dec(n);
	puts_serial(" plugged=");
	put_dec(cfg(CFG_PLUGGED));
	puts_serial(" nack=");
	put_dec(nack);
	puts_serial(" outside=");
	put_dec(outside);
	puts_serial(" state=");
	put_dec(state);
	puts_serial(" mixed=");
	put_dec(mixed);
	puts_serial(" touched=");
	put_dec(pages);
	puts_serial(" intact=");
	put_dec((uint64_t)whole);
	putc_serial('\n');
}

void check_mem_check(const struct check *c)
{
	const char *err;
	uint16_t ack, state;
	if (!mem_up || !plugged_blocks) {
		fail(c, "run `mem` and `mem-plug` first");
		return;
	}
	int whole = intact(plugged_blocks * block / 4096);
	if ((err = send(REQ_STATE, base, (uint16_t)plugged_blocks, &ack, &state))) {
		fail(c, err);
		return;
	}
	ok(c);
	puts_serial(" plugged=");
	put_dec(cfg(CFG_PLUGGED));
	puts_serial(" intact=");
	put_dec((uint64_t)whole);
	puts_serial(" state=");
	put_dec(state);
	putc_serial('\n');
}

void check_mem_unplug(const struct check *c)
{
	const char *err;
	uint16_t r, again, ack, state;
	if (!mem_up || !plugged_blocks) {
		fail(c, "run `mem` and `mem-plug` first");
		return;
	}
	uint16_t n = (uint16_t)plugged_blocks;
	if ((err = send(REQ_UNPLUG, base, n, &r, NULL)) ||
	    (err = send(REQ_UNPLUG, base, n, &again, NULL)) ||
	    (err = send(REQ_STATE, base, n, &ack, &state))) {
		fail(c, err);
		return;
	}
	plugged_blocks = 0;
	ok(c);
	puts_serial(" resp=");
	put_dec(r);
	puts_serial(" again=");
	put_dec(again);
	puts_serial(" state=");
	put_dec(state);
	puts_serial(" plugged=");
	put_dec(cfg(CFG_PLUGGED));
	puts_serial(" read=");
	put_hex(rd64(base));
	putc_serial('\n');
}

void check_mem_unplug_all(const struct check *c)
{
	const char *err;
	uint16_t plug, all;
	if (!mem_up) {
		fail(c, "run `mem` first");
		return;
	}
	if ((err = send(REQ_PLUG, base, 1, &plug, NULL)) ||
	    (err = send(REQ_UNPLUG_ALL, 0, 0, &all, NULL))) {
		fail(c, err);
		return;
	}
	plugged_blocks = 0;
	ok(c);
	puts_serial(" plug=");
	put_dec(plug);
	puts_serial(" all=");
	put_dec(all);
	puts_serial(" plugged=");
	put_dec(cfg(CFG_PLUGGED));
	puts_serial(" usable=");
	put_hex(cfg(CFG_USABLE));
	putc_serial('\n');
}

/* One hostile chain: a request of `req_len` bytes (device-writable when
 * `req_w`) of type `t`, a response buffer of `resp_len` (writable when
 * `resp_w`). *len gets the used length. */
static const char *raw(uint16_t t, uint32_t req_len, int req_w, uint32_t resp_len, int resp_w,
		       uint32_t *len)
{
	req.type = t;
	req.addr = base;
	req.nb_blocks = 1;
	resp.type = RESP_UNSET;
	struct virtq_buf b[2] = {
		{(uint64_t)(uintptr_t)&req, req_len, req_w},
		{(uint64_t)(uintptr_t)&resp, resp_len, resp_w},
	};
	return virtq_transfer(&q, b, 2, len);
}

void check_mem_hostile(const struct check *c)
{
	const char *err;
	uint32_t len;
	uint16_t ack;
	if (!mem_up) {
		fail(c, "run `mem` first");
		return;
	}
	/* An 8-byte request. */
	if ((err = raw(REQ_STATE, 8, 0, sizeof(resp), 1, &len)))
		goto out;
	if (len != sizeof(resp) || resp.type != 3) {
		err = virtio_why("a short request was answered", resp.type);
		goto out;
	}
	/* A device-writable request: the answer lands in its buffer. */
	if ((err = raw(REQ_STATE, sizeof(req), 1, sizeof(resp), 1, &len)))
		goto out;
	if (len != sizeof(resp) || req.type != 3) {
		err = virtio_why("a device-writable request was answered", req.type);
		goto out;
	}
	/* An unknown type. */
	if ((err = raw(9, sizeof(req), 0, sizeof(resp), 1, &len)))
		goto out;
	if (len != sizeof(resp) || resp.type != 3) {
		err = virtio_why("an unknown type was answered", resp.type);
		goto out;
	}
	/* A device-readable response, and a 4-byte one. */
	if ((err = raw(REQ_STATE, sizeof(req), 0, sizeof(resp), 0, &len)))
		goto out;
	if (len != 0 || resp.type != RESP_UNSET) {
		err = virtio_why("a read-only response buffer was used, length", len);
		goto out;
	}
	if ((err = raw(REQ_STATE, sizeof(req), 0, 4, 1, &len)))
		goto out;
	if (len != 0 || resp.type != RESP_UNSET) {
		err = virtio_why("a 4-byte response buffer was used, length", len);
		goto out;
	}
	/* The device still answers a good request. */
	if ((err = send(REQ_STATE, base, 1, &ack, NULL)))
		goto out;
	if (ack != 0)
		err = virtio_why("a good STATE after hostile ones got", ack);
out:
	if (err) {
		fail(c, err);
		return;
	}
	ok(c);
	putc_serial('\n');
}
