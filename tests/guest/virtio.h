/*
 * A small virtio-mmio driver for the probe guest: the modern interface
 * (virtio 1.x, register layout "version 2", spec section 4.2.2) and split
 * virtqueues (section 2.7), driven the way Linux's virtio_mmio driver
 * does it, but polled: interrupts stay disabled, and interrupt routing is
 * proven by the LAPIC IRR instead.
 *
 * A check drives a device like this (see rng.c):
 *
 *     static struct virtq q;                  // static: the rings live in BSS
 *     struct virtio_dev dev;
 *     const char *err;
 *     if ((err = virtio_find(VIRTIO_ID_RNG, 0, &dev)) ||
 *         (err = virtio_irq_route(&dev)) ||
 *         (err = virtio_init(&dev, 0)) ||      // reset .. FEATURES_OK
 *         (err = virtq_setup(&dev, &q, 0, 8)) ||
 *         (err = virtio_driver_ok(&dev)) ||
 *         (err = virtq_transfer(&q, bufs, 1, &len)) ||
 *         (err = virtio_irq_wait(&dev))) {
 *             fail(c, err);
 *             return;
 *     }
 *
 * Every function that can fail returns NULL on success or a short reason
 * for a FAIL line (a static string, or a static buffer that the next
 * error overwrites). On failure after the reset, virtio_init, virtq_setup
 * and virtio_driver_ok set the FAILED status bit, as Linux does.
 */
#ifndef VIRTIO_H
#define VIRTIO_H

#include "probe.h"

/* ---- device IDs (section 5) */
#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_RNG 4
#define VIRTIO_ID_BALLOON 5
#define VIRTIO_ID_VSOCK 19
#define VIRTIO_ID_MEM 24
#define VIRTIO_ID_FS 26
#define VIRTIO_ID_PMEM 27

/* ---- virtio-mmio registers (section 4.2.2) */
#define VIRTIO_MMIO_MAGIC_VALUE 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_VENDOR_ID 0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0fc
#define VIRTIO_MMIO_CONFIG 0x100

#define VIRTIO_MMIO_MAGIC 0x74726976 /* "virt" */

/* ---- device status bits (section 2.1) */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_DEVICE_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

/* ---- InterruptStatus bits */
#define VIRTIO_INT_USED_RING 1
#define VIRTIO_INT_CONFIG 2

/* ---- feature bits (section 6) */
#define VIRTIO_F_INDIRECT_DESC (1ull << 28)
#define VIRTIO_F_EVENT_IDX (1ull << 29)
#define VIRTIO_F_VERSION_1 (1ull << 32)

/* ---- descriptor flags */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

/* Largest queue this driver sets up (a queue uses min(asked, QueueNumMax)). */
#define VIRTQ_MAX 64

/* One virtio-mmio device, found on the command line. */
struct virtio_dev {
	uint64_t base;      /* MMIO window */
	uint64_t size;      /* its length, from the command line */
	uint32_t irq;       /* IOAPIC pin (GSI) */
	uint32_t device_id; /* VIRTIO_ID_* */
	uint64_t device_features; /* what the device offers */
	uint64_t features;  /* what was negotiated (set by virtio_init) */
	uint8_t vector;     /* set by virtio_irq_route, 0 before */
};

/* ---- split virtqueue (section 2.7), laid out as the spec aligns it */
struct virtq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct virtq_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[VIRTQ_MAX];
	uint16_t used_event;
};

struct virtq_used_elem {
	uint32_t id;
	uint32_t len;
};

struct virtq_used {
	uint16_t flags;
	uint16_t idx;
	struct virtq_used_elem ring[VIRTQ_MAX];
	uint16_t avail_event;
};

/*
 * One queue: the rings (device-visible) and the driver's bookkeeping.
 * Declare it static (BSS): guest-physical == virtual here, so the rings'
 * addresses go to the device as they are. It keeps a pointer to its
 * struct virtio_dev, which must outlive its use.
 */
struct virtq {
	struct virtq_desc desc[VIRTQ_MAX] __attribute__((aligned(16)));
	struct virtq_avail avail __attribute__((aligned(2)));
	struct virtq_used used __attribute__((aligned(4)));
	struct virtio_dev *dev;
	uint16_t index;     /* queue index, as written to QueueSel/QueueNotify */
	uint16_t size;      /* QueueNum */
	uint16_t free_head; /* first free descriptor */
	uint16_t num_free;
	uint16_t avail_idx; /* the driver's copy of avail.idx */
	uint16_t last_used; /* used.idx the driver has consumed up to */
};

/* One buffer of a descriptor chain. */
struct virtq_buf {
	uint64_t addr;  /* guest-physical (== virtual) */
	uint32_t len;
	int writable;   /* device-writable (VIRTQ_DESC_F_WRITE) */
};

/* ---- discovery */

/*
 * The i-th `virtio_mmio.device=<size>@<base>:<irq>` entry of the command
 * line (0-based, in the VMM's attach order). Returns 0 past the end.
 * Fills base, size and irq only; the device is not touched.
 */
int virtio_cmdline_entry(unsigned i, struct virtio_dev *dev);

/*
 * The nth (0-based) device with this DeviceID, checking MagicValue and
 * Version (2) of every window it reads. Fails if there is none.
 */
const char *virtio_find(uint32_t device_id, unsigned nth, struct virtio_dev *dev);

