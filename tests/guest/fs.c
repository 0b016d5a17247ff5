/*
 * Check `fs`: virtio-fs (DeviceID 26; queue 0 is hiprio, queues 1..N take
 * requests; configuration space: char tag[36] NUL padded, then le32
 * num_request_queues), driven through virtio.h, with FUSE requests as
 * Linux's virtiofs driver sends them: each is one chain, the
 * device-readable fuse_in_header + arguments (+ name or data) first, then
 * the device-writable fuse_out_header + reply. The structures are the
 * FUSE ABI of <linux/fuse.h>, written out below (protocol 7.31).
 *
 * The check reads the tag and the queue count, sets up every queue (all
 * must be ready for DRIVER_OK), and on request queue 1:
 *   1. FUSE_INIT; its interrupt must reach the LAPIC IRR (the backend
 *      signals its call eventfd, the VMM raises the used-buffer interrupt);
 *   2. FUSE_LOOKUP of `hello.txt` in the root, FUSE_OPEN, FUSE_READ of
 *      its first bytes (at most 64), FUSE_RELEASE;
 *   3. FUSE_CREATE of `guest.txt` (O_WRONLY|O_CREAT|O_EXCL, 0644); if it
 *      succeeds, FUSE_WRITE of `HUSK-VIRTIOFS-GUEST-WRITE` at offset 0 and
 *      FUSE_RELEASE. A failed create (a read-only share: -30, EROFS) is
 *      reported, not a failure of the check.
 * Prints `PROBE fs OK tag=<tag> queues=<n> init=7.<minor> irq=1
 * size=<size of hello.txt> read=<its bytes, outside '!'..'~' as '.'>
 * create=<0 or -errno>[ wrote=<bytes>]`. The device is left running.
 *
 * Check `fs-again` goes on with the device `fs` left running: a LOOKUP of
 * `hello.txt` on the live queues (a backend that went away never answers
 * it: "lookup: timed out waiting for the used ring"), then a reset, the
 * whole set-up again (the backend gets the queues a second time) and
 * another LOOKUP. Prints `PROBE fs-again OK size=<size>`; without an
 * earlier successful `fs` in this boot it fails with "fs not set up".
 */
#include "virtio.h"

#define FS_TAG_LEN 36
#define FS_MAX_REQUEST_QUEUES 8
#define FS_QUEUE_SIZE 8

/* ---- FUSE ABI (<linux/fuse.h>) */
#define FUSE_KERNEL_VERSION 7
#define FUSE_KERNEL_MINOR_VERSION 31
#define FUSE_ROOT_ID 1
#define FUSE_LOOKUP 1
#define FUSE_OPEN 14
#define FUSE_READ 15
#define FUSE_WRITE 16
#define FUSE_RELEASE 18
#define FUSE_INIT 26
#define FUSE_CREATE 35

#define O_RDONLY 0
#define O_WRONLY 01
#define O_CREAT 0100
#define O_EXCL 0200
#define S_IFREG 0100000

struct fuse_in_header {
	uint32_t len;
	uint32_t opcode;
	uint64_t unique;
	uint64_t nodeid;
	uint32_t uid;
	uint32_t gid;
	uint32_t pid;
	uint16_t total_extlen;
	uint16_t padding;
};

struct fuse_out_header {
	uint32_t len;
	int32_t error;
	uint64_t unique;
};

struct fuse_init_in {
	uint32_t major;
	uint32_t minor;
	uint32_t max_readahead;
	uint32_t flags;
};

struct fuse_init_out {
	uint32_t major;
	uint32_t minor;
	uint32_t max_readahead;
	uint32_t flags;
	uint16_t max_background;
	uint16_t congestion_threshold;
	uint32_t max_write;
	uint32_t time_gran;
	uint16_t max_pages;
	uint16_t map_alignment;
	uint32_t flags2;
	uint32_t unused[7];
};

struct fuse_attr {
	uint64_t ino;
	uint64_t size;
	uint64_t blocks;
	uint64_t atime;
	uint64_t mtime;
	uint64_t ctime;
	uint32_t atimensec;
	uint32_t mtimensec;
	uint32_t ctimensec;
	uint32_t mode;
	uint32_t nlink;
	uint32_t uid;
	uint32_t gid;
	uint32_t rdev;
	uint32_t blksize;
	uint32_t flags;
};

