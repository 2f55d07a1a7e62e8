/*
 * IKE_SA_INIT load generator for the fastredir benchmarks.
 *
 * Replays one recorded request with a new initiator SPI and nonce per
 * datagram, from many UDP sockets bound to distinct 127.x.y.z addresses,
 * with batched sendmmsg.  It receives the answers with recvmmsg, checks
 * each one and measures the time from send to answer.  It runs on one
 * thread and spins, so give it a core of its own.
 *
 * Each nonce starts with the request's sequence number XOR a per-run key;
 * the rest of the nonce and the SPI are derived from it.  An answer that
 * echoes the nonce therefore names the request it answers, which checks
 * the SPI and nonce and gives the send time.  With --check count (for a
 * responder that sends a fixed reply) answers are only counted, and are
 * matched to requests in send order per socket.
 *
 * The result is one JSON object on stdout.  IPv4 only.
 *
 * Build: gcc -O2 -o loadgen loadgen.c  (bench/native.py does this).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_SOCKETS 1024
#define MAX_BATCH 1024
#define MAX_DATAGRAM 65536
#define ANSWER_SLOT 2048
#define RING_BITS 22
#define RING_SIZE (1u << RING_BITS)
#define RING_MASK (RING_SIZE - 1)
#define ORDER_QUEUE 65536 /* per-socket queue of send times, --check count */
#define MAX_WATCHED 64
#define HISTOGRAM_BUCKETS 4096
#define IKE_HEADER 28
#define NOTIFY_REDIRECT 16407

enum check_mode { CHECK_FULL, CHECK_COUNT };

enum invalid_reason {
    BAD_LENGTH,
    BAD_HEADER,
    BAD_RESPONDER_SPI,
    BAD_NOTIFY,
    BAD_GATEWAY,
    BAD_NONCE,
    BAD_SPI,
    UNKNOWN_REQUEST,
    REASON_COUNT
};

static const char *const reason_names[REASON_COUNT] = {
    "length", "header", "responder_spi", "notify", "gateway", "nonce", "initiator_spi", "unknown_request",
};

struct options {
    struct sockaddr_in target;
    const char *template_path;
    size_t nonce_offset;
    size_t nonce_length;
    unsigned sockets;
    uint32_t source_base; /* host order */
    unsigned batch;
    unsigned gso;      /* datagrams per UDP GSO send; 1 sends each alone */
    double rate;       /* requests per second; 0 sends as fast as it can */
    double duration;   /* seconds of sending */
    uint64_t count;    /* maximum requests to send; 0 for no limit */
    double drain;      /* seconds to wait for answers after the last send */
    uint64_t distinct; /* SPIs repeat every `distinct` requests; 0 never */
    enum check_mode check;
    size_t answer_length; /* --check count: expected answer length, 0 any */
    int has_gateway;
    uint8_t gateway[4];
    pid_t watched[MAX_WATCHED];
    unsigned watched_count;
    double wait_ready; /* seconds to wait for the first answer */
    int receive_buffer;
    uint64_t key;
};

struct cpu_sample {
    uint64_t utime_ticks;
    uint64_t stime_ticks;
    uint64_t runtime_ns; /* sum of the threads' schedstat run time */
    int ok;
};

struct order_queue {
    uint64_t *sent_ns;
    uint32_t head, tail;
};

static struct options opt;
static int fds[MAX_SOCKETS];
static struct sockaddr_in locals[MAX_SOCKETS];
static struct order_queue queues[MAX_SOCKETS];
static uint8_t *template_data;
static size_t template_length;
static uint8_t *send_data;
static struct mmsghdr send_headers[MAX_BATCH];
static struct iovec send_iov[MAX_BATCH];
static uint8_t *answer_data;
static struct mmsghdr answer_headers[MAX_BATCH];
static struct iovec answer_iov[MAX_BATCH];
static uint64_t *ring_sent_ns;
static uint8_t *ring_answered;
static uint64_t histogram[HISTOGRAM_BUCKETS];
static uint64_t latency_samples, latency_sum_ns, latency_max_ns;

static uint64_t next_seq;    /* sequence number of the next request */
static uint64_t window_seq;  /* first request of the measured window */
static uint64_t sent, send_calls, send_errors, send_eagain;
static uint64_t answers_valid, answers_invalid, duplicates, stale, before_window, unmatched;
static uint64_t invalid_by_reason[REASON_COUNT];
static volatile sig_atomic_t interrupted;

