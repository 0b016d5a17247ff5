/*
 * Check `rng`: virtio-rng (DeviceID 4, one queue, "requestq").
 *
 * Finds the device, routes its interrupt, initialises it as Linux does,
 * posts one 32-byte device-writable buffer, notifies, waits for the used
 * ring, checks the interrupt reached the LAPIC IRR and that InterruptACK
 * clears InterruptStatus, and resets the device. Prints
 * `PROBE rng OK bytes=<used length> irq=1`.
 */
#include "virtio.h"

#define RNG_BYTES 32

static struct virtq rng_queue;
static uint8_t rng_buf[RNG_BYTES];

void check_rng(const struct check *c)
{
	struct virtio_dev dev;
	const char *err;
	uint32_t len = 0;
	memset(rng_buf, 0, sizeof(rng_buf));
	struct virtq_buf buf = {(uint64_t)(uintptr_t)rng_buf, sizeof(rng_buf), 1};

	if ((err = virtio_find(VIRTIO_ID_RNG, 0, &dev)) ||
	    (err = virtio_irq_route(&dev)) ||
	    (err = virtio_init(&dev, 0)) ||
	    (err = virtq_setup(&dev, &rng_queue, 0, 8)) ||
	    (err = virtio_driver_ok(&dev)) ||
	    (err = virtq_transfer(&rng_queue, &buf, 1, &len))) {
		fail(c, err);
		return;
	}
	if (len == 0) {
		fail(c, "the device used the buffer with length 0");
		return;
	}
	if (len > RNG_BYTES) {
		fail(c, virtio_why("used length larger than the buffer:", len));
		return;
	}
	uint8_t any = 0;
	for (uint32_t i = 0; i < len; i++)
		any |= rd8((uint64_t)(uintptr_t)&rng_buf[i]);
	if (len == RNG_BYTES && !any) {
		fail(c, "32 bytes used but the buffer is still all zero");
		return;
	}
	if ((err = virtio_irq_wait(&dev))) {
		fail(c, err);
		return;
	}
	/* Nothing else is in flight: the acknowledged bits must be clear. */
	uint32_t isr = virtio_rd(&dev, VIRTIO_MMIO_INTERRUPT_STATUS);
	if (isr) {
		fail(c, virtio_why("InterruptACK left InterruptStatus", isr));
		return;
	}
	if ((err = virtio_reset(&dev))) {
		fail(c, err);
		return;
	}
	ok(c);
	puts_serial(" bytes=");
	put_dec(len);
	puts_serial(" irq=1\n");
}