struct fuse_entry_out {
	uint64_t nodeid;
	uint64_t generation;
	uint64_t entry_valid;
	uint64_t attr_valid;
	uint32_t entry_valid_nsec;
	uint32_t attr_valid_nsec;
	struct fuse_attr attr;
};

struct fuse_open_in {
	uint32_t flags;
	uint32_t open_flags;
};

struct fuse_open_out {
	uint64_t fh;
	uint32_t open_flags;
	int32_t backing_id;
};

struct fuse_create_in {
	uint32_t flags;
	uint32_t mode;
	uint32_t umask;
	uint32_t open_flags;
};

struct fuse_read_in {
	uint64_t fh;
	uint64_t offset;
	uint32_t size;
	uint32_t read_flags;
	uint64_t lock_owner;
	uint32_t flags;
	uint32_t padding;
};

struct fuse_write_in {
	uint64_t fh;
	uint64_t offset;
	uint32_t size;
	uint32_t write_flags;
	uint64_t lock_owner;
	uint32_t flags;
	uint32_t padding;
};

struct fuse_write_out {
	uint32_t size;
	uint32_t padding;
};

struct fuse_release_in {
	uint64_t fh;
	uint32_t flags;
	uint32_t release_flags;
	uint64_t lock_owner;
};

#define READ_MAX 64
#define HOST_FILE "hello.txt"
#define GUEST_FILE "guest.txt"
#define GUEST_DATA "HUSK-VIRTIOFS-GUEST-WRITE" /* 25 bytes */

/* The device, live from a successful `fs` on (for `fs-again`). */
static struct virtio_dev fs_dev;
static struct virtq fs_queues[1 + FS_MAX_REQUEST_QUEUES];
static uint32_t fs_nqueues; /* request queues */
static int fs_live;
static uint64_t fs_unique;
/* One request at a time: what the device reads, and what it writes. */
static uint8_t fs_in[256] __attribute__((aligned(8)));
static uint8_t fs_out[256] __attribute__((aligned(8)));

/* "<step>: <err>" in a static buffer (err may be virtio_why's buffer). */
static const char *fs_step(const char *step, const char *err)
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

static size_t fs_strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

/*
 * One FUSE request on request queue 1: `arg` (arg_len bytes), then
 * `name` with its NUL when given, then `data` (data_len bytes) when
 * given, after the in header. The reply's payload (after the out header)
 * lands in fs_out + sizeof(struct fuse_out_header), at most out_max
 * bytes; *payload gets its length and *error the FUSE error (0 or
 * -errno). Returns a transport or framing failure.
 */
static const char *fuse_call(uint32_t opcode, uint64_t nodeid, const void *arg, uint32_t arg_len,
			     const char *name, const void *data, uint32_t data_len,
			     uint32_t out_max, int32_t *error, uint32_t *payload)
{
	struct fuse_in_header *in = (struct fuse_in_header *)fs_in;
	uint32_t len = sizeof(*in);
	uint32_t name_len = name ? (uint32_t)fs_strlen(name) + 1 : 0;
	if (len + arg_len + name_len + data_len > sizeof(fs_in) ||
	    sizeof(struct fuse_out_header) + out_max > sizeof(fs_out))
		return "request too large for the probe's buffers";
	memcpy(fs_in + len, arg, arg_len);
	len += arg_len;
	if (name) {
		memcpy(fs_in + len, name, name_len);
		len += name_len;
	}
	if (data) {
		memcpy(fs_in + len, data, data_len);
		len += data_len;
	}
	memset(in, 0, sizeof(*in));
	in->len = len;
	in->opcode = opcode;
	in->unique = ++fs_unique;
	in->nodeid = nodeid;
	memset(fs_out, 0xa5, sizeof(fs_out));

	uint32_t out_len = (uint32_t)sizeof(struct fuse_out_header) + out_max;
	struct virtq_buf bufs[2] = {
		{(uint64_t)(uintptr_t)fs_in, len, 0},
		{(uint64_t)(uintptr_t)fs_out, out_len, 1},
	};
	uint32_t used;
	const char *err = virtq_transfer(&fs_queues[1], bufs, 2, &used);
	if (err)
		return err;
	barrier();
	const struct fuse_out_header *out = (const struct fuse_out_header *)fs_out;
	if (used < sizeof(*out))
		return virtio_why("used length shorter than fuse_out_header:", used);
	if (out->unique != fs_unique)
		return virtio_why("reply for another request, unique", out->unique);
	if (out->len != used || out->len > out_len)
		return virtio_why("fuse_out_header.len differs from the used length:", out->len);
	*error = out->error;
	*payload = out->len - (uint32_t)sizeof(*out);
	return NULL;
}