/* Print which operation failed, the system error and an optional hint. */
static void fail_with_hint(const char *operation, const char *hint) {
    fprintf(stderr, "loadgen: %s failed: %s%s%s\n", operation, strerror(errno), hint ? "; " : "", hint ? hint : "");
    exit(2);
}

static void fail(const char *operation) {
    fail_with_hint(operation, NULL);
}

static void usage_error(const char *message, const char *value) {
    fprintf(stderr, "loadgen: %s%s%s\n", message, value ? ": " : "", value ? value : "");
    exit(2);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* SplitMix64 step (Steele, Lea and Flood, 2014): a fast 64-bit mixer. */
static inline uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static inline uint64_t spi_of(uint64_t seq) {
    uint64_t base = opt.distinct ? seq % opt.distinct : seq;
    uint64_t spi = mix64(base ^ opt.key ^ 0x5350495350495350ull);
    return spi ? spi : 1; /* an IKE initiator SPI is never zero */
}

/* Write the nonce of request `seq`: seq ^ key, then derived bytes. */
static inline void write_nonce(uint8_t *nonce, uint64_t seq) {
    uint64_t head = seq ^ opt.key;
    uint64_t state = mix64(seq ^ (opt.key << 1));
    size_t i;
    memcpy(nonce, &head, 8);
    for (i = 8; i < opt.nonce_length; i += 8) {
        uint64_t word = mix64(state + i);
        size_t n = opt.nonce_length - i < 8 ? opt.nonce_length - i : 8;
        memcpy(nonce + i, &word, n);
    }
}

static inline int nonce_matches(const uint8_t *nonce, uint64_t seq) {
    uint8_t expected[256];
    write_nonce(expected, seq);
    return memcmp(expected + 8, nonce + 8, opt.nonce_length - 8) == 0;
}

/* Log-linear histogram: exact below 128 ns, then 64 buckets per power of
 * two, so a bucket is at most 1/64 (1.6%) wide. */
static inline unsigned histogram_index(uint64_t ns) {
    if (ns < 128)
        return (unsigned)ns;
    int msb = 63 - __builtin_clzll(ns);
    unsigned index = 128 + (unsigned)(msb - 7) * 64 + (unsigned)((ns >> (msb - 6)) - 64);
    return index < HISTOGRAM_BUCKETS ? index : HISTOGRAM_BUCKETS - 1;
}

static double histogram_value(unsigned index) {
    if (index < 128)
        return index;
    unsigned k = index - 128;
    int msb = (int)(k / 64) + 7;
    double low = (double)((uint64_t)(k % 64 + 64) << (msb - 6));
    return low + (double)((uint64_t)1 << (msb - 6)) / 2; /* bucket middle */
}

static void record_latency(uint64_t ns) {
    histogram[histogram_index(ns)]++;
    latency_samples++;
    latency_sum_ns += ns;
    if (ns > latency_max_ns)
        latency_max_ns = ns;
}

static double percentile_us(double fraction) {
    uint64_t rank, seen = 0;
    unsigned i;
    if (latency_samples == 0)
        return -1;
    rank = (uint64_t)(fraction * (double)latency_samples);
    if (rank >= latency_samples)
        rank = latency_samples - 1;
    for (i = 0; i < HISTOGRAM_BUCKETS; i++) {
        seen += histogram[i];
        if (seen > rank)
            return histogram_value(i) / 1000.0;
    }
    return (double)latency_max_ns / 1000.0;
}

static void reset_counters(void) {
    memset(histogram, 0, sizeof(histogram));
    latency_samples = latency_sum_ns = latency_max_ns = 0;
    sent = send_calls = send_errors = send_eagain = 0;
    answers_valid = answers_invalid = duplicates = stale = before_window = unmatched = 0;
    memset(invalid_by_reason, 0, sizeof(invalid_by_reason));
    window_seq = next_seq;
    for (unsigned s = 0; s < opt.sockets; s++)
        queues[s].head = queues[s].tail;
}

/* ------------------------------------------------------------------ */
/* Options                                                              */
/* ------------------------------------------------------------------ */

static uint64_t parse_unsigned(const char *text, const char *name) {
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno || *end || end == text)
        usage_error(name, text);
    return value;
}

static double parse_double(const char *text, const char *name) {
    char *end;
    double value = strtod(text, &end);
    if (*end || end == text || value < 0)
        usage_error(name, text);
    return value;
}

