/*
 * The probe guest's virtio-mmio driver; see virtio.h for the interface.
 */
#include "virtio.h"

/* Accesses a field the device may read or write behind the compiler's back. */
#define VOLATILE(x) (*(volatile __typeof__(x) *)&(x))

/* ---- bounded waits */

/*
 * A wait gives up after 2^33 TSC cycles (3.3 s at 2.6 GHz): long enough
 * for a VMM thread that a loaded host (a CI run building beside the
 * tests) leaves off its CPU for a second, which 2^30 cycles were not.
 * The spin cap is only a backstop for a TSC that does not advance:
 * natively a poll with `pause` takes 10 to 150 cycles, so the TSC bound
 * comes first. Emulated (KVM's instruction emulator on a PVM host), a
 * poll costs about 17 us, so a wait that never ends takes 3.3 s and
 * about 2.4M instructions; a device that answers is seen within a few
 * polls.
 */
#define WAIT_TSC (1ull << 33)
#define WAIT_SPINS (1u << 28)

struct wait {
	uint64_t t0;
	uint32_t spins;
};

static void wait_start(struct wait *w)
{
	w->t0 = rdtsc();
	w->spins = 0;
}

static int wait_expired(struct wait *w)
{
	__asm__ volatile("pause" ::: "memory");
	if (++w->spins >= WAIT_SPINS)
		return 1;
	return (w->spins & 255) == 0 && rdtsc() - w->t0 > WAIT_TSC;
}

/* ---- reasons */

const char *virtio_why(const char *msg, uint64_t value)
{
	static char buf[96];
	size_t n = 0;
	while (*msg && n < sizeof(buf) - 20)
		buf[n++] = *msg++;
	buf[n++] = ' ';
	buf[n++] = '0';
	buf[n++] = 'x';
	int shift = 60;
	while (shift > 0 && !((value >> shift) & 0xf))
		shift -= 4;
	for (; shift >= 0; shift -= 4)
		buf[n++] = "0123456789abcdef"[(value >> shift) & 0xf];
	buf[n] = 0;
	return buf;
}

/* ---- discovery: virtio_mmio.device=<size>[KMG]@<base>:<irq>[:<id>] */

/* Parses a number as Linux's memparse/simple_strtoull with base 0 do. */
static const char *parse_num(const char *p, uint64_t *v)
{
	uint64_t base = 10, n = 0;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		base = 16;
		p += 2;
	}
	const char *start = p;
	for (;; p++) {
		uint64_t d;
		if (*p >= '0' && *p <= '9')
			d = (uint64_t)(*p - '0');
		else if (base == 16 && *p >= 'a' && *p <= 'f')
			d = (uint64_t)(*p - 'a' + 10);
		else if (base == 16 && *p >= 'A' && *p <= 'F')
			d = (uint64_t)(*p - 'A' + 10);
		else
			break;
		n = n * base + d;
	}
	*v = n;
	return p == start ? NULL : p;
}

static int parse_entry(const char *p, struct virtio_dev *d)
{
	uint64_t size, base, irq;
	if (!(p = parse_num(p, &size)))
		return 0;
	switch (*p) {
	case 'G': case 'g': size <<= 10; /* fall through */
	case 'M': case 'm': size <<= 10; /* fall through */
	case 'K': case 'k': size <<= 10; p++; break;
	default: break;
	}
	if (*p++ != '@' || !(p = parse_num(p, &base)) || *p++ != ':' ||
	    !(p = parse_num(p, &irq)))
		return 0;
	if (*p != ' ' && *p != ':' && *p != 0)
		return 0;
	memset(d, 0, sizeof(*d));
	d->base = base;
	d->size = size;
	d->irq = (uint32_t)irq;
	return 1;
}

int virtio_cmdline_entry(unsigned i, struct virtio_dev *d)
{
	static const char key[] = "virtio_mmio.device=";
	const char *p = cmdline();
	while (*p) {
		while (*p == ' ')
			p++;
		if (starts_with(p, key) && parse_entry(p + sizeof(key) - 1, d) && i-- == 0)
			return 1;
		while (*p && *p != ' ')
			p++;
	}
	return 0;
}

