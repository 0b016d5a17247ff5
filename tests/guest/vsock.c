/*
 * Check `vsock`: virtio-vsock (DeviceID 19; queues rx 0, tx 1, event 2;
 * configuration space: le64 guest_cid), driven through virtio.h.
 *
 * 1. Listens on port 1234: answers the host's REQUEST with RESPONSE
 *    (any REQUEST for another port gets RST), reads one line of RW data
 *    (at most 64 bytes), echoes it back, and shuts the stream down.
 * 2. Connects to host port 5678 (REQUEST, waits for RESPONSE), sends
 *    `HUSK-PROBE-VSOCK`, and shuts that stream down.
 * 3. Leaves the device set up for `vsock-reset` (on a failure it resets
 *    it instead, which closes the host's end of any open stream) and
 *    prints `PROBE vsock OK echoed=<n> sent=16`.
 *
 * Check `vsock-reset` goes on with the device `vsock` left set up, without
 * resetting it, as Linux's driver does across a snapshot restore: the VMM
 * of the restored VM drops every connection and says so with a
 * TRANSPORT_RESET event (le32 id 0) in the event queue's buffer. The check
 * waits for that event (about 2 s at most: it is there before the restored
 * guest runs), posts the event buffer again, rereads guest_cid, and then
 * does steps 1 and 2 again on the restored queues, from guest port 40001
 * and sending `HUSK-AFTER-RESTORE`. Prints `PROBE vsock-reset OK
 * echoed=<n> sent=18`; without an earlier successful `vsock` in this boot
 * it fails with "vsock not set up".
 *
 * Everything is bounded: four 256-byte RX buffers, a 4 KiB receive
 * credit (the data is consumed as it comes), the host's credit respected
 * (asked for with CREDIT_REQUEST when short), and every wait a few
 * virtq_wait_used rounds. The host must connect early (right after
 * InstanceStart): the device holds its REQUEST until RX buffers exist.
 */
#include "virtio.h"

#define VSOCK_HDR_LEN 44
#define VSOCK_HOST_CID 2
#define VSOCK_TYPE_STREAM 1
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define SHUTDOWN_RCV_SEND 3

#define LISTEN_PORT 1234
#define HOST_PORT 5678
#define GUEST_PORT 40000 /* the guest's end of the stream it opens */
/* The same after a transport reset: a port the host never saw before. */
#define GUEST_PORT_AFTER_RESET 40001
#define RX_BUFS 4
#define RX_BUF_SIZE 256
#define GUEST_BUF_ALLOC 4096
#define LINE_MAX 64
/* virtq_wait_used rounds (about 3.3 s each) before a wait gives up. */
#define WAIT_ROUNDS 2
/* Packets for other streams a wait skips before it gives up. */
#define MAX_SKIPPED 16
/* virtq_wait_used rounds vsock-reset waits for the event. */
#define EVENT_ROUNDS 1
#define VSOCK_EVENT_TRANSPORT_RESET 0
/* The event buffer's contents before the device writes it: no valid id. */
#define EVENT_UNSET 0xff

/* virtio_vsock_hdr: naturally aligned fields, 44 bytes on the wire. */
struct vsock_hdr {
	uint64_t src_cid;
	uint64_t dst_cid;
	uint32_t src_port;
	uint32_t dst_port;
	uint32_t len;
	uint16_t type;
	uint16_t op;
	uint32_t flags;
	uint32_t buf_alloc;
	uint32_t fwd_cnt;
};

/* One stream, and the credit of both sides. */
struct stream {
	uint32_t local, peer;   /* guest port, host port */
	uint32_t fwd_cnt;       /* bytes the guest consumed */
	uint32_t tx_cnt;        /* bytes sent to the host */
	uint32_t peer_buf_alloc, peer_fwd_cnt;
};

/* The device, live from a successful `vsock` on (for `vsock-reset`). */
static struct virtio_dev vsock_dev;
static int vsock_live;
static struct virtq vq_rx, vq_tx, vq_ev;
static uint8_t rx_buf[RX_BUFS][RX_BUF_SIZE] __attribute__((aligned(8)));
static uint8_t ev_buf[8] __attribute__((aligned(8)));
static uint8_t rx_of_head[VIRTQ_MAX];
static struct vsock_hdr tx_hdr;
static uint64_t guest_cid;