static void parse_options(int argc, char **argv) {
    memset(&opt, 0, sizeof(opt));
    opt.target.sin_family = AF_INET;
    opt.sockets = 64;
    opt.source_base = 0x7F4D0001; /* 127.77.0.1 */
    opt.batch = 64;
    opt.gso = 1;
    opt.duration = 1.0;
    opt.drain = 0.2;
    opt.check = CHECK_FULL;
    opt.wait_ready = 5.0;
    opt.receive_buffer = 8 << 20;
    opt.key = mix64((uint64_t)now_ns() ^ (uint64_t)getpid());
    for (int i = 1; i < argc; i++) {
        const char *name = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!value)
            usage_error("missing value for option", name);
        i++;
        if (!strcmp(name, "--target")) {
            if (inet_pton(AF_INET, value, &opt.target.sin_addr) != 1)
                usage_error("--target must be an IPv4 address", value);
        } else if (!strcmp(name, "--port")) {
            uint64_t port = parse_unsigned(value, "--port must be 1 to 65535");
            if (port < 1 || port > 65535)
                usage_error("--port must be 1 to 65535", value);
            opt.target.sin_port = htons((uint16_t)port);
        } else if (!strcmp(name, "--template")) {
            opt.template_path = value;
        } else if (!strcmp(name, "--nonce-offset")) {
            opt.nonce_offset = parse_unsigned(value, "--nonce-offset");
        } else if (!strcmp(name, "--nonce-length")) {
            opt.nonce_length = parse_unsigned(value, "--nonce-length");
        } else if (!strcmp(name, "--sockets")) {
            opt.sockets = (unsigned)parse_unsigned(value, "--sockets");
        } else if (!strcmp(name, "--source-base")) {
            struct in_addr address;
            if (inet_pton(AF_INET, value, &address) != 1)
                usage_error("--source-base must be an IPv4 address", value);
            opt.source_base = ntohl(address.s_addr);
        } else if (!strcmp(name, "--batch")) {
            opt.batch = (unsigned)parse_unsigned(value, "--batch");
        } else if (!strcmp(name, "--gso")) {
            opt.gso = (unsigned)parse_unsigned(value, "--gso");
        } else if (!strcmp(name, "--rate")) {
            opt.rate = parse_double(value, "--rate");
        } else if (!strcmp(name, "--duration")) {
            opt.duration = parse_double(value, "--duration");
        } else if (!strcmp(name, "--count")) {
            opt.count = parse_unsigned(value, "--count");
        } else if (!strcmp(name, "--drain")) {
            opt.drain = parse_double(value, "--drain");
        } else if (!strcmp(name, "--distinct")) {
            opt.distinct = parse_unsigned(value, "--distinct");
        } else if (!strcmp(name, "--check")) {
            if (!strcmp(value, "full"))
                opt.check = CHECK_FULL;
            else if (!strcmp(value, "count"))
                opt.check = CHECK_COUNT;
            else
                usage_error("--check must be full or count", value);
        } else if (!strcmp(name, "--answer-length")) {
            opt.answer_length = parse_unsigned(value, "--answer-length");
        } else if (!strcmp(name, "--gateway")) {
            if (inet_pton(AF_INET, value, opt.gateway) != 1)
                usage_error("--gateway must be an IPv4 address", value);
            opt.has_gateway = 1;
        } else if (!strcmp(name, "--watch-pid")) {
            if (opt.watched_count == MAX_WATCHED)
                usage_error("too many --watch-pid options", value);
            opt.watched[opt.watched_count++] = (pid_t)parse_unsigned(value, "--watch-pid");
        } else if (!strcmp(name, "--wait-ready")) {
            opt.wait_ready = parse_double(value, "--wait-ready");
        } else if (!strcmp(name, "--receive-buffer")) {
            opt.receive_buffer = (int)parse_unsigned(value, "--receive-buffer");
        } else if (!strcmp(name, "--key")) {
            opt.key = parse_unsigned(value, "--key");
        } else {
            usage_error("unknown option", name);
        }
    }
    if (!opt.template_path)
        usage_error("missing --template", NULL);
    if (!opt.target.sin_port)
        usage_error("missing --port", NULL);
    if (opt.sockets < 1 || opt.sockets > MAX_SOCKETS)
        usage_error("--sockets must be 1 to 1024", NULL);
    if (opt.batch < 1 || opt.batch > MAX_BATCH)
        usage_error("--batch must be 1 to 1024", NULL);
    if (opt.gso < 1 || opt.gso > 64)
        usage_error("--gso must be 1 to 64", NULL);
    if (opt.nonce_length < 16 || opt.nonce_length > 256)
        usage_error("--nonce-length must be 16 to 256", NULL);
    if (opt.duration <= 0 && opt.count == 0)
        usage_error("give --duration or --count so that the run ends", NULL);
}

