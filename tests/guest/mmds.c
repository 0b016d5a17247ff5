/*
 * Checks `mmds`, `mmds-notoken` and `mmds-hostile`: the microVM metadata
 * service, reached over the first virtio-net device as a guest would,
 * with a minimal one-connection-at-a-time TCP client written here.
 *
 * The guest is 10.0.0.2 on the device's MAC; MMDS is 169.254.169.254:80.
 * Every check first ARPs for MMDS and expects MMDS's MAC back.
 *
 *  - mmds: PUT /latest/api/token (X-metadata-token-ttl-seconds: 60) on
 *    one connection, GET /latest/meta-data/probe with the token on a
 *    second one; prints
 *    `PROBE mmds OK arp=<mac> token=<len> status=<code> value=<body>`.
 *  - mmds-notoken: the GET without a token; prints
 *    `PROBE mmds-notoken OK status=<code>`.
 *  - mmds-hostile: first sends what a hostile guest would (a runt frame,
 *    an ARP reply, bad IPv4 and TCP checksums, a length past the frame, a
 *    fragment, UDP, a segment to a connection that does not exist, a SYN
 *    flood past the connection limit, garbage HTTP, a request over the
 *    size limit), then does what `mmds` does; prints
 *    `PROBE mmds-hostile OK garbage=<code> huge=<code> status=<code> value=<body>`.
 *
 * The client: fixed initial sequence numbers, no retransmission (the
 * device is lossless), each segment ACKed as it comes; after a whole
 * answer (by Content-Length) it sends FIN and waits for MMDS's.
 */
#include "virtio.h"

#define NET_F_MAC (1ull << 5)
#define NET_HDR 12
#define ETH 14
#define IPH 20
#define TCPH 20
#define RX_BUFS 16
#define RX_LEN 2048
#define F_FIN 0x01
#define F_SYN 0x02
#define F_RST 0x04
#define F_PSH 0x08
#define F_ACK 0x10
/* Frames looked at while waiting for one segment. */
#define MAX_SKIP 200

static struct virtq rxq, txq;
static uint8_t rx_bufs[RX_BUFS][RX_LEN];
static uint8_t tx_buf[NET_HDR + 1600];
static uint8_t frame[RX_LEN];
static uint32_t frame_len;
static uint8_t mac[6];
static uint8_t mmds_mac[6];
static const uint8_t guest_ip[4] = {10, 0, 0, 2};
static const uint8_t mmds_ip[4] = {169, 254, 169, 254};
static char resp[2048];
static uint32_t resp_len;
static char token[128];

struct conn {
	uint16_t port;
	uint32_t snd; /* next sequence number to send */
	uint32_t rcv; /* next sequence number expected */
	int fin;      /* MMDS's FIN seen */
};

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }

static int same(const void *a, const void *b, uint32_t n)
{
	const uint8_t *x = a, *y = b;
	for (uint32_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return 0;
	return 1;
}

static uint32_t str_len(const char *s)
{
	uint32_t n = 0;
	while (s[n])
		n++;
	return n;
}

static uint32_t sum16(const uint8_t *p, uint32_t n, uint32_t s)
{
	for (uint32_t i = 0; i + 1 < n; i += 2)
		s += get16(p + i);
	if (n & 1)
		s += (uint32_t)p[n - 1] << 8;
	return s;
}

static uint16_t fold(uint32_t s)
{
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint16_t)~s;
}

static const char *post(int i)
{
	struct virtq_buf b = {(uint64_t)(uintptr_t)rx_bufs[i], RX_LEN, 1};
	uint16_t head;
	return virtq_add(&rxq, &b, 1, &head);
}

/* Sends frame bytes f[0..n) (the virtio-net header is added). */
static const char *send_raw(const uint8_t *f, uint32_t n)
{
	uint32_t len;
	memset(tx_buf, 0, NET_HDR);
	memcpy(tx_buf + NET_HDR, f, n);
	struct virtq_buf b = {(uint64_t)(uintptr_t)tx_buf, NET_HDR + n, 0};
	return virtq_transfer(&txq, &b, 1, &len);
}