/* The packet last received. */
static struct vsock_hdr in_hdr;
static uint8_t in_data[RX_BUF_SIZE];
static uint32_t in_len;

static const char *post_rx(unsigned i)
{
	struct virtq_buf b = {(uint64_t)(uintptr_t)rx_buf[i], RX_BUF_SIZE, 1};
	uint16_t head;
	const char *err = virtq_add(&vq_rx, &b, 1, &head);
	if (!err)
		rx_of_head[head] = (uint8_t)i;
	return err;
}

/* Gives the event buffer to the device, filled so a stale id shows. */
static const char *post_event(void)
{
	struct virtq_buf b = {(uint64_t)(uintptr_t)ev_buf, sizeof(ev_buf), 1};
	uint16_t head;
	for (unsigned i = 0; i < sizeof(ev_buf); i++)
		wr8((uint64_t)(uintptr_t)&ev_buf[i], EVENT_UNSET);
	return virtq_add(&vq_ev, &b, 1, &head);
}

static const char *setup(struct virtio_dev *d)
{
	const char *err;
	if ((err = virtio_find(VIRTIO_ID_VSOCK, 0, d)) ||
	    (err = virtio_init(d, 0)) ||
	    (err = virtq_setup(d, &vq_rx, 0, 8)) ||
	    (err = virtq_setup(d, &vq_tx, 1, 8)) ||
	    (err = virtq_setup(d, &vq_ev, 2, 2)) ||
	    (err = virtio_driver_ok(d)))
		return err;
	guest_cid = virtio_config_read(d, 0, 8);
	if (guest_cid < 3)
		return virtio_why("guest_cid below 3:", guest_cid);
	for (unsigned i = 0; i < RX_BUFS; i++)
		if ((err = post_rx(i)))
			return err;
	if ((err = post_event()))
		return err;
	virtq_kick(&vq_rx);
	virtq_kick(&vq_ev);
	return NULL;
}

/* Waits for one RX packet, copies it out, and gives the buffer back. */
static const char *recv_pkt(void)
{
	uint16_t id;
	uint32_t len;
	const char *err = NULL;
	for (int r = 0; r < WAIT_ROUNDS; r++)
		if (!(err = virtq_wait_used(&vq_rx, &id, &len)))
			break;
	if (err)
		return err;
	unsigned i = rx_of_head[id];
	if (len < VSOCK_HDR_LEN || len > RX_BUF_SIZE)
		return virtio_why("RX used length out of range:", len);
	memcpy(&in_hdr, rx_buf[i], VSOCK_HDR_LEN);
	in_len = in_hdr.len;
	if (in_len > len - VSOCK_HDR_LEN)
		return virtio_why("RX packet longer than its used length:", in_len);
	memcpy(in_data, rx_buf[i] + VSOCK_HDR_LEN, in_len);
	if ((err = post_rx(i)))
		return err;
	virtq_kick(&vq_rx);
	return NULL;
}

static const char *send_pkt(struct stream *s, uint16_t op, uint32_t flags,
			    const void *data, uint32_t len)
{
	tx_hdr.src_cid = guest_cid;
	tx_hdr.dst_cid = VSOCK_HOST_CID;
	tx_hdr.src_port = s->local;
	tx_hdr.dst_port = s->peer;
	tx_hdr.len = len;
	tx_hdr.type = VSOCK_TYPE_STREAM;
	tx_hdr.op = op;
	tx_hdr.flags = flags;
	tx_hdr.buf_alloc = GUEST_BUF_ALLOC;
	tx_hdr.fwd_cnt = s->fwd_cnt;
	struct virtq_buf b[2] = {
		{(uint64_t)(uintptr_t)&tx_hdr, VSOCK_HDR_LEN, 0},
		{(uint64_t)(uintptr_t)data, len, 0},
	};
	uint32_t used;
	const char *err = virtq_transfer(&vq_tx, b, len ? 2 : 1, &used);
	if (!err && op == OP_RW)
		s->tx_cnt += len;
	return err;
}

static int from_host(void)
{
	return in_hdr.src_cid == VSOCK_HOST_CID && in_hdr.dst_cid == guest_cid &&
	       in_hdr.type == VSOCK_TYPE_STREAM;
}