static void load_template(void) {
    FILE *file = fopen(opt.template_path, "rb");
    if (!file)
        fail_with_hint("opening the --template file", opt.template_path);
    template_data = malloc(MAX_DATAGRAM);
    template_length = fread(template_data, 1, MAX_DATAGRAM, file);
    fclose(file);
    if (template_length < IKE_HEADER || opt.nonce_offset + opt.nonce_length > template_length)
        usage_error("the template is shorter than its header or its nonce", opt.template_path);
}

/* ------------------------------------------------------------------ */
/* Counters read from /proc                                             */
/* ------------------------------------------------------------------ */

static struct cpu_sample read_cpu(pid_t pid) {
    struct cpu_sample sample = {0, 0, 0, 0};
    char path[64], line[4096];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *file = fopen(path, "r");
    if (!file)
        return sample;
    if (fgets(line, sizeof(line), file)) {
        /* Fields after the command name, which may contain spaces. */
        char *rest = strrchr(line, ')');
        unsigned long long utime, stime;
        if (rest && sscanf(rest + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                           &utime, &stime) == 2) {
            sample.utime_ticks = utime;
            sample.stime_ticks = stime;
            sample.ok = 1;
        }
    }
    fclose(file);
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *tasks = opendir(path);
    if (tasks) {
        struct dirent *entry;
        while ((entry = readdir(tasks))) {
            if (entry->d_name[0] == '.')
                continue;
            char task_path[300];
            snprintf(task_path, sizeof(task_path), "/proc/%d/task/%s/schedstat", (int)pid, entry->d_name);
            FILE *stat = fopen(task_path, "r");
            unsigned long long runtime;
            if (stat && fscanf(stat, "%llu", &runtime) == 1)
                sample.runtime_ns += runtime;
            if (stat)
                fclose(stat);
        }
        closedir(tasks);
    }
    return sample;
}

#define MAX_CPUS 256

/* Busy and total ticks of each CPU (/proc/stat), to tell how much of a
 * core other processes of the machine took during the window. */
struct core_sample {
    uint64_t busy[MAX_CPUS];
    uint64_t total[MAX_CPUS];
    int count;
};

static void read_cores(struct core_sample *sample) {
    char line[512];
    memset(sample, 0, sizeof(*sample));
    FILE *file = fopen("/proc/stat", "r");
    if (!file)
        return;
    while (fgets(line, sizeof(line), file)) {
        int cpu;
        unsigned long long user, nice, system, idle, iowait, irq, softirq, steal;
        if (sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu", &cpu, &user, &nice, &system, &idle,
                   &iowait, &irq, &softirq, &steal) != 9)
            continue;
        if (cpu < 0 || cpu >= MAX_CPUS)
            continue;
        sample->busy[cpu] = user + nice + system + irq + softirq + steal;
        sample->total[cpu] = sample->busy[cpu] + idle + iowait;
        if (cpu + 1 > sample->count)
            sample->count = cpu + 1;
    }
    fclose(file);
}

/* Sum the drop counters of /proc/self/net/udp: our own sockets, and the
 * target's (several with SO_REUSEPORT).  This namespace's table only. */
static void read_drops(uint64_t *own, uint64_t *target) {
    char line[512];
    *own = *target = 0;
    FILE *file = fopen("/proc/self/net/udp", "r");
    if (!file)
        return;
    if (!fgets(line, sizeof(line), file)) { /* header */
        fclose(file);
        return;
    }
    while (fgets(line, sizeof(line), file)) {
        unsigned address, port;
        char *token, *last = NULL, *save = NULL;
        if (sscanf(line, " %*d: %8X:%4X", &address, &port) != 2)
            continue;
        /* drops is the last field; lines end in padding spaces */
        for (token = strtok_r(line, " \n", &save); token; token = strtok_r(NULL, " \n", &save))
            last = token;
        if (!last)
            continue;
        uint64_t drops = strtoull(last, NULL, 10);
        if (address == opt.target.sin_addr.s_addr && port == ntohs(opt.target.sin_port)) {
            *target += drops;
            continue;
        }
        for (unsigned s = 0; s < opt.sockets; s++) {
            if (address == locals[s].sin_addr.s_addr && port == ntohs(locals[s].sin_port)) {
                *own += drops;
                break;
            }
        }
    }
    fclose(file);
}