/* Takes one received frame into `frame`; wait: block (bounded) or not.
 * Returns 1 with a frame, 0 without, and sets *err on a device error. */
static int take(int wait, const char **err)
{
	uint16_t id;
	uint32_t n;
	if (wait) {
		if ((*err = virtq_wait_used(&rxq, &id, &n)))
			return 0;
	} else if (virtq_get_used(&rxq, &id, &n) <= 0) {
		return 0;
	}
	if (id >= RX_BUFS || n > RX_LEN || n < NET_HDR) {
		*err = "bad used buffer";
		return 0;
	}
	frame_len = n - NET_HDR;
	memcpy(frame, rx_bufs[id] + NET_HDR, frame_len);
	if ((*err = post(id)))
		return 0;
	virtq_kick(&rxq);
	return 1;
}

/* Drops whatever has arrived. */
static void drain(void)
{
	const char *err = NULL;
	while (take(0, &err))
		;
}

static void eth_head(uint8_t *f, const uint8_t *dst, uint16_t type)
{
	memcpy(f, dst, 6);
	memcpy(f + 6, mac, 6);
	put16(f + 12, type);
}

/* Builds a TCP segment to MMDS into f; returns the frame length. */
static uint32_t tcp_build(uint8_t *f, uint16_t sport, uint32_t seq, uint32_t ack, uint8_t flags,
			  const char *data, uint32_t dlen)
{
	eth_head(f, mmds_mac, 0x0800);
	uint8_t *ip = f + ETH, *t = ip + IPH;
	memset(ip, 0, IPH + TCPH);
	ip[0] = 0x45;
	put16(ip + 2, (uint16_t)(IPH + TCPH + dlen));
	ip[8] = 64;
	ip[9] = 6;
	memcpy(ip + 12, guest_ip, 4);
	memcpy(ip + 16, mmds_ip, 4);
	put16(ip + 10, fold(sum16(ip, IPH, 0)));
	put16(t, sport);
	put16(t + 2, 80);
	put32(t + 4, seq);
	put32(t + 8, ack);
	t[12] = 5 << 4;
	t[13] = flags;
	put16(t + 14, 8192);
	memcpy(t + TCPH, data, dlen);
	uint32_t s = sum16(ip + 12, 8, 6 + TCPH + dlen);
	put16(t + 16, fold(sum16(t, TCPH + dlen, s)));
	return ETH + IPH + TCPH + dlen;
}

static uint8_t seg[1600];

static const char *tcp_send(struct conn *c, uint8_t flags, const char *data, uint32_t dlen)
{
	uint32_t n = tcp_build(seg, c->port, c->snd, c->rcv, flags, data, dlen);
	c->snd += dlen + ((flags & (F_SYN | F_FIN)) ? 1 : 0);
	return send_raw(seg, n);
}

/* Waits for the next segment from MMDS to c->port; returns its flags
 * (and sets *seq, *data, *dlen), or -1. */
static int tcp_recv(struct conn *c, uint32_t *seq, const uint8_t **data, uint32_t *dlen,
		    const char **err)
{
	for (int i = 0; i < MAX_SKIP; i++) {
		if (!take(1, err))
			return -1;
		if (frame_len < ETH + IPH + TCPH || get16(frame + 12) != 0x0800 || frame[ETH + 9] != 6)
			continue;
		const uint8_t *ip = frame + ETH;
		uint32_t ihl = (uint32_t)(ip[0] & 0xf) * 4, total = get16(ip + 2);
		const uint8_t *t = ip + ihl;
		if (get16(t + 2) != c->port || total > frame_len - ETH)
			continue;
		uint32_t off = (uint32_t)(t[12] >> 4) * 4;
		*seq = get32(t + 4);
		*data = t + off;
		*dlen = total - ihl - off;
		return t[13];
	}
	*err = "no segment for this connection";
	return -1;
}

