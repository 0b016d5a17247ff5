/*
 * Check `net`: virtio-net (DeviceID 1, queues "receiveq" 0 and
 * "transmitq" 1), against a TAP device on the host.
 *
 * Every frame either way starts with the 12-byte virtio_net_hdr_v1
 * (with VERSION_1 the header always has num_buffers, spec section 5.1.6).
 *
 * The check negotiates MAC, MRG_RXBUF and the receive offloads
 * (GUEST_CSUM, GUEST_TSO4/6, which the device passes on to the TAP),
 * sends one broadcast frame of ethertype 0x88b5 (local experimental)
 * carrying "HUSK-PROBE-NET" from the device's MAC (header and frame in two descriptors), then posts
 * small receive buffers (32 bytes, so a frame of any useful size spans
 * several and num_buffers says how many), and waits, bounded, for a
 * frame of the same ethertype. Frames of other types (the host's own
 * traffic) are skipped and their buffers posted again. Prints
 * `PROBE net OK sent=1 got=<payload>`, the payload up to its first byte
 * outside '!'..'~' (at most 64 bytes).
 */
#include "virtio.h"

#define VIRTIO_NET_F_GUEST_CSUM (1ull << 1)
#define VIRTIO_NET_F_MAC (1ull << 5)
#define VIRTIO_NET_F_GUEST_TSO4 (1ull << 7)
#define VIRTIO_NET_F_GUEST_TSO6 (1ull << 8)
#define VIRTIO_NET_F_MRG_RXBUF (1ull << 15)
/* What the check accepts: the receive offloads too, so the device sets
 * them on the TAP (the test's frames carry none). */
#define NET_FEATURES (VIRTIO_NET_F_MAC | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_GUEST_CSUM | \
		      VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6)

#define NET_HDR 12
#define ETH_HDR 14
#define ETHERTYPE 0x88b5
#define PAYLOAD "HUSK-PROBE-NET"
#define RX_BUFS 16
#define RX_BUF_LEN 32
/* Bytes of one received frame kept (header and Ethernet header included). */
#define FRAME_MAX 256
/* Frames of other types skipped before giving up. */
#define MAX_SKIPPED 8
/* virtq_wait_used rounds (about 3.3 s each) for the first buffer of a frame. */
#define WAIT_ROUNDS 1

static struct virtq net_rxq, net_txq;
static uint8_t net_tx_hdr[NET_HDR];
static uint8_t net_tx_frame[ETH_HDR + sizeof(PAYLOAD) - 1];
static uint8_t net_rx_bufs[RX_BUFS][RX_BUF_LEN];
static uint8_t net_frame[FRAME_MAX];

static const char *post_rx(uint8_t *buf)
{
	struct virtq_buf b = {(uint64_t)(uintptr_t)buf, RX_BUF_LEN, 1};
	uint16_t head;
	return virtq_add(&net_rxq, &b, 1, &head);
}

/* Takes one used receive buffer, copies it to net_frame at *len, posts it again. */
static const char *take_rx(uint32_t *len, int rounds)
{
	uint16_t id;
	uint32_t n;
	const char *err = NULL;
	for (int i = 0; i < rounds; i++)
		if (!(err = virtq_wait_used(&net_rxq, &id, &n)))
			break;
	if (err)
		return err;
	uint8_t *buf = (uint8_t *)(uintptr_t)net_rxq.desc[id].addr;
	if (n > RX_BUF_LEN)
		return virtio_why("used length larger than the buffer:", n);
	for (uint32_t i = 0; i < n && *len < FRAME_MAX; i++)
		net_frame[(*len)++] = rd8((uint64_t)(uintptr_t)&buf[i]);
	if ((err = post_rx(buf)))
		return err;
	virtq_kick(&net_rxq);
	return NULL;
}

/* Receives one whole frame (all its merged buffers) into net_frame. */
static const char *receive(uint32_t *len)
{
	const char *err;
	*len = 0;
	if ((err = take_rx(len, WAIT_ROUNDS)))
		return err;
	if (*len < NET_HDR)
		return virtio_why("first buffer shorter than the header:", *len);
	uint32_t bufs = net_frame[10] | ((uint32_t)net_frame[11] << 8);
	if (bufs == 0 || bufs > RX_BUFS)
		return virtio_why("bad num_buffers", bufs);
	for (uint32_t i = 1; i < bufs; i++)
		if ((err = take_rx(len, 1)))
			return err;
	return NULL;
}

void check_net(const struct check *c)
{
	struct virtio_dev dev;
	const char *err;
	uint32_t len = 0;

	if ((err = virtio_find(VIRTIO_ID_NET, 0, &dev)) ||
	    (err = virtio_init(&dev, NET_FEATURES)) ||
	    (err = virtq_setup(&dev, &net_rxq, 0, RX_BUFS)) ||
	    (err = virtq_setup(&dev, &net_txq, 1, 8)) ||
	    (err = virtio_driver_ok(&dev))) {
		fail(c, err);
		return;
	}
	if (!(dev.features & VIRTIO_NET_F_MRG_RXBUF)) {
		fail(c, "device does not offer VIRTIO_NET_F_MRG_RXBUF");
		return;
	}

	/* Broadcast from our MAC (the device's, or a local one). */
	uint8_t *f = net_tx_frame;
	for (int i = 0; i < 6; i++) {
		f[i] = 0xff;
		f[6 + i] = (dev.features & VIRTIO_NET_F_MAC)
				   ? (uint8_t)virtio_config_read(&dev, (uint32_t)i, 1)
				   : (uint8_t)(i == 0 ? 0x02 : i);
	}
	f[12] = ETHERTYPE >> 8;
	f[13] = ETHERTYPE & 0xff;
	memcpy(f + ETH_HDR, PAYLOAD, sizeof(PAYLOAD) - 1);
	memset(net_tx_hdr, 0, sizeof(net_tx_hdr));
	struct virtq_buf tx[2] = {
		{(uint64_t)(uintptr_t)net_tx_hdr, NET_HDR, 0},
		{(uint64_t)(uintptr_t)net_tx_frame, sizeof(net_tx_frame), 0},
	};
	if ((err = virtq_transfer(&net_txq, tx, 2, &len))) {
		fail(c, err);
		return;
	}

	for (int i = 0; i < RX_BUFS; i++)
		if ((err = post_rx(net_rx_bufs[i]))) {
			fail(c, err);
			return;
		}
	virtq_kick(&net_rxq);

	for (int skipped = 0;; skipped++) {
		if ((err = receive(&len))) {
			fail(c, err);
			return;
		}
		if (len >= NET_HDR + ETH_HDR && net_frame[NET_HDR + 12] == (ETHERTYPE >> 8) &&
		    net_frame[NET_HDR + 13] == (ETHERTYPE & 0xff))
			break;
		if (skipped == MAX_SKIPPED) {
			fail(c, "only frames of other ethertypes arrived");
			return;
		}
	}
	ok(c);
	puts_serial(" sent=1 got=");
	for (uint32_t i = NET_HDR + ETH_HDR; i < len && i < NET_HDR + ETH_HDR + 64; i++) {
		uint8_t b = net_frame[i];
		if (b < '!' || b > '~')
			break;
		putc_serial((char)b);
	}
	putc_serial('\n');
	virtio_reset(&dev);
}