/* ------------------------------------------------------------------ */
/* Sending                                                              */
/* ------------------------------------------------------------------ */

static void open_sockets(int epoll_fd) {
    for (unsigned s = 0; s < opt.sockets; s++) {
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (fd < 0)
            fail("socket");
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &opt.receive_buffer, sizeof(int)) < 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &opt.receive_buffer, sizeof(int));
        struct sockaddr_in local = {0};
        local.sin_family = AF_INET;
        local.sin_addr.s_addr = htonl(opt.source_base + s);
        if (bind(fd, (struct sockaddr *)&local, sizeof(local)) < 0)
            fail_with_hint("bind to a 127.x.y.z source address", "the loopback interface must carry 127.0.0.0/8");
        if (opt.gso > 1) {
            int segment = (int)template_length;
            if (setsockopt(fd, SOL_UDP, UDP_SEGMENT, &segment, sizeof(segment)) < 0)
                fail_with_hint("setsockopt UDP_SEGMENT", "UDP GSO needs Linux 4.18 or later, else use --gso 1");
        }
        socklen_t length = sizeof(locals[s]);
        getsockname(fd, (struct sockaddr *)&locals[s], &length);
        struct epoll_event event = {.events = EPOLLIN, .data.u32 = s};
        if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event) < 0)
            fail("epoll_ctl");
        fds[s] = fd;
        if (opt.check == CHECK_COUNT) {
            queues[s].sent_ns = calloc(ORDER_QUEUE, sizeof(uint64_t));
            if (!queues[s].sent_ns)
                fail("calloc");
        }
    }
}

static void prepare_buffers(void) {
    send_data = malloc((size_t)opt.batch * template_length);
    answer_data = malloc((size_t)opt.batch * ANSWER_SLOT);
    ring_sent_ns = calloc(RING_SIZE, sizeof(uint64_t));
    ring_answered = calloc(RING_SIZE, 1);
    if (!send_data || !answer_data || !ring_sent_ns || !ring_answered)
        fail("malloc");
    for (unsigned i = 0; i < opt.batch; i++) {
        memcpy(send_data + (size_t)i * template_length, template_data, template_length);
        send_iov[i].iov_base = send_data + (size_t)i * template_length;
        send_iov[i].iov_len = template_length;
        send_headers[i].msg_hdr.msg_iov = &send_iov[i];
        send_headers[i].msg_hdr.msg_iovlen = 1;
        send_headers[i].msg_hdr.msg_name = &opt.target;
        send_headers[i].msg_hdr.msg_namelen = sizeof(opt.target);
        answer_iov[i].iov_base = answer_data + (size_t)i * ANSWER_SLOT;
        answer_iov[i].iov_len = ANSWER_SLOT;
        answer_headers[i].msg_hdr.msg_iov = &answer_iov[i];
        answer_headers[i].msg_hdr.msg_iovlen = 1;
    }
}

/* Send `count` new requests from socket `s`, `opt.gso` datagrams per
 * message; return how many datagrams left. */
static unsigned send_batch(unsigned s, unsigned count) {
    uint64_t first = next_seq;
    unsigned segments[MAX_BATCH];
    unsigned messages = 0;
    for (unsigned i = 0; i < count; i++) {
        uint8_t *datagram = send_data + (size_t)i * template_length;
        uint64_t spi = spi_of(first + i);
        memcpy(datagram, &spi, 8);
        write_nonce(datagram + opt.nonce_offset, first + i);
    }
    for (unsigned i = 0; i < count; i += opt.gso) {
        unsigned n = count - i < opt.gso ? count - i : opt.gso;
        send_iov[messages].iov_base = send_data + (size_t)i * template_length;
        send_iov[messages].iov_len = (size_t)n * template_length;
        segments[messages++] = n;
    }
    uint64_t stamp = now_ns();
    int result;
    do {
        result = sendmmsg(fds[s], send_headers, messages, MSG_DONTWAIT);
    } while (result < 0 && errno == EINTR);
    send_calls++;
    if (result < 0) {
        if (errno == EAGAIN || errno == ENOBUFS)
            send_eagain++;
        else
            send_errors++;
        return 0;
    }
    unsigned datagrams = 0;
    for (int m = 0; m < result; m++)
        datagrams += segments[m];
    for (unsigned i = 0; i < datagrams; i++) {
        uint64_t seq = first + i;
        ring_sent_ns[seq & RING_MASK] = stamp;
        ring_answered[seq & RING_MASK] = 0;
        if (opt.check == CHECK_COUNT) {
            struct order_queue *queue = &queues[s];
            if (queue->tail - queue->head < ORDER_QUEUE)
                queue->sent_ns[queue->tail++ % ORDER_QUEUE] = stamp;
        }
    }
    next_seq += datagrams;
    sent += datagrams;
    return datagrams;
}

