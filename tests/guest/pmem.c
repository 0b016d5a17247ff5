/*
 * Checks `pmem:<n>` and `pmem-hostile:<n>`: virtio-pmem (DeviceID 27;
 * one request queue; configuration space le64 start, le64 size), the
 * n-th pmem device on the command line (0-based).
 *
 * `pmem:<n>` sets the device up, reads start and size, maps the window
 * (it lies far above RAM), reads its first 8 bytes, writes PMEM_PATTERN
 * (16 bytes) at offset PMEM_WRITE_AT, reads them back, and sends a
 * FLUSH. Prints
 * `PROBE pmem:<n> OK start=<hex> size=<hex> head=<hex le64> readback=<1|0> flush=<status> used=<len>`.
 * On a read-only device the write exits to the VMM, which drops it:
 * readback=0.
 *
 * `pmem-hostile:<n>` (after `pmem:<n>`) sends chains a driver never
 * would, and checks each answer: an unknown request type and a
 * device-writable request get an error status (non-zero) in 4 bytes; a
 * chain whose status is device-readable, and one whose status is 2
 * bytes, come back with used length 0. Then a good FLUSH still works.
 * Prints `PROBE pmem-hostile:<n> OK`.
 *
 * `pmem-again:<n>` goes on with a device `pmem:<n>` set up (after a
 * snapshot restore, say): it reads back what `pmem:<n>` wrote and sends
 * a FLUSH. Prints `PROBE pmem-again:<n> OK readback=<1|0> flush=<status>`.
 */
#include "virtio.h"

#define PMEM_WRITE_AT 4096
#define MAX_PMEM 2

static const char PMEM_PATTERN[16] = "husk-pmem-write!";

struct pmem_dev {
	struct virtio_dev dev;
	struct virtq q;
	uint64_t start, size;
	int up;
};

static struct pmem_dev pmems[MAX_PMEM];
static uint32_t req_buf[4] __attribute__((aligned(16)));
static uint32_t status_buf[4] __attribute__((aligned(16)));

/* The device named by the check's argument. */
static struct pmem_dev *which(const struct check *c, size_t prefix)
{
	int64_t n = check_arg(c, prefix);
	if (n < 0 || n >= MAX_PMEM) {
		fail(c, "bad device index");
		return NULL;
	}
	return &pmems[n];
}

/* One request: type `t` in a buffer of `req_len` (device-writable when
 * `req_w`), status in one of `st_len` (device-writable when `st_w`).
 * *len gets the used length. */
static const char *request(struct pmem_dev *p, uint32_t t, uint32_t req_len, int req_w,
			   uint32_t st_len, int st_w, uint32_t *len)
{
	req_buf[0] = t;
	status_buf[0] = 0x5a5a5a5a;
	struct virtq_buf b[2] = {
		{(uint64_t)(uintptr_t)req_buf, req_len, req_w},
		{(uint64_t)(uintptr_t)status_buf, st_len, st_w},
	};
	return virtq_transfer(&p->q, b, 2, len);
}