static const char *arp(void)
{
	uint8_t f[42];
	static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	static const uint8_t req[8] = {0, 1, 8, 0, 6, 4, 0, 1};
	const char *err;
	eth_head(f, bcast, 0x0806);
	memcpy(f + ETH, req, 8);
	memcpy(f + ETH + 8, mac, 6);
	memcpy(f + ETH + 14, guest_ip, 4);
	memset(f + ETH + 18, 0, 6);
	memcpy(f + ETH + 24, mmds_ip, 4);
	if ((err = send_raw(f, sizeof(f))))
		return err;
	for (int i = 0; i < MAX_SKIP; i++) {
		if (!take(1, &err))
			return err;
		if (frame_len >= 42 && get16(frame + 12) == 0x0806 && get16(frame + ETH + 6) == 2 &&
		    same(frame + ETH + 14, mmds_ip, 4)) {
			memcpy(mmds_mac, frame + ETH + 8, 6);
			return NULL;
		}
	}
	return "no ARP reply";
}

static const char *tcp_open(struct conn *c, uint16_t port)
{
	uint32_t seq, dlen;
	const uint8_t *d;
	const char *err = NULL;
	c->port = port;
	c->snd = 0x1000;
	c->rcv = 0;
	c->fin = 0;
	if ((err = tcp_send(c, F_SYN, "", 0)))
		return err;
	int fl = tcp_recv(c, &seq, &d, &dlen, &err);
	if (fl < 0)
		return err;
	if ((fl & (F_SYN | F_ACK)) != (F_SYN | F_ACK))
		return virtio_why("no SYN-ACK; flags", (uint64_t)fl);
	c->rcv = seq + 1;
	return tcp_send(c, F_ACK, "", 0);
}

/* The status code of the answer in resp, or 0. */
static int status(void)
{
	if (resp_len < 12 || !same(resp, "HTTP/1.", 7))
		return 0;
	return (resp[9] - '0') * 100 + (resp[10] - '0') * 10 + (resp[11] - '0');
}

/* The body of the answer in resp (NUL-terminated), or NULL when the
 * answer is not whole yet. */
static const char *body(void)
{
	resp[resp_len] = 0;
	for (uint32_t i = 0; i + 3 < resp_len; i++) {
		if (!same(resp + i, "\r\n\r\n", 4))
			continue;
		const char *cl = resp;
		uint32_t len = 0;
		for (; cl < resp + i; cl++)
			if (starts_with(cl, "Content-Length: "))
				break;
		for (cl += 16; cl < resp + i && *cl >= '0' && *cl <= '9'; cl++)
			len = len * 10 + (uint32_t)(*cl - '0');
		return resp_len - (i + 4) >= len ? resp + i + 4 : NULL;
	}
	return NULL;
}

/* Sends req (in one or more segments), reads the whole answer into resp,
 * then closes: FIN, MMDS's FIN, last ACK. */