/* ------------------------------------------------------------------ */
/* Receiving and checking                                               */
/* ------------------------------------------------------------------ */

static inline uint32_t load32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Check one REDIRECT answer; on success store the request's sequence
 * number.  Returns REASON_COUNT when the answer is valid. */
static enum invalid_reason check_answer(const uint8_t *m, size_t n, uint64_t *seq_out) {
    static const uint8_t zero[8];
    if (n < IKE_HEADER + 8 + 2 || n > ANSWER_SLOT)
        return BAD_LENGTH;
    if (load32(m + 24) != n)
        return BAD_LENGTH;
    /* Notify next, version 2.0, IKE_SA_INIT, Response flag only, ID 0. */
    if (m[16] != 41 || m[17] != 0x20 || m[18] != 34 || m[19] != 0x20 || load32(m + 20) != 0)
        return BAD_HEADER;
    if (memcmp(m + 8, zero, 8) != 0)
        return BAD_RESPONDER_SPI;
    const uint8_t *notify = m + IKE_HEADER;
    size_t notify_length = ((size_t)notify[2] << 8) | notify[3];
    if (notify[0] != 0 || notify_length != n - IKE_HEADER || notify[5] != 0 ||
        (((unsigned)notify[6] << 8) | notify[7]) != NOTIFY_REDIRECT)
        return BAD_NOTIFY;
    const uint8_t *data = notify + 8;
    size_t data_length = notify_length - 8;
    size_t identity_length = 2 + (size_t)data[1];
    if (identity_length > data_length || data_length - identity_length != opt.nonce_length)
        return BAD_NONCE;
    if (opt.has_gateway && (data[0] != 1 || data[1] != 4 || memcmp(data + 2, opt.gateway, 4) != 0))
        return BAD_GATEWAY;
    const uint8_t *nonce = data + identity_length;
    uint64_t head;
    memcpy(&head, nonce, 8);
    uint64_t seq = head ^ opt.key;
    if (seq >= next_seq)
        return UNKNOWN_REQUEST;
    if (!nonce_matches(nonce, seq))
        return BAD_NONCE;
    uint64_t spi = spi_of(seq);
    if (memcmp(m, &spi, 8) != 0)
        return BAD_SPI;
    *seq_out = seq;
    return REASON_COUNT;
}

static void take_answer(unsigned s, const uint8_t *m, size_t n, uint64_t stamp) {
    if (opt.check == CHECK_COUNT) {
        struct order_queue *queue = &queues[s];
        if (opt.answer_length && n != opt.answer_length) {
            answers_invalid++;
            invalid_by_reason[BAD_LENGTH]++;
            return;
        }
        if (queue->head == queue->tail) {
            unmatched++; /* an answer to a request of before the window */
            return;
        }
        record_latency(stamp - queue->sent_ns[queue->head++ % ORDER_QUEUE]);
        answers_valid++;
        return;
    }
    uint64_t seq = 0;
    enum invalid_reason reason = check_answer(m, n, &seq);
    if (reason != REASON_COUNT) {
        answers_invalid++;
        invalid_by_reason[reason]++;
        return;
    }
    if (seq < window_seq) {
        before_window++;
        return;
    }
    if (next_seq - seq > RING_SIZE) {
        stale++; /* valid, but too old for its send time to be kept */
        answers_valid++;
        return;
    }
    if (ring_answered[seq & RING_MASK]) {
        duplicates++;
        return;
    }
    ring_answered[seq & RING_MASK] = 1;
    record_latency(stamp - ring_sent_ns[seq & RING_MASK]);
    answers_valid++;
}