/* ---- register access */
static inline uint32_t virtio_rd(const struct virtio_dev *d, uint32_t reg)
{
	return rd32(d->base + reg);
}

static inline void virtio_wr(const struct virtio_dev *d, uint32_t reg, uint32_t v)
{
	wr32(d->base + reg, v);
}

/*
 * Device configuration space (offset from 0x100), read consistently:
 * retried while ConfigGeneration changes. `width` is 1, 2, 4 or 8.
 */
uint64_t virtio_config_read(const struct virtio_dev *d, uint32_t offset, unsigned width);

/* ---- initialisation (section 3.1.1), in Linux's order */

/*
 * Reset (Status 0, read back 0), ACKNOWLEDGE, DRIVER, read DeviceFeatures,
 * write DriverFeatures = VIRTIO_F_VERSION_1 | (wanted & offered), then
 * FEATURES_OK and read it back. Fails when the device lacks VERSION_1 or
 * refuses FEATURES_OK. dev->features holds the result. EVENT_IDX and
 * INDIRECT_DESC are never accepted: struct virtq implements neither.
 */
const char *virtio_init(struct virtio_dev *d, uint64_t wanted);

/*
 * Sets up queue `index` with min(size, QueueNumMax, VIRTQ_MAX) entries,
 * rounded down to a power of two: QueueSel, QueueReady must read 0,
 * QueueNumMax, QueueNum, the three ring addresses, QueueReady = 1.
 * Call between virtio_init and virtio_driver_ok.
 */
const char *virtq_setup(struct virtio_dev *d, struct virtq *q, uint16_t index, uint16_t size);

/* Sets DRIVER_OK and checks the device kept it (no DEVICE_NEEDS_RESET). */
const char *virtio_driver_ok(struct virtio_dev *d);

/* Writes Status 0 (reset) and waits for it to read back 0. */
const char *virtio_reset(struct virtio_dev *d);

/* ---- virtqueue use */

/*
 * Puts n buffers in one chain (NEXT between them, WRITE on the writable
 * ones) and publishes its head in the avail ring, with the barriers the
 * spec asks for. Does not notify. *head gets the chain's head id.
 */
const char *virtq_add(struct virtq *q, const struct virtq_buf *bufs, unsigned n, uint16_t *head);

/* QueueNotify: writes the queue index (after a full barrier). */
void virtq_kick(struct virtq *q);

/*
 * Takes one used element if there is one: returns 1 with *id and *len
 * set and the chain's descriptors freed, or 0 when the used ring is empty.
 */
int virtq_get_used(struct virtq *q, uint16_t *id, uint32_t *len);

/*
 * Polls the used ring until an element arrives, for at most about a
 * second (and a bounded number of guest instructions). Fails with
 * "timed out waiting for the used ring" rather than hang.
 */
const char *virtq_wait_used(struct virtq *q, uint16_t *id, uint32_t *len);

/*
 * virtq_add + virtq_kick + virtq_wait_used, checking the used id is the
 * chain's head. *len gets the used length (bytes the device wrote).
 */
const char *virtq_transfer(struct virtq *q, const struct virtq_buf *bufs, unsigned n,
			   uint32_t *len);

/* ---- interrupts, checked without taking them */

/*
 * Routes the device's pin to the boot CPU without enabling interrupts:
 * software-enables the LAPIC (SVR bit 8, spurious vector 0xff) and
 * programs IOAPIC redirection entry `irq` (fixed, physical destination
 * APIC 0, edge, active high, unmasked) with a fresh vector, whose IRR
 * bit must still be clear. Each call takes a new vector, so a check can
 * run more than once per boot (the IRR is never cleared: interrupts stay
 * disabled, nothing is ever accepted). Call before virtio_driver_ok.
 */
const char *virtio_irq_route(struct virtio_dev *d);

/*
 * The interrupt path virtio_irq_route set up is still in place: the LAPIC
 * is software-enabled and the IOAPIC entry for the device's pin delivers
 * its vector, unmasked. After a snapshot restore this proves the
 * interrupt controllers' state came back with the VM.
 */
const char *virtio_irq_check_route(const struct virtio_dev *d);

/* The device's vector is pending in the LAPIC IRR. */
int virtio_irq_pending(const struct virtio_dev *d);

/*
 * After the device used a buffer: polls (bounded) the LAPIC IRR for the
 * device's vector, then reads InterruptStatus, checks the used-ring bit,
 * and acknowledges what it read through InterruptACK. Fails with
 * "no interrupt in the LAPIC IRR" or a reason about InterruptStatus.
 */
const char *virtio_irq_wait(struct virtio_dev *d);

/*
 * Waits (up to about 15 s) for a configuration-change interrupt. A change
 * the host made before the call, whose interrupt went to the vector routed
 * before, counts (that vector pending in the IRR, or InterruptStatus);
 * used-buffer interrupts meanwhile (a statistics buffer handed back) are
 * acknowledged and the wait goes on on a fresh vector.
 */
const char *virtio_wait_config(struct virtio_dev *d);

/* Reads InterruptStatus and acknowledges those bits; returns them. */
uint32_t virtio_irq_ack(struct virtio_dev *d);

/* ---- reasons with a number in them */

/* Formats "<msg> <hex value>" into a static buffer and returns it. */
const char *virtio_why(const char *msg, uint64_t value);

#endif