/* The reply's payload. */
static void *fuse_reply(void)
{
	return fs_out + sizeof(struct fuse_out_header);
}

/* A request that must succeed with at least `want` payload bytes. */
static const char *fuse_ok(const char *step, uint32_t opcode, uint64_t nodeid, const void *arg,
			   uint32_t arg_len, const char *name, uint32_t want)
{
	int32_t error;
	uint32_t got;
	const char *err = fuse_call(opcode, nodeid, arg, arg_len, name, NULL, 0, want, &error, &got);
	if (err)
		return fs_step(step, err);
	if (error)
		return fs_step(step, virtio_why("FUSE error (negated errno)", (uint64_t)(uint32_t)-error));
	if (got < want)
		return fs_step(step, virtio_why("short reply:", got));
	return NULL;
}

/* Looks `name` up in the root: fills *nodeid and *size. */
static const char *fs_lookup(const char *name, uint64_t *nodeid, uint64_t *size)
{
	const char *err = fuse_ok("lookup", FUSE_LOOKUP, FUSE_ROOT_ID, NULL, 0, name,
				  sizeof(struct fuse_entry_out));
	if (err)
		return err;
	const struct fuse_entry_out *e = fuse_reply();
	*nodeid = e->nodeid;
	*size = e->attr.size;
	return NULL;
}

static const char *fs_release(uint64_t nodeid, uint64_t fh)
{
	struct fuse_release_in r = {fh, 0, 0, 0};
	return fuse_ok("release", FUSE_RELEASE, nodeid, &r, sizeof(r), NULL, 0);
}

/* Finds the device, reads its configuration, sets every queue up. */
static const char *fs_setup(char *tag)
{
	struct virtio_dev *d = &fs_dev;
	const char *err;
	if ((err = virtio_init(d, 0)))
		return err;
	for (unsigned i = 0; i < FS_TAG_LEN; i += 4) {
		uint32_t w = (uint32_t)virtio_config_read(d, i, 4);
		for (unsigned k = 0; k < 4; k++)
			tag[i + k] = (char)(w >> (8 * k));
	}
	tag[FS_TAG_LEN] = 0;
	fs_nqueues = (uint32_t)virtio_config_read(d, FS_TAG_LEN, 4);
	if (fs_nqueues == 0 || fs_nqueues > FS_MAX_REQUEST_QUEUES)
		return virtio_why("num_request_queues out of range:", fs_nqueues);
	for (uint16_t q = 0; q <= fs_nqueues; q++)
		if ((err = virtq_setup(d, &fs_queues[q], q, FS_QUEUE_SIZE)))
			return err;
	return virtio_driver_ok(d);
}

/* FUSE_LOOKUP, FUSE_OPEN, FUSE_READ, FUSE_RELEASE of HOST_FILE. */
static const char *fs_read_host_file(uint64_t *size, char *text)
{
	uint64_t nodeid;
	const char *err;
	if ((err = fs_lookup(HOST_FILE, &nodeid, size)))
		return err;
	struct fuse_open_in o = {O_RDONLY, 0};
	if ((err = fuse_ok("open", FUSE_OPEN, nodeid, &o, sizeof(o), NULL,
			   sizeof(struct fuse_open_out))))
		return err;
	uint64_t fh = ((const struct fuse_open_out *)fuse_reply())->fh;
	uint32_t want = *size < READ_MAX ? (uint32_t)*size : READ_MAX;
	struct fuse_read_in r = {fh, 0, want, 0, 0, 0, 0};
	if ((err = fuse_ok("read", FUSE_READ, nodeid, &r, sizeof(r), NULL, want)))
		return err;
	const uint8_t *b = fuse_reply();
	for (uint32_t i = 0; i < want; i++)
		text[i] = b[i] >= '!' && b[i] <= '~' ? (char)b[i] : '.';
	text[want] = 0;
	return fs_release(nodeid, fh);
}

/*
 * FUSE_CREATE of GUEST_FILE; on success FUSE_WRITE of GUEST_DATA and
 * FUSE_RELEASE. *create gets the create's FUSE error, *wrote the bytes
 * the write took.
 */