/* Refuses a REQUEST that is not for the stream being waited on. */
static const char *refuse(void)
{
	struct stream o = {in_hdr.dst_port, in_hdr.src_port, 0, 0, 0, 0};
	return send_pkt(&o, OP_RST, 0, NULL, 0);
}

/* Receives until a packet for `s` arrives, and takes its credit. */
static const char *next_for(struct stream *s)
{
	const char *err;
	for (int k = 0; k < MAX_SKIPPED; k++) {
		if ((err = recv_pkt()))
			return err;
		if (!from_host())
			continue;
		if (in_hdr.src_port == s->peer && in_hdr.dst_port == s->local) {
			s->peer_buf_alloc = in_hdr.buf_alloc;
			s->peer_fwd_cnt = in_hdr.fwd_cnt;
			return NULL;
		}
		if (in_hdr.op == OP_REQUEST && (err = refuse()))
			return err;
	}
	return "too many packets for other streams";
}

/* Waits for the host's REQUEST to s->local and answers it. */
static const char *accept_stream(struct stream *s)
{
	const char *err;
	for (int k = 0; k < MAX_SKIPPED; k++) {
		if ((err = recv_pkt()))
			return err;
		if (!from_host() || in_hdr.op != OP_REQUEST)
			continue;
		if (in_hdr.dst_port != s->local) {
			if ((err = refuse()))
				return err;
			continue;
		}
		s->peer = in_hdr.src_port;
		s->peer_buf_alloc = in_hdr.buf_alloc;
		s->peer_fwd_cnt = in_hdr.fwd_cnt;
		return send_pkt(s, OP_RESPONSE, 0, NULL, 0);
	}
	return "no REQUEST for port 1234";
}

/* Reads RW data up to and including a newline. */
static const char *read_line(struct stream *s, uint8_t *line, uint32_t *n)
{
	const char *err;
	for (int k = 0; k < MAX_SKIPPED; k++) {
		if ((err = next_for(s)))
			return err;
		if (in_hdr.op == OP_RST || in_hdr.op == OP_SHUTDOWN)
			return "the host closed the stream before a whole line";
		if (in_hdr.op == OP_CREDIT_REQUEST) {
			if ((err = send_pkt(s, OP_CREDIT_UPDATE, 0, NULL, 0)))
				return err;
			continue;
		}
		if (in_hdr.op != OP_RW)
			continue;
		s->fwd_cnt += in_len;
		for (uint32_t i = 0; i < in_len; i++) {
			if (*n >= LINE_MAX)
				return "line longer than 64 bytes";
			line[(*n)++] = in_data[i];
			if (in_data[i] == '\n')
				return NULL;
		}
	}
	return "no whole line from the host";
}

/* The host's free receive space for `s`, as last heard. */
static uint32_t host_credit(const struct stream *s)
{
	uint32_t in_flight = s->tx_cnt - s->peer_fwd_cnt;
	return in_flight > s->peer_buf_alloc ? 0 : s->peer_buf_alloc - in_flight;
}

/* Sends RW data within the host's credit, asking for more if short. */
static const char *send_data(struct stream *s, const void *data, uint32_t n)
{
	const char *err;
	for (int k = 0; k < MAX_SKIPPED && host_credit(s) < n; k++) {
		if ((err = send_pkt(s, OP_CREDIT_REQUEST, 0, NULL, 0)) || (err = next_for(s)))
			return err;
		if (in_hdr.op == OP_RST)
			return "the host reset the stream";
	}
	if (host_credit(s) < n)
		return virtio_why("the host's credit stays below", n);
	return send_pkt(s, OP_RW, 0, data, n);
}

/* Opens a stream to s->peer on the host. */
static const char *connect_stream(struct stream *s)
{
	const char *err;
	if ((err = send_pkt(s, OP_REQUEST, 0, NULL, 0)))
		return err;
	for (int k = 0; k < MAX_SKIPPED; k++) {
		if ((err = next_for(s)))
			return err;
		if (in_hdr.op == OP_RESPONSE)
			return NULL;
		if (in_hdr.op == OP_RST)
			return "host port 5678 refused the stream";
	}
	return "no RESPONSE from host port 5678";
}

/*
 * Steps 1 and 2: echoes one line of the host's stream to port 1234, and
 * sends `msg` on a stream from guest port `local` to host port 5678.
 * *echoed gets the line's length.
 */