void check_pmem(const struct check *c)
{
	struct pmem_dev *p = which(c, 5);
	const char *err;
	uint32_t len;
	int64_t n = check_arg(c, 5);
	if (!p)
		return;
	p->up = 0;
	if ((err = virtio_find(VIRTIO_ID_PMEM, (unsigned)n, &p->dev)) ||
	    (err = virtio_irq_route(&p->dev)) ||
	    (err = virtio_init(&p->dev, 0)) ||
	    (err = virtq_setup(&p->dev, &p->q, 0, 8)) ||
	    (err = virtio_driver_ok(&p->dev))) {
		fail(c, err);
		return;
	}
	p->start = virtio_config_read(&p->dev, 0, 8);
	p->size = virtio_config_read(&p->dev, 8, 8);
	if (p->size < 2 * PMEM_WRITE_AT || (p->start & ((2ull << 20) - 1))) {
		fail(c, virtio_why("a window that is too small or unaligned at", p->start));
		return;
	}
	if ((err = map_phys(p->start, p->size))) {
		fail(c, err);
		return;
	}
	uint64_t head = rd64(p->start);
	uint64_t at = p->start + PMEM_WRITE_AT;
	for (unsigned i = 0; i < sizeof(PMEM_PATTERN); i++)
		wr8(at + i, (uint8_t)PMEM_PATTERN[i]);
	int readback = 1;
	for (unsigned i = 0; i < sizeof(PMEM_PATTERN); i++)
		if (rd8(at + i) != (uint8_t)PMEM_PATTERN[i])
			readback = 0;
	if ((err = request(p, 0, 4, 0, 4, 1, &len))) {
		fail(c, err);
		return;
	}
	p->up = 1;
	ok(c);
	puts_serial(" start=");
	put_hex(p->start);
	puts_serial(" size=");
	put_hex(p->size);
	puts_serial(" head=");
	put_hex(head);
	puts_serial(" readback=");
	put_dec((uint64_t)readback);
	puts_serial(" flush=");
	put_dec(status_buf[0]);
	puts_serial(" used=");
	put_dec(len);
	putc_serial('\n');
}

void check_pmem_hostile(const struct check *c)
{
	struct pmem_dev *p = which(c, 13);
	const char *err;
	uint32_t len;
	if (!p)
		return;
	if (!p->up) {
		fail(c, "run `pmem:<n>` first");
		return;
	}
	/* An unknown type. */
	if ((err = request(p, 7, 4, 0, 4, 1, &len)))
		goto out;
	if (len != 4 || status_buf[0] == 0 || status_buf[0] == 0x5a5a5a5a) {
		err = virtio_why("an unknown type got status", status_buf[0]);
		goto out;
	}
	/* The request device-writable: nothing to read. */
	if ((err = request(p, 0, 4, 1, 4, 1, &len)))
		goto out;
	if (len != 4 || status_buf[0] == 0 || status_buf[0] == 0x5a5a5a5a) {
		err = virtio_why("a device-writable request got status", status_buf[0]);
		goto out;
	}
	/* A device-readable status: no room for an answer. */
	if ((err = request(p, 0, 4, 0, 4, 0, &len)))
		goto out;
	if (len != 0 || status_buf[0] != 0x5a5a5a5a) {
		err = virtio_why("a read-only status was used, length", len);
		goto out;
	}
	/* A 2-byte status. */
	if ((err = request(p, 0, 4, 0, 2, 1, &len)))
		goto out;
	if (len != 0 || status_buf[0] != 0x5a5a5a5a) {
		err = virtio_why("a 2-byte status was used, length", len);
		goto out;
	}
	/* The device still answers a good one. */
	if ((err = request(p, 0, 4, 0, 4, 1, &len)))
		goto out;
	if (len != 4 || status_buf[0] != 0)
		err = virtio_why("a good FLUSH after hostile ones got", status_buf[0]);
out:
	if (err) {
		fail(c, err);
		return;
	}
	ok(c);
	putc_serial('\n');
}

void check_pmem_again(const struct check *c)
{
	struct pmem_dev *p = which(c, 11);
	const char *err;
	uint32_t len;
	if (!p)
		return;
	if (!p->up) {
		fail(c, "run `pmem:<n>` first");
		return;
	}
	int readback = 1;
	for (unsigned i = 0; i < sizeof(PMEM_PATTERN); i++)
		if (rd8(p->start + PMEM_WRITE_AT + i) != (uint8_t)PMEM_PATTERN[i])
			readback = 0;
	if ((err = request(p, 0, 4, 0, 4, 1, &len))) {
		fail(c, err);
		return;
	}
	ok(c);
	puts_serial(" readback=");
	put_dec((uint64_t)readback);
	puts_serial(" flush=");
	put_dec(status_buf[0]);
	putc_serial('\n');
}