static const char *exchange(uint16_t port, const char *req, uint32_t len)
{
	struct conn c;
	uint32_t seq, dlen;
	const uint8_t *d;
	const char *err;
	if ((err = tcp_open(&c, port)))
		return err;
	for (uint32_t off = 0; off < len; off += 1000) {
		uint32_t n = len - off < 1000 ? len - off : 1000;
		if ((err = tcp_send(&c, F_ACK | F_PSH, req + off, n)))
			return err;
	}
	resp_len = 0;
	while (!body() && !c.fin) {
		int fl = tcp_recv(&c, &seq, &d, &dlen, &err);
		if (fl < 0)
			return err;
		if (fl & F_RST)
			return "connection reset";
		if (seq == c.rcv && dlen && resp_len + dlen < sizeof(resp)) {
			memcpy(resp + resp_len, d, dlen);
			resp_len += dlen;
			c.rcv += dlen;
		}
		if (fl & F_FIN) {
			c.rcv++;
			c.fin = 1;
		}
		if ((err = tcp_send(&c, F_ACK, "", 0)))
			return err;
	}
	if (!body())
		return "the answer ended early";
	if ((err = tcp_send(&c, F_FIN | F_ACK, "", 0)))
		return err;
	while (!c.fin) {
		int fl = tcp_recv(&c, &seq, &d, &dlen, &err);
		if (fl < 0)
			return err;
		if (fl & F_FIN) {
			c.rcv = seq + dlen + 1;
			c.fin = 1;
		}
	}
	return tcp_send(&c, F_ACK, "", 0);
}

static const char *setup(struct virtio_dev *dev)
{
	const char *err;
	if ((err = virtio_find(VIRTIO_ID_NET, 0, dev)) || (err = virtio_init(dev, NET_F_MAC)) ||
	    (err = virtq_setup(dev, &rxq, 0, RX_BUFS)) || (err = virtq_setup(dev, &txq, 1, 8)) ||
	    (err = virtio_driver_ok(dev)))
		return err;
	for (int i = 0; i < 6; i++)
		mac[i] = (dev->features & NET_F_MAC) ? (uint8_t)virtio_config_read(dev, (uint32_t)i, 1)
						      : (uint8_t)(i == 0 ? 0x02 : i);
	for (int i = 0; i < RX_BUFS; i++)
		if ((err = post(i)))
			return err;
	virtq_kick(&rxq);
	return arp();
}

/* PUT the token, then GET the probe's key with it. */
static const char *token_and_get(uint16_t port)
{
	const char *err;
	static const char put[] = "PUT /latest/api/token HTTP/1.1\r\n"
				  "X-metadata-token-ttl-seconds: 60\r\n\r\n";
	static char get[256];
	if ((err = exchange(port, put, sizeof(put) - 1)))
		return err;
	if (status() != 200)
		return virtio_why("token PUT answered", (uint64_t)status());
	const char *t = body();
	uint32_t n = 0;
	while (t[n] && n + 1 < sizeof(token)) {
		token[n] = t[n];
		n++;
	}
	token[n] = 0;
	static const char head[] = "GET /latest/meta-data/probe HTTP/1.1\r\nX-metadata-token: ";
	memcpy(get, head, sizeof(head) - 1);
	memcpy(get + sizeof(head) - 1, token, n);
	memcpy(get + sizeof(head) - 1 + n, "\r\n\r\n", 4);
	return exchange((uint16_t)(port + 1), get, (uint32_t)(sizeof(head) - 1 + n + 4));
}

static void print_body(void)
{
	const char *b = body();
	for (int i = 0; b && b[i] && i < 64; i++)
		putc_serial(b[i] >= ' ' && b[i] <= '~' ? b[i] : '?');
}

static void print_mac(const uint8_t *m)
{
	for (int i = 0; i < 6; i++) {
		if (i)
			putc_serial(':');
		putc_serial("0123456789abcdef"[m[i] >> 4]);
		putc_serial("0123456789abcdef"[m[i] & 15]);
	}
}

void check_mmds(const struct check *c)
{
	struct virtio_dev dev;
	const char *err;
	if ((err = setup(&dev)) || (err = token_and_get(41000))) {
		fail(c, err);
		return;
	}
	ok(c);
	puts_serial(" arp=");
	print_mac(mmds_mac);
	puts_serial(" token=");
	put_dec(str_len(token));
	puts_serial(" status=");
	put_dec((uint64_t)status());
	puts_serial(" value=");
	print_body();
	putc_serial('\n');
	virtio_reset(&dev);
}