const char *virtio_find(uint32_t device_id, unsigned nth, struct virtio_dev *d)
{
	struct virtio_dev e;
	for (unsigned i = 0; virtio_cmdline_entry(i, &e); i++) {
		if (e.size < 0x200)
			return virtio_why("virtio_mmio.device= window too small at", e.base);
		uint32_t magic = rd32(e.base + VIRTIO_MMIO_MAGIC_VALUE);
		if (magic != VIRTIO_MMIO_MAGIC)
			return virtio_why("bad MagicValue at", e.base);
		uint32_t version = rd32(e.base + VIRTIO_MMIO_VERSION);
		if (version != 2)
			return virtio_why("Version is not 2:", version);
		e.device_id = rd32(e.base + VIRTIO_MMIO_DEVICE_ID);
		/* DeviceID 0 is a placeholder window: skip it, as Linux does. */
		if (e.device_id == device_id && nth-- == 0) {
			*d = e;
			return NULL;
		}
	}
	return virtio_why("no virtio-mmio device with DeviceID", device_id);
}

uint64_t virtio_config_read(const struct virtio_dev *d, uint32_t offset, unsigned width)
{
	uint64_t a = d->base + VIRTIO_MMIO_CONFIG + offset, v;
	uint32_t gen;
	int tries = 0;
	do {
		gen = virtio_rd(d, VIRTIO_MMIO_CONFIG_GENERATION);
		switch (width) {
		case 1: v = rd8(a); break;
		case 2: v = rd16(a); break;
		case 4: v = rd32(a); break;
		default: v = rd32(a) | ((uint64_t)rd32(a + 4) << 32); break;
		}
	} while (virtio_rd(d, VIRTIO_MMIO_CONFIG_GENERATION) != gen && ++tries < 100);
	return v;
}

/* ---- status */

static void add_status(struct virtio_dev *d, uint32_t bits)
{
	virtio_wr(d, VIRTIO_MMIO_STATUS, virtio_rd(d, VIRTIO_MMIO_STATUS) | bits);
}

/* Marks the driver as given up (as Linux does on a failed probe). */
static const char *failed(struct virtio_dev *d, const char *why)
{
	add_status(d, VIRTIO_STATUS_FAILED);
	return why;
}

const char *virtio_reset(struct virtio_dev *d)
{
	virtio_wr(d, VIRTIO_MMIO_STATUS, 0);
	struct wait w;
	wait_start(&w);
	uint32_t s;
	while ((s = virtio_rd(d, VIRTIO_MMIO_STATUS)) != 0)
		if (wait_expired(&w))
			return virtio_why("Status did not read 0 after reset:", s);
	return NULL;
}