static const char *fs_create_guest_file(int32_t *create, uint32_t *wrote)
{
	struct fuse_create_in c = {O_WRONLY | O_CREAT | O_EXCL, S_IFREG | 0644, 0, 0};
	uint32_t got;
	const char *err = fuse_call(FUSE_CREATE, FUSE_ROOT_ID, &c, sizeof(c), GUEST_FILE, NULL, 0,
				    sizeof(struct fuse_entry_out) + sizeof(struct fuse_open_out),
				    create, &got);
	if (err)
		return fs_step("create", err);
	if (*create)
		return NULL;
	if (got < sizeof(struct fuse_entry_out) + sizeof(struct fuse_open_out))
		return fs_step("create", virtio_why("short reply:", got));
	const struct fuse_entry_out *e = fuse_reply();
	const struct fuse_open_out *o = (const void *)(e + 1);
	uint64_t nodeid = e->nodeid, fh = o->fh;
	uint32_t n = (uint32_t)fs_strlen(GUEST_DATA);
	struct fuse_write_in w = {fh, 0, n, 0, 0, 0, 0};
	int32_t error;
	if ((err = fuse_call(FUSE_WRITE, nodeid, &w, sizeof(w), NULL, GUEST_DATA, n,
			     sizeof(struct fuse_write_out), &error, &got)))
		return fs_step("write", err);
	if (error)
		return fs_step("write", virtio_why("FUSE error (negated errno)",
						   (uint64_t)(uint32_t)-error));
	*wrote = ((const struct fuse_write_out *)fuse_reply())->size;
	return fs_release(nodeid, fh);
}

void check_fs(const struct check *c)
{
	struct virtio_dev *d = &fs_dev;
	char tag[FS_TAG_LEN + 1], text[READ_MAX + 1];
	uint64_t size;
	int32_t create;
	uint32_t wrote = 0;
	const char *err;
	fs_live = 0;
	if ((err = virtio_find(VIRTIO_ID_FS, 0, d)) || (err = virtio_irq_route(d)) ||
	    (err = fs_setup(tag))) {
		fail(c, err);
		return;
	}
	struct fuse_init_in in = {FUSE_KERNEL_VERSION, FUSE_KERNEL_MINOR_VERSION, 0, 0};
	if ((err = fuse_ok("init", FUSE_INIT, 0, &in, sizeof(in), NULL,
			   sizeof(struct fuse_init_out))) ||
	    (err = virtio_irq_wait(d))) {
		fail(c, err);
		return;
	}
	const struct fuse_init_out *out = fuse_reply();
	uint32_t major = out->major, minor = out->minor;
	if (major != FUSE_KERNEL_VERSION) {
		fail(c, virtio_why("FUSE_INIT answered major", major));
		return;
	}
	if ((err = fs_read_host_file(&size, text)) || (err = fs_create_guest_file(&create, &wrote))) {
		fail(c, err);
		return;
	}
	virtio_irq_ack(d);
	fs_live = 1;
	ok(c);
	puts_serial(" tag=");
	puts_serial(tag);
	puts_serial(" queues=");
	put_dec(fs_nqueues);
	puts_serial(" init=7.");
	put_dec(minor);
	puts_serial(" irq=1 size=");
	put_dec(size);
	puts_serial(" read=");
	puts_serial(text);
	puts_serial(" create=");
	if (create < 0) {
		putc_serial('-');
		put_dec((uint64_t)(uint32_t)-create);
	} else {
		put_dec((uint64_t)create);
		puts_serial(" wrote=");
		put_dec(wrote);
	}
	putc_serial('\n');
}

void check_fs_again(const struct check *c)
{
	char tag[FS_TAG_LEN + 1];
	uint64_t nodeid, size;
	const char *err;
	if (!fs_live) {
		fail(c, "fs not set up");
		return;
	}
	if ((err = fs_lookup(HOST_FILE, &nodeid, &size)) ||
	    (err = virtio_reset(&fs_dev)) || (err = fs_setup(tag)) ||
	    (err = fs_lookup(HOST_FILE, &nodeid, &size))) {
		fail(c, err);
		return;
	}
	virtio_irq_ack(&fs_dev);
	ok(c);
	puts_serial(" size=");
	put_dec(size);
	putc_serial('\n');
}