void check_mmds_notoken(const struct check *c)
{
	struct virtio_dev dev;
	const char *err;
	static const char get[] = "GET /latest/meta-data/probe HTTP/1.1\r\n\r\n";
	if ((err = setup(&dev)) || (err = exchange(42000, get, sizeof(get) - 1))) {
		fail(c, err);
		return;
	}
	ok(c);
	puts_serial(" status=");
	put_dec((uint64_t)status());
	putc_serial('\n');
	virtio_reset(&dev);
}

static char huge[3000];

/* The hostile frames; each is sent, and whatever comes back dropped. */
static const char *hostile(void)
{
	const char *err;
	uint8_t f[128];
	uint32_t n;
	/* A runt frame; an ARP reply (not a request) for MMDS. */
	if ((err = send_raw(f, 6)))
		return err;
	memset(f, 0, 42);
	eth_head(f, mmds_mac, 0x0806);
	f[ETH + 7] = 2;
	memcpy(f + ETH + 24, mmds_ip, 4);
	if ((err = send_raw(f, 42)))
		return err;
	/* Bad IPv4 checksum; bad TCP checksum; a total length past the
	 * frame; a fragment; UDP; TCP to a port MMDS does not serve. */
	for (int k = 0; k < 6; k++) {
		n = tcp_build(f, (uint16_t)(43000 + k), 1, 0, F_SYN, "", 0);
		switch (k) {
		case 0: f[ETH + 10] ^= 0xff; break;
		case 1: f[ETH + IPH + 16] ^= 0xff; break;
		case 2: put16(f + ETH + 2, 900); break;
		case 3: f[ETH + 6] = 0x20; break;
		case 4: f[ETH + 9] = 17; break;
		case 5: /* port 81, its checksum right */
			put16(f + ETH + IPH + 2, 81);
			put16(f + ETH + IPH + 16, 0);
			put16(f + ETH + IPH + 16,
			      fold(sum16(f + ETH + IPH, TCPH, sum16(f + ETH + 12, 8, 6 + TCPH))));
			break;
		}
		if (k >= 2) { /* keep the IPv4 checksum right */
			put16(f + ETH + 10, 0);
			put16(f + ETH + 10, fold(sum16(f + ETH, IPH, 0)));
		}
		if ((err = send_raw(f, n)))
			return err;
	}
	/* Data to a connection that does not exist. */
	n = tcp_build(f, 43100, 5, 5, F_ACK | F_PSH, "\x00\xff\x13garbage", 10);
	if ((err = send_raw(f, n)))
		return err;
	drain();
	/* A SYN flood past the connection limit, never completed. */
	for (uint16_t p = 0; p < 40; p++) {
		n = tcp_build(f, (uint16_t)(44000 + p), 7, 0, F_SYN, "", 0);
		if ((err = send_raw(f, n)))
			return err;
		drain();
	}
	return NULL;
}

void check_mmds_hostile(const struct check *c)
{
	struct virtio_dev dev;
	const char *err;
	int garbage, too_large;
	static const char junk[] = "\x01\x02 NOT HTTP \xff\r\n\r\n";
	if ((err = setup(&dev)) || (err = hostile()) ||
	    (err = exchange(45000, junk, sizeof(junk) - 1))) {
		fail(c, err);
		return;
	}
	garbage = status();
	memcpy(huge, "GET /", 5);
	memset(huge + 5, 'A', sizeof(huge) - 5);
	if ((err = exchange(45001, huge, sizeof(huge)))) {
		fail(c, err);
		return;
	}
	too_large = status();
	if ((err = token_and_get(45002))) {
		fail(c, err);
		return;
	}
	ok(c);
	puts_serial(" garbage=");
	put_dec((uint64_t)garbage);
	puts_serial(" huge=");
	put_dec((uint64_t)too_large);
	puts_serial(" status=");
	put_dec((uint64_t)status());
	puts_serial(" value=");
	print_body();
	putc_serial('\n');
	virtio_reset(&dev);
}