static uint64_t receive_from(unsigned s) {
    uint64_t total = 0;
    for (;;) {
        int count = recvmmsg(fds[s], answer_headers, opt.batch, MSG_DONTWAIT, NULL);
        if (count <= 0)
            break;
        uint64_t stamp = now_ns();
        for (int i = 0; i < count; i++)
            take_answer(s, answer_iov[i].iov_base, answer_headers[i].msg_len, stamp);
        total += (uint64_t)count;
        if ((unsigned)count < opt.batch)
            break;
    }
    return total;
}

static uint64_t poll_answers(int epoll_fd, int timeout_ms) {
    struct epoll_event events[MAX_SOCKETS];
    uint64_t total = 0;
    int ready = epoll_wait(epoll_fd, events, (int)opt.sockets, timeout_ms);
    for (int i = 0; i < ready; i++)
        total += receive_from(events[i].data.u32);
    return total;
}

/* ------------------------------------------------------------------ */
/* Output                                                               */
/* ------------------------------------------------------------------ */

static void print_result(double send_seconds, double window_seconds, struct cpu_sample *before,
                         struct cpu_sample *after, uint64_t own_drops, uint64_t target_drops,
                         double ready_seconds, struct core_sample *cores_before, struct core_sample *cores_after) {
    uint64_t not_answered = sent > answers_valid ? sent - answers_valid : 0;
    printf("{\"sent\": %llu, \"send_calls\": %llu, \"send_errors\": %llu, \"send_eagain\": %llu,\n",
           (unsigned long long)sent, (unsigned long long)send_calls, (unsigned long long)send_errors,
           (unsigned long long)send_eagain);
    printf(" \"answers_valid\": %llu, \"answers_invalid\": %llu, \"duplicates\": %llu, \"stale\": %llu,\n",
           (unsigned long long)answers_valid, (unsigned long long)answers_invalid,
           (unsigned long long)duplicates, (unsigned long long)stale);
    printf(" \"before_window\": %llu, \"unmatched\": %llu, \"not_answered\": %llu,\n",
           (unsigned long long)before_window, (unsigned long long)unmatched,
           (unsigned long long)not_answered);
    printf(" \"invalid_reasons\": {");
    int first = 1;
    for (int r = 0; r < REASON_COUNT; r++) {
        if (!invalid_by_reason[r])
            continue;
        printf("%s\"%s\": %llu", first ? "" : ", ", reason_names[r], (unsigned long long)invalid_by_reason[r]);
        first = 0;
    }
    printf("},\n");
    printf(" \"check\": \"%s\", \"sockets\": %u, \"batch\": %u, \"rate\": %.1f, \"distinct\": %llu,\n",
           opt.check == CHECK_FULL ? "full" : "count", opt.sockets, opt.batch, opt.rate,
           (unsigned long long)opt.distinct);
    printf(" \"send_seconds\": %.6f, \"window_seconds\": %.6f, \"ready_seconds\": %.6f,\n", send_seconds,
           window_seconds, ready_seconds);
    printf(" \"offered_per_s\": %.1f, \"answers_per_s\": %.1f,\n", send_seconds > 0 ? (double)sent / send_seconds : 0,
           send_seconds > 0 ? (double)answers_valid / send_seconds : 0);
    printf(" \"latency\": {\"samples\": %llu, \"matched_by\": \"%s\", \"mean_us\": %.3f, \"p50_us\": %.3f,"
           " \"p90_us\": %.3f, \"p99_us\": %.3f, \"p999_us\": %.3f, \"max_us\": %.3f},\n",
           (unsigned long long)latency_samples, opt.check == CHECK_FULL ? "nonce" : "order",
           latency_samples ? (double)latency_sum_ns / (double)latency_samples / 1000.0 : -1.0,
           percentile_us(0.50), percentile_us(0.90), percentile_us(0.99), percentile_us(0.999),
           (double)latency_max_ns / 1000.0);
    printf(" \"drops\": {\"generator\": %llu, \"target\": %llu},\n", (unsigned long long)own_drops,
           (unsigned long long)target_drops);
    printf(" \"cores\": [");
    for (int c = 0; c < cores_after->count; c++)
        printf("%s{\"busy_ticks\": %llu, \"total_ticks\": %llu}", c ? ", " : "",
               (unsigned long long)(cores_after->busy[c] - cores_before->busy[c]),
               (unsigned long long)(cores_after->total[c] - cores_before->total[c]));
    printf("],\n");
    printf(" \"clock_ticks_per_s\": %ld, \"cpu\": {", sysconf(_SC_CLK_TCK));
    for (unsigned w = 0; w < opt.watched_count; w++) {
        printf("%s\"%d\": {\"found\": %s, \"utime_ticks\": %llu, \"stime_ticks\": %llu, \"runtime_ns\": %llu}",
               w ? ", " : "", (int)opt.watched[w], before[w].ok && after[w].ok ? "true" : "false",
               (unsigned long long)(after[w].utime_ticks - before[w].utime_ticks),
               (unsigned long long)(after[w].stime_ticks - before[w].stime_ticks),
               (unsigned long long)(after[w].runtime_ns - before[w].runtime_ns));
    }
    printf("}}\n");
    fflush(stdout);
}