static const char *talk(uint32_t local, const char *msg, uint32_t len, uint32_t *echoed)
{
	struct stream in = {LISTEN_PORT, 0, 0, 0, 0, 0};
	struct stream out = {local, HOST_PORT, 0, 0, 0, 0};
	uint8_t line[LINE_MAX];
	const char *err;
	*echoed = 0;
	if ((err = accept_stream(&in)) ||
	    (err = read_line(&in, line, echoed)) ||
	    (err = send_data(&in, line, *echoed)) ||
	    (err = send_pkt(&in, OP_SHUTDOWN, SHUTDOWN_RCV_SEND, NULL, 0)) ||
	    (err = connect_stream(&out)) ||
	    (err = send_data(&out, msg, len)) ||
	    (err = send_pkt(&out, OP_SHUTDOWN, SHUTDOWN_RCV_SEND, NULL, 0)))
		return err;
	return NULL;
}

/*
 * Fails the check and resets the device, which closes whatever is open on
 * the host side too.
 */
static void fail_reset(const struct check *c, const char *why)
{
	fail(c, why);
	vsock_live = 0;
	if (vsock_dev.base)
		virtio_reset(&vsock_dev);
}

void check_vsock(const struct check *c)
{
	static const char msg[] = "HUSK-PROBE-VSOCK";
	uint32_t n = 0;
	const char *err;

	vsock_live = 0;
	memset(&vsock_dev, 0, sizeof(vsock_dev));
	if ((err = setup(&vsock_dev)) || (err = talk(GUEST_PORT, msg, sizeof(msg) - 1, &n))) {
		fail_reset(c, err);
		return;
	}
	/* Left running: vsock-reset goes on with these queues. */
	vsock_live = 1;
	ok(c);
	puts_serial(" echoed=");
	put_dec(n);
	puts_serial(" sent=");
	put_dec(sizeof(msg) - 1);
	putc_serial('\n');
}

/* Waits for the TRANSPORT_RESET event and gives the buffer back. */
static const char *wait_transport_reset(void)
{
	uint16_t id;
	uint32_t len;
	const char *err = NULL;
	for (int r = 0; r < EVENT_ROUNDS; r++)
		if (!(err = virtq_wait_used(&vq_ev, &id, &len)))
			break;
	if (err)
		return "no TRANSPORT_RESET event (timed out waiting for the event queue)";
	if (len < 4 || len > sizeof(ev_buf))
		return virtio_why("event used length out of range:", len);
	uint32_t ev = rd32((uint64_t)(uintptr_t)ev_buf);
	if (ev != VSOCK_EVENT_TRANSPORT_RESET)
		return virtio_why("event is not TRANSPORT_RESET; id", ev);
	/* As Linux does: the next reset needs a buffer too. */
	if ((err = post_event()))
		return err;
	virtq_kick(&vq_ev);
	return NULL;
}

void check_vsock_reset(const struct check *c)
{
	static const char msg[] = "HUSK-AFTER-RESTORE";
	uint32_t n = 0;
	const char *err;

	if (!vsock_live) {
		fail(c, "vsock not set up");
		return;
	}
	uint32_t s = virtio_rd(&vsock_dev, VIRTIO_MMIO_STATUS);
	if (!(s & VIRTIO_STATUS_DRIVER_OK) || (s & VIRTIO_STATUS_DEVICE_NEEDS_RESET)) {
		fail_reset(c, virtio_why("the device is no longer live; Status", s));
		return;
	}
	if ((err = wait_transport_reset())) {
		fail_reset(c, err);
		return;
	}
	/* A restored VM may have a new CID; Linux rereads it on the event. */
	guest_cid = virtio_config_read(&vsock_dev, 0, 8);
	if (guest_cid < 3) {
		fail_reset(c, virtio_why("guest_cid below 3:", guest_cid));
		return;
	}
	if ((err = talk(GUEST_PORT_AFTER_RESET, msg, sizeof(msg) - 1, &n))) {
		fail_reset(c, err);
		return;
	}
	ok(c);
	puts_serial(" echoed=");
	put_dec(n);
	puts_serial(" sent=");
	put_dec(sizeof(msg) - 1);
	putc_serial('\n');
}