const char *virtio_init(struct virtio_dev *d, uint64_t wanted)
{
	const char *err = virtio_reset(d);
	if (err)
		return err;
	d->features = 0;
	add_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
	add_status(d, VIRTIO_STATUS_DRIVER);

	virtio_wr(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	uint64_t offered = (uint64_t)virtio_rd(d, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
	virtio_wr(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	offered |= virtio_rd(d, VIRTIO_MMIO_DEVICE_FEATURES);
	d->device_features = offered;
	if (!(offered & VIRTIO_F_VERSION_1))
		return failed(d, "device does not offer VIRTIO_F_VERSION_1");

	/* The rings here implement neither event indices nor indirect tables. */
	uint64_t accept = VIRTIO_F_VERSION_1 |
			  (wanted & offered & ~(VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC));
	virtio_wr(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	virtio_wr(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(accept >> 32));
	virtio_wr(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	virtio_wr(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)accept);

	add_status(d, VIRTIO_STATUS_FEATURES_OK);
	uint32_t s = virtio_rd(d, VIRTIO_MMIO_STATUS);
	if (!(s & VIRTIO_STATUS_FEATURES_OK))
		return failed(d, virtio_why("device cleared FEATURES_OK; Status", s));
	d->features = accept;
	return NULL;
}

const char *virtq_setup(struct virtio_dev *d, struct virtq *q, uint16_t index, uint16_t size)
{
	virtio_wr(d, VIRTIO_MMIO_QUEUE_SEL, index);
	if (virtio_rd(d, VIRTIO_MMIO_QUEUE_READY))
		return failed(d, virtio_why("QueueReady already set for queue", index));
	uint32_t max = virtio_rd(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
	if (max == 0)
		return failed(d, virtio_why("QueueNumMax is 0 for queue", index));
	uint32_t n = size;
	if (n > max)
		n = max;
	if (n > VIRTQ_MAX)
		n = VIRTQ_MAX;
	while (n & (n - 1))
		n &= n - 1; /* round down to a power of two */
	if (n == 0)
		return failed(d, "queue size 0 asked");

	memset(q, 0, sizeof(*q));
	q->dev = d;
	q->index = index;
	q->size = (uint16_t)n;
	q->num_free = (uint16_t)n;
	for (uint32_t i = 0; i + 1 < n; i++)
		q->desc[i].next = (uint16_t)(i + 1);

	uint64_t desc = (uint64_t)(uintptr_t)q->desc;
	uint64_t avail = (uint64_t)(uintptr_t)&q->avail;
	uint64_t used = (uint64_t)(uintptr_t)&q->used;
	virtio_wr(d, VIRTIO_MMIO_QUEUE_NUM, n);
	virtio_wr(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)desc);
	virtio_wr(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(desc >> 32));
	virtio_wr(d, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)avail);
	virtio_wr(d, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (uint32_t)(avail >> 32));
	virtio_wr(d, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)used);
	virtio_wr(d, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (uint32_t)(used >> 32));
	virtio_wr(d, VIRTIO_MMIO_QUEUE_READY, 1);
	if (virtio_rd(d, VIRTIO_MMIO_QUEUE_READY) != 1)
		return failed(d, virtio_why("QueueReady does not read back 1 for queue", index));
	return NULL;
}

const char *virtio_driver_ok(struct virtio_dev *d)
{
	add_status(d, VIRTIO_STATUS_DRIVER_OK);
	uint32_t s = virtio_rd(d, VIRTIO_MMIO_STATUS);
	if (s & VIRTIO_STATUS_DEVICE_NEEDS_RESET)
		return failed(d, virtio_why("DEVICE_NEEDS_RESET after DRIVER_OK; Status", s));
	if (!(s & VIRTIO_STATUS_DRIVER_OK))
		return failed(d, virtio_why("DRIVER_OK did not stick; Status", s));
	return NULL;
}

/* ---- virtqueues */

const char *virtq_add(struct virtq *q, const struct virtq_buf *bufs, unsigned n, uint16_t *head)
{
	if (n == 0)
		return "empty descriptor chain";
	if (n > q->num_free)
		return "virtqueue full";
	uint16_t h = q->free_head, i = h, last = h;
	for (unsigned k = 0; k < n; k++) {
		struct virtq_desc *desc = &q->desc[i];
		desc->addr = bufs[k].addr;
		desc->len = bufs[k].len;
		desc->flags = (uint16_t)((bufs[k].writable ? VIRTQ_DESC_F_WRITE : 0) |
					 (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
		last = i;
		i = desc->next; /* the free list links through `next` */
	}
	q->free_head = q->desc[last].next;
	q->num_free = (uint16_t)(q->num_free - n);

	/* The descriptors are written before the ring entry, the entry before idx. */
	q->avail.ring[q->avail_idx & (q->size - 1)] = h;
	mb();
	q->avail_idx++;
	VOLATILE(q->avail.idx) = q->avail_idx;
	mb();
	*head = h;
	return NULL;
}

void virtq_kick(struct virtq *q)
{
	/* avail.idx is visible before the device's flags are read. */
	mb();
	/* Without EVENT_IDX, used.flags bit 0 (NO_NOTIFY) lets the driver skip. */
	if (VOLATILE(q->used.flags) & 1)
		return;
	virtio_wr(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
}

/* Returns 1 with an element, 0 when there is none, -1 on a bad used id. */
int virtq_get_used(struct virtq *q, uint16_t *id, uint32_t *len)
{
	if (VOLATILE(q->used.idx) == q->last_used)
		return 0;
	/* Read the element only after seeing idx move. */
	mb();
	struct virtq_used_elem *e = &q->used.ring[q->last_used & (q->size - 1)];
	uint32_t eid = VOLATILE(e->id);
	*len = VOLATILE(e->len);
	q->last_used++;
	if (eid >= q->size)
		return -1;
	*id = (uint16_t)eid;
	/* Give the chain's descriptors back to the free list. */
	uint16_t i = (uint16_t)eid, count = 1;
	while ((q->desc[i].flags & VIRTQ_DESC_F_NEXT) && count < q->size) {
		i = q->desc[i].next;
		count++;
	}
	q->desc[i].next = q->free_head;
	q->free_head = (uint16_t)eid;
	q->num_free = (uint16_t)(q->num_free + count);
	return 1;
}

const char *virtq_wait_used(struct virtq *q, uint16_t *id, uint32_t *len)
{
	struct wait w;
	wait_start(&w);
	for (;;) {
		int r = virtq_get_used(q, id, len);
		if (r > 0)
			return NULL;
		if (r < 0)
			return "used ring names a descriptor beyond the queue";
		if (wait_expired(&w))
			return "timed out waiting for the used ring";
	}
}

const char *virtq_transfer(struct virtq *q, const struct virtq_buf *bufs, unsigned n,
			   uint32_t *len)
{
	uint16_t head, id;
	const char *err = virtq_add(q, bufs, n, &head);
	if (err)
		return err;
	virtq_kick(q);
	if ((err = virtq_wait_used(q, &id, len)))
		return err;
	if (id != head)
		return virtio_why("used ring returned a chain that was not posted:", id);
	return NULL;
}

/* ---- interrupts: LAPIC and IOAPIC, with interrupts left disabled */

#define LAPIC_BASE 0xfee00000ull
#define LAPIC_ID 0x20
#define LAPIC_SVR 0xf0
#define LAPIC_SVR_ENABLE 0x100
#define LAPIC_SPURIOUS_VECTOR 0xff
#define LAPIC_IRR 0x200
#define IOAPIC_BASE 0xfec00000ull
#define IOAPIC_REGSEL 0x00
#define IOAPIC_WIN 0x10
#define IOAPIC_VER 0x01
#define IOAPIC_REDTBL(pin) (0x10 + 2 * (pin))
#define IOAPIC_MASKED (1u << 16)
/* Vectors handed out to devices, one per virtio_irq_route call. */
#define VECTOR_FIRST 0x40
#define VECTOR_LAST 0xef

static uint32_t ioapic_read(uint32_t reg)
{
	wr32(IOAPIC_BASE + IOAPIC_REGSEL, reg);
	return rd32(IOAPIC_BASE + IOAPIC_WIN);
}

static void ioapic_write(uint32_t reg, uint32_t v)
{
	wr32(IOAPIC_BASE + IOAPIC_REGSEL, reg);
	wr32(IOAPIC_BASE + IOAPIC_WIN, v);
}

static int irr_set(uint32_t vector)
{
	return (rd32(LAPIC_BASE + LAPIC_IRR + 0x10 * (vector / 32)) >> (vector % 32)) & 1;
}

const char *virtio_irq_route(struct virtio_dev *d)
{
	static uint32_t next_vector = VECTOR_FIRST;
	uint32_t pins = ((ioapic_read(IOAPIC_VER) >> 16) & 0xff) + 1;
	if (d->irq >= pins)
		return virtio_why("irq beyond the IOAPIC's pins:", d->irq);

	uint32_t svr = rd32(LAPIC_BASE + LAPIC_SVR);
	wr32(LAPIC_BASE + LAPIC_SVR, (svr & ~0xffu) | LAPIC_SVR_ENABLE | LAPIC_SPURIOUS_VECTOR);

	/* A vector whose IRR bit is already set could not prove anything. */
	while (next_vector <= VECTOR_LAST && irr_set(next_vector))
		next_vector++;
	if (next_vector > VECTOR_LAST)
		return "no free interrupt vector left";
	d->vector = (uint8_t)next_vector++;

	uint32_t apic_id = rd32(LAPIC_BASE + LAPIC_ID) >> 24;
	/* Fixed delivery, physical destination, active high, edge, unmasked. */
	ioapic_write(IOAPIC_REDTBL(d->irq), IOAPIC_MASKED);
	ioapic_write(IOAPIC_REDTBL(d->irq) + 1, apic_id << 24);
	ioapic_write(IOAPIC_REDTBL(d->irq), d->vector);
	return NULL;
}

const char *virtio_irq_check_route(const struct virtio_dev *d)
{
	if (!d->vector)
		return "interrupt not routed (virtio_irq_route not called)";
	if (!(rd32(LAPIC_BASE + LAPIC_SVR) & LAPIC_SVR_ENABLE))
		return "the LAPIC is no longer software-enabled";
	uint32_t lo = ioapic_read(IOAPIC_REDTBL(d->irq));
	if (lo & IOAPIC_MASKED)
		return virtio_why("the IOAPIC entry is masked for pin", d->irq);
	if ((lo & 0xff) != d->vector)
		return virtio_why("the IOAPIC entry's vector changed to", lo & 0xff);
	return NULL;
}

int virtio_irq_pending(const struct virtio_dev *d)
{
	return d->vector && irr_set(d->vector);
}

uint32_t virtio_irq_ack(struct virtio_dev *d)
{
	uint32_t isr = virtio_rd(d, VIRTIO_MMIO_INTERRUPT_STATUS);
	if (isr)
		virtio_wr(d, VIRTIO_MMIO_INTERRUPT_ACK, isr);
	return isr;
}

/*
 * Waits (up to about 15 s) for a configuration-change interrupt on a
 * fresh vector (see virtio.h).
 */
const char *virtio_wait_config(struct virtio_dev *d)
{
	const char *err;
	uint64_t t0 = rdtsc();
	uint32_t isr = 0;
	/*
	 * The host may have changed the configuration before this check
	 * began: its interrupt then went to the vector routed before, which
	 * is pending in the IRR.
	 */
	if (virtio_irq_pending(d) && (virtio_irq_ack(d) & VIRTIO_INT_CONFIG))
		return NULL;
	while (!(isr & VIRTIO_INT_CONFIG)) {
		if ((err = virtio_irq_route(d)))
			return err;
		for (uint64_t spin = 1; !virtio_irq_pending(d); spin++) {
			__asm__ volatile("pause" ::: "memory");
			/* A change between the look above and the new route
			 * went to the old vector: InterruptStatus has it. */
			if ((spin & 1023) == 0 && (virtio_irq_ack(d) & VIRTIO_INT_CONFIG))
				return NULL;
			if (rdtsc() - t0 > (1ull << 35))
				return "no configuration-change interrupt in the LAPIC IRR";
		}
		isr = virtio_irq_ack(d);
		if (!(isr & (VIRTIO_INT_CONFIG | VIRTIO_INT_USED_RING)))
			return virtio_why("an interrupt with InterruptStatus", isr);
	}
	return NULL;
}

const char *virtio_irq_wait(struct virtio_dev *d)
{
	if (!d->vector)
		return "interrupt not routed (virtio_irq_route not called)";
	/* KVM may inject an irqfd from a worker, after the used ring moved. */
	struct wait w;
	wait_start(&w);
	while (!virtio_irq_pending(d))
		if (wait_expired(&w))
			return "no interrupt in the LAPIC IRR";
	uint32_t isr = virtio_irq_ack(d);
	if (!(isr & VIRTIO_INT_USED_RING))
		return virtio_why("InterruptStatus lacks the used-buffer bit:", isr);
	return NULL;
}