static void on_signal(int signal_number) {
    (void)signal_number;
    interrupted = 1;
}

int main(int argc, char **argv) {
    parse_options(argc, argv);
    load_template();
    prepare_buffers();

    struct sigaction action = {0};
    action.sa_handler = on_signal;
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);

    int epoll_fd = epoll_create1(0);
    if (epoll_fd < 0)
        fail("epoll_create1");
    open_sockets(epoll_fd);

    /* Wait until the target answers, one probe every 20 ms. */
    uint64_t ready_start = now_ns();
    uint64_t ready_deadline = ready_start + (uint64_t)(opt.wait_ready * 1e9);
    uint64_t next_probe = 0;
    while (answers_valid == 0) {
        uint64_t now = now_ns();
        if (now >= ready_deadline || interrupted) {
            fprintf(stderr, "loadgen: timed out: no valid answer from %s:%u within %.1f s; is the system under test running?\n",
                    inet_ntoa(opt.target.sin_addr), ntohs(opt.target.sin_port), opt.wait_ready);
            return 3;
        }
        if (now >= next_probe) {
            send_batch(0, 1);
            next_probe = now + 20000000u;
        }
        poll_answers(epoll_fd, 1);
    }
    /* Let late answers to the probes arrive, then start the window. */
    uint64_t settle = now_ns() + 50000000u;
    while (now_ns() < settle)
        poll_answers(epoll_fd, 5);
    double ready_seconds = (double)(now_ns() - ready_start) / 1e9;
    reset_counters();

    struct cpu_sample before[MAX_WATCHED], after[MAX_WATCHED];
    uint64_t own_drops_before, target_drops_before, own_drops_after, target_drops_after;
    read_drops(&own_drops_before, &target_drops_before);
    static struct core_sample cores_before, cores_after;
    read_cores(&cores_before);
    for (unsigned w = 0; w < opt.watched_count; w++)
        before[w] = read_cpu(opt.watched[w]);

    uint64_t start = now_ns();
    uint64_t end = opt.duration > 0 ? start + (uint64_t)(opt.duration * 1e9) : UINT64_MAX;
    unsigned socket_index = 0;
    uint64_t now = start;
    while (!interrupted && now < end && (opt.count == 0 || sent < opt.count)) {
        unsigned want = opt.batch;
        if (opt.rate > 0) {
            double due = opt.rate * (double)(now - start) / 1e9 - (double)sent;
            want = due >= opt.batch ? opt.batch : (unsigned)(due > 0 ? due : 0);
        }
        if (opt.count && sent + want > opt.count)
            want = (unsigned)(opt.count - sent);
        if (want > 0) {
            send_batch(socket_index, want);
            socket_index = (socket_index + 1) % opt.sockets;
        }
        poll_answers(epoll_fd, 0);
        now = now_ns();
    }
    uint64_t send_end = now_ns();
    uint64_t drain_end = send_end + (uint64_t)(opt.drain * 1e9);
    /* Wait out the whole drain time even when all is answered, so that
     * every window ends the same way. */
    while (!interrupted && now_ns() < drain_end)
        poll_answers(epoll_fd, 1);
    uint64_t window_end = now_ns();

    for (unsigned w = 0; w < opt.watched_count; w++)
        after[w] = read_cpu(opt.watched[w]);
    read_cores(&cores_after);
    read_drops(&own_drops_after, &target_drops_after);

    print_result((double)(send_end - start) / 1e9, (double)(window_end - start) / 1e9, before, after,
                 own_drops_after - own_drops_before, target_drops_after - target_drops_before, ready_seconds,
                 &cores_before, &cores_after);
    return 0;
}
