# cython: language_level=3
"""The Cython fast path: the per-datagram decision in C, and the batched
recvmmsg/sendmmsg socket loop that runs it without the GIL.

Contract: `process()` here and `fastredir.fallback.process()` take the same
arguments and return the same verdict and reply bytes for every input.
`fallback.py` is the readable reference; every check below follows it, in
the same order.  The verdict numbers mirror `fastredir.verdict.Verdict`.

The socket loop creates no Python object for a datagram it answers or
drops: it works on buffers allocated once per `Loop`.  Only datagrams for
the Python slow path become `bytes`, under the GIL.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from fastredir.verdict import Verdict

IMPLEMENTATION = "cython"


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    struct sockaddr_storage:
        sa_family_t ss_family

    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags

    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len

    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type

    int recvmmsg(int fd, mmsghdr *vmessages, unsigned int vlen, int flags, timespec *tmo)
    int sendmmsg(int fd, mmsghdr *vmessages, unsigned int vlen, int flags)
    cmsghdr *CMSG_FIRSTHDR(msghdr *msgh)
    cmsghdr *CMSG_NXTHDR(msghdr *msgh, cmsghdr *cmsg)
    unsigned char *CMSG_DATA(cmsghdr *cmsg)
    size_t CMSG_SPACE(size_t length)
    size_t CMSG_LEN(size_t length)
    int AF_INET
    int AF_INET6
    int MSG_DONTWAIT
    int MSG_TRUNC


cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr

    struct in6_addr:
        unsigned char s6_addr[16]

    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr

    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id

    struct in_pktinfo:
        int ipi_ifindex
        in_addr ipi_spec_dst
        in_addr ipi_addr

    struct in6_pktinfo:
        in6_addr ipi6_addr
        unsigned int ipi6_ifindex

    int IPPROTO_IP
    int IPPROTO_IPV6
    int IP_PKTINFO
    int IPV6_PKTINFO
    uint16_t ntohs(uint16_t)


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents

    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN


# Verdict codes; tests check that they equal fastredir.verdict.Verdict.
cdef enum:
    V_REDIRECTED = 0
    V_TRUNCATED = 1
    V_ESP = 2
    V_NAT_KEEPALIVE = 3
    V_BAD_SOURCE = 4
    V_UNSUPPORTED_VERSION = 5
    V_LENGTH_MISMATCH = 6
    V_SLOW_PATH = 7
    V_UNSUPPORTED_EXCHANGE = 8
    V_RESPONSE = 9
    V_NOT_INITIATOR = 10
    V_INVALID_SPI = 11
    V_INVALID_MESSAGE_ID = 12
    V_MALFORMED = 13
    V_UNSUPPORTED_CRITICAL = 14
    V_INVALID_NONCE = 15
    V_INVALID_NOTIFY = 16
    V_REDIRECT_NOT_SUPPORTED = 17
    V_NO_GATEWAY = 18
    V_REPLY_TOO_LONG = 19
    V_OVERSIZE = 20
    V_SEND_FAILED = 21
    V_SLOW_PATH_FULL = 22
    V_ALL_FULL = 23
    V_REDIRECTED_OVERFLOW = 24
    V_COUNT = 25

VERDICT_CODES = {
    "REDIRECTED": V_REDIRECTED, "TRUNCATED": V_TRUNCATED, "ESP": V_ESP,
    "NAT_KEEPALIVE": V_NAT_KEEPALIVE, "BAD_SOURCE": V_BAD_SOURCE,
    "UNSUPPORTED_VERSION": V_UNSUPPORTED_VERSION, "LENGTH_MISMATCH": V_LENGTH_MISMATCH,
    "SLOW_PATH": V_SLOW_PATH, "UNSUPPORTED_EXCHANGE": V_UNSUPPORTED_EXCHANGE,
    "RESPONSE": V_RESPONSE, "NOT_INITIATOR": V_NOT_INITIATOR, "INVALID_SPI": V_INVALID_SPI,
    "INVALID_MESSAGE_ID": V_INVALID_MESSAGE_ID, "MALFORMED": V_MALFORMED,
    "UNSUPPORTED_CRITICAL": V_UNSUPPORTED_CRITICAL, "INVALID_NONCE": V_INVALID_NONCE,
    "INVALID_NOTIFY": V_INVALID_NOTIFY, "REDIRECT_NOT_SUPPORTED": V_REDIRECT_NOT_SUPPORTED,
    "NO_GATEWAY": V_NO_GATEWAY, "REPLY_TOO_LONG": V_REPLY_TOO_LONG, "OVERSIZE": V_OVERSIZE,
    "SEND_FAILED": V_SEND_FAILED, "SLOW_PATH_FULL": V_SLOW_PATH_FULL,
    "ALL_FULL": V_ALL_FULL, "REDIRECTED_OVERFLOW": V_REDIRECTED_OVERFLOW,
}

# Protocol numbers (RFC 7296, RFC 5685), as in fastredir.ikev2.
cdef enum:
    HEADER_LENGTH = 28
    EXCHANGE_IKE_SA_INIT = 34
    FLAG_INITIATOR = 0x08
    FLAG_RESPONSE = 0x20
    PAYLOAD_NONCE = 40
    PAYLOAD_NOTIFY = 41
    PAYLOAD_SK = 46
    PAYLOAD_SKF = 53
    NOTIFY_REDIRECT = 16407
    NOTIFY_REDIRECT_SUPPORTED = 16406
    NOTIFY_REDIRECTED_FROM = 16408
    IDENTITY_IPV4 = 1
    IDENTITY_IPV6 = 2
    IDENTITY_FQDN = 3
    NONCE_MIN = 16
    NONCE_MAX = 256
    NO_GATEWAY = 0xFFFF
    # Largest identity record: type, length and 255 bytes.
    IDENTITY_RECORD = 257
    EXCLUSION_KEY_MAX = 256
    # Largest reply: marker, header, notify header, identity, nonce.
    REPLY_MAX = 4 + 28 + 8 + 257 + 256
    MAX_SOCKETS = 64
    CONTROL_SPACE = 64
    # fastredir.selection flag bits
    FLAG_USABLE = 0x01
    FLAG_ROOM = 0x02
    FLAG_ANYCAST = 0x04
    # fastredir.counters layout, in uint64 cells
    MAX_LISTENER_IDS = 64
    MAX_GATEWAY_IDS = 4096
    VERDICT_SLOTS = 32
    BATCH_BUCKETS = 11
    VERDICTS_OFFSET = 0
    REDIRECTS_OFFSET = MAX_LISTENER_IDS * VERDICT_SLOTS
    BATCHES_OFFSET = REDIRECTS_OFFSET + MAX_LISTENER_IDS * MAX_GATEWAY_IDS
    REGION_CELLS = BATCHES_OFFSET + BATCH_BUCKETS


cdef struct Exclusion:
    uint8_t key[EXCLUSION_KEY_MAX]
    uint16_t key_length
    uint16_t gateway


cdef struct CTable:
    uint32_t size
    uint64_t seed
    int key_mode
    uint16_t *slots
    uint16_t *alternates
    uint32_t gateway_count
    uint8_t *identities  # gateway_count records of IDENTITY_RECORD bytes
    uint32_t exclusion_count
    Exclusion *exclusions  # sorted like Python bytes
    uint16_t *counter_ids  # per gateway: its column in the redirect counters
    uint8_t *flags  # per gateway: FLAG_USABLE, FLAG_ROOM, FLAG_ANYCAST
    uint32_t *scores  # per gateway: load score, lower is less loaded
    uint16_t spares[2][4]  # GatewayState.spares
    bint overflow_least_loaded


cdef class CompiledTable:
    """A `GatewayTable` copied into C arrays for the fast path."""

    cdef CTable c
    cdef readonly object source

    def __cinit__(self):
        memset(&self.c, 0, sizeof(CTable))

    def __init__(self, table):
        cdef uint32_t i
        cdef bytes identity, key
        self.source = table
        self.c.size = table.size
        self.c.seed = table.seed
        self.c.key_mode = int(table.key_mode)
        self.c.gateway_count = len(table.gateways)
        self.c.slots = <uint16_t *> malloc(max(table.size, 1) * sizeof(uint16_t))
        self.c.alternates = <uint16_t *> malloc(max(table.size, 1) * sizeof(uint16_t))
        self.c.identities = <uint8_t *> calloc(max(self.c.gateway_count, 1), IDENTITY_RECORD)
        self.c.exclusion_count = len(table.exclusions)
        self.c.exclusions = <Exclusion *> calloc(max(self.c.exclusion_count, 1), sizeof(Exclusion))
        self.c.counter_ids = <uint16_t *> calloc(max(self.c.gateway_count, 1), sizeof(uint16_t))
        self.c.flags = <uint8_t *> calloc(max(self.c.gateway_count, 1), sizeof(uint8_t))
        self.c.scores = <uint32_t *> calloc(max(self.c.gateway_count, 1), sizeof(uint32_t))
        if not (self.c.slots and self.c.alternates and self.c.identities and self.c.exclusions
                and self.c.counter_ids and self.c.flags and self.c.scores):
            raise MemoryError()
        for i, counter_id in enumerate(table.counter_ids()):
            if not 0 <= counter_id < MAX_GATEWAY_IDS:
                raise ValueError(f"gateway counter id {counter_id} is outside 0 to {MAX_GATEWAY_IDS - 1}")
            self.c.counter_ids[i] = counter_id
        for i in range(table.size):
            self.c.slots[i] = table.gateway_at(i)
            self.c.alternates[i] = table.alternate_at(i)
        for i, identity in enumerate(table.encoded_identities()):
            memcpy(self.c.identities + i * IDENTITY_RECORD, PyBytes_AS_STRING(identity), len(identity))
        for i, (key, gateway) in enumerate(table.exclusions):
            if len(key) > EXCLUSION_KEY_MAX:
                raise ValueError("exclusion key too long")
            memcpy(self.c.exclusions[i].key, PyBytes_AS_STRING(key), len(key))
            self.c.exclusions[i].key_length = len(key)
            self.c.exclusions[i].gateway = gateway
        self.update_state(table.current_state())

    def update_state(self, state):
        """Swap in new gateway flags and scores (same gateways, same
        order).  Call it between Loop.run() calls, never during one."""
        cdef uint32_t i
        cdef int kind, position
        if len(state.flags) != self.c.gateway_count or len(state.scores) != self.c.gateway_count:
            raise ValueError(f"state for {len(state.flags)} gateways, table has {self.c.gateway_count}")
        for i in range(self.c.gateway_count):
            self.c.flags[i] = state.flags[i]
            self.c.scores[i] = state.scores[i]
        for kind in range(2):
            for position in range(4):
                self.c.spares[kind][position] = state.spares[kind][position]
        self.c.overflow_least_loaded = state.overflow_least_loaded

    def __dealloc__(self):
        free(self.c.slots)
        free(self.c.alternates)
        free(self.c.identities)
        free(self.c.exclusions)
        free(self.c.counter_ids)
        free(self.c.flags)
        free(self.c.scores)


def compile_table(table):
    return CompiledTable(table)


# ---------------------------------------------------------------------------
# The per-datagram decision (sans-I/O)
# ---------------------------------------------------------------------------

cdef inline uint16_t load16(const uint8_t *p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef inline uint32_t load32(const uint8_t *p) noexcept nogil:
    return (<uint32_t> p[0] << 24) | (<uint32_t> p[1] << 16) | (<uint32_t> p[2] << 8) | p[3]


cdef inline bint all_zero(const uint8_t *p, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(n):
        if p[i]:
            return False
    return True


cdef inline uint64_t client_hash(const uint8_t *key, size_t n, uint64_t seed) noexcept nogil:
    # Same function as fastredir.selection.client_hash.
    cdef uint64_t h = 0xCBF29CE484222325ULL ^ seed
    cdef size_t i
    for i in range(n):
        h = (h ^ key[i]) * 0x100000001B3ULL
    h ^= h >> 33
    h *= 0xFF51AFD7ED558CCDULL
    h ^= h >> 33
    h *= 0xC4CEB9FE1A85EC53ULL
    h ^= h >> 33
    return h


cdef inline bint is_reply_address_valid(const uint8_t *address, size_t n, uint16_t port) noexcept nogil:
    if port == 0:
        return False
    if all_zero(address, n):
        return False
    if n == 4:
        if (address[0] & 0xF0) == 0xE0:
            return False
        return not (address[0] == 0xFF and address[1] == 0xFF and address[2] == 0xFF and address[3] == 0xFF)
    return address[0] != 0xFF


cdef inline bint is_known_payload(uint8_t payload_type) noexcept nogil:
    # fastredir.ikev2.KNOWN_PAYLOAD_TYPES
    return (33 <= payload_type <= 49) or payload_type == 53 or payload_type == 54


cdef inline bint is_slow_path_exchange(uint8_t exchange) noexcept nogil:
    # fastredir.fallback.SLOW_PATH_EXCHANGES
    return exchange == 35 or exchange == 36 or exchange == 37 or exchange == 43 or exchange == 44


cdef int classify_header(const uint8_t *m, size_t n) noexcept nogil:
    if n < HEADER_LENGTH:
        return V_TRUNCATED
    if (m[17] >> 4) != 2:
        return V_UNSUPPORTED_VERSION
    if load32(m + 24) != n:
        return V_LENGTH_MISMATCH
    if m[18] != EXCHANGE_IKE_SA_INIT:
        if is_slow_path_exchange(m[18]):
            return V_INVALID_SPI if all_zero(m + 8, 8) else V_SLOW_PATH
        return V_UNSUPPORTED_EXCHANGE
    if m[19] & FLAG_RESPONSE:
        return V_RESPONSE
    if not (m[19] & FLAG_INITIATOR):
        return V_NOT_INITIATOR
    if all_zero(m, 8) or not all_zero(m + 8, 8):
        return V_INVALID_SPI
    if load32(m + 20) != 0:
        return V_INVALID_MESSAGE_ID
    return -1


cdef struct Scan:
    const uint8_t *nonce
    size_t nonce_length
    int nonce_count
    bint supported
    int from_count
    bint from_valid
    uint8_t excluded_key[EXCLUSION_KEY_MAX]
    size_t excluded_key_length  # 0 when there is none


cdef bint scan_redirected_from(const uint8_t *data, size_t n, Scan *scan) noexcept nogil:
    # Store the exclusion key; return False when the data is malformed.
    cdef size_t i, length
    cdef uint8_t c
    if n < 2 or <size_t> data[1] + 2 != n:
        return False
    length = data[1]
    if data[0] == IDENTITY_IPV4:
        if length != 4:
            return False
    elif data[0] == IDENTITY_IPV6:
        if length != 16:
            return False
    elif data[0] == IDENTITY_FQDN:
        if length == 0:
            return False
    else:
        return False
    scan.excluded_key[0] = data[0]
    for i in range(length):
        c = data[2 + i]
        if data[0] == IDENTITY_FQDN:
            if c < 0x21 or c > 0x7E:
                return False
            if 0x41 <= c <= 0x5A:
                c += 0x20
        scan.excluded_key[1 + i] = c
    scan.excluded_key_length = 1 + length
    if data[0] == IDENTITY_FQDN and scan.excluded_key[length] == 0x2E:
        # Names compare without the trailing dot (selection.normalize_fqdn).
        scan.excluded_key_length -= 1
    return True


cdef bint scan_notify(const uint8_t *body, size_t n, Scan *scan) noexcept nogil:
    cdef size_t spi_size
    cdef uint16_t notify_type
    if n < 4:
        return False
    spi_size = body[1]
    if 4 + spi_size > n:
        return False
    notify_type = load16(body + 2)
    if notify_type == NOTIFY_REDIRECT_SUPPORTED:
        scan.supported = True
    elif notify_type == NOTIFY_REDIRECTED_FROM:
        scan.from_count += 1
        scan.excluded_key_length = 0
        if not scan_redirected_from(body + 4 + spi_size, n - 4 - spi_size, scan):
            scan.excluded_key_length = 0
            scan.from_valid = False
    return True


cdef int scan_payloads(const uint8_t *m, size_t n, Scan *scan) noexcept nogil:
    cdef uint8_t next_payload = m[16]
    cdef uint8_t payload_type, critical
    cdef size_t position = HEADER_LENGTH
    cdef size_t length
    while next_payload != 0:
        if n - position < 4:
            return V_MALFORMED
        payload_type = next_payload
        next_payload = m[position]
        critical = m[position + 1] & 0x80
        length = load16(m + position + 2)
        if length < 4 or length > n - position:
            return V_MALFORMED
        if payload_type == PAYLOAD_NONCE:
            scan.nonce_count += 1
            scan.nonce = m + position + 4
            scan.nonce_length = length - 4
        elif payload_type == PAYLOAD_NOTIFY:
            if not scan_notify(m + position + 4, length - 4, scan):
                return V_MALFORMED
        elif payload_type == PAYLOAD_SK or payload_type == PAYLOAD_SKF:
            # RFC 7296 section 3.14: nothing of IKE_SA_INIT is encrypted.
            return V_MALFORMED
        elif critical and not is_known_payload(payload_type):
            return V_UNSUPPORTED_CRITICAL
        position += length
    if position != n:
        return V_MALFORMED
    return -1


cdef int check_content(const Scan *scan) noexcept nogil:
    if scan.nonce_count != 1 or scan.nonce_length < NONCE_MIN or scan.nonce_length > NONCE_MAX:
        return V_INVALID_NONCE
    if scan.from_count > 1 or not scan.from_valid:
        return V_INVALID_NOTIFY
    if not scan.supported and scan.from_count == 0:
        return V_REDIRECT_NOT_SUPPORTED
    return -1


cdef int compare_key(const uint8_t *a, size_t a_length, const Exclusion *b) noexcept nogil:
    # Orders keys as Python orders bytes.
    cdef size_t common = a_length if a_length < b.key_length else b.key_length
    cdef int result = memcmp(a, b.key, common)
    if result != 0:
        return result
    if a_length == b.key_length:
        return 0
    return -1 if a_length < b.key_length else 1


cdef int find_excluded(const CTable *t, const Scan *scan) noexcept nogil:
    cdef int low = 0
    cdef int high = <int> t.exclusion_count - 1
    cdef int middle, result
    if scan.excluded_key_length == 0:
        return -1
    while low <= high:
        middle = (low + high) // 2
        result = compare_key(scan.excluded_key, scan.excluded_key_length, &t.exclusions[middle])
        if result == 0:
            return t.exclusions[middle].gateway
        if result < 0:
            high = middle - 1
        else:
            low = middle + 1
    return -1


cdef inline bint may_take(const CTable *t, uint16_t gateway, int excluded, bint unicast_only,
                          bint need_room) noexcept nogil:
    cdef uint8_t flags
    if gateway == NO_GATEWAY or gateway == excluded:
        return False
    flags = t.flags[gateway]
    if not (flags & FLAG_USABLE) or (unicast_only and (flags & FLAG_ANYCAST)):
        return False
    return (flags & FLAG_ROOM) != 0 or not need_room


cdef int select_gateway(const CTable *t, const uint8_t *address, size_t address_length,
                        const uint8_t *initiator_spi, const Scan *scan, bint unicast_only,
                        uint16_t *gateway_out) noexcept nogil:
    # Same rules as fallback.select_gateway: two candidates from the slot,
    # the less loaded wins; then the spares; then the overflow action.
    cdef uint8_t key[24]
    cdef size_t key_length = address_length
    cdef uint32_t slot
    cdef uint16_t first, second
    cdef bint first_ok, second_ok
    cdef int excluded, position
    cdef const uint16_t *spares = t.spares[1 if unicast_only else 0]
    gateway_out[0] = NO_GATEWAY
    if t.size == 0:
        return V_NO_GATEWAY
    memcpy(key, address, address_length)
    if t.key_mode == 1:
        memcpy(key + address_length, initiator_spi, 8)
        key_length += 8
    slot = client_hash(key, key_length, t.seed) % t.size
    excluded = find_excluded(t, scan)

    first = t.slots[slot]
    second = t.alternates[slot]
    first_ok = may_take(t, first, excluded, unicast_only, True)
    second_ok = may_take(t, second, excluded, unicast_only, True)
    if first_ok and second_ok:
        gateway_out[0] = second if t.scores[second] < t.scores[first] else first
        return V_REDIRECTED
    if first_ok or second_ok:
        gateway_out[0] = first if first_ok else second
        return V_REDIRECTED

    for position in range(2):
        if may_take(t, spares[position], excluded, unicast_only, True):
            gateway_out[0] = spares[position]
            return V_REDIRECTED
    for position in range(2, 4):
        if may_take(t, spares[position], excluded, unicast_only, False):
            if not t.overflow_least_loaded:
                return V_ALL_FULL
            gateway_out[0] = spares[position]
            return V_REDIRECTED_OVERFLOW
    return V_NO_GATEWAY


cdef size_t build_redirect(uint8_t *out, const uint8_t *initiator_spi, const uint8_t *identity,
                           const uint8_t *nonce, size_t nonce_length) noexcept nogil:
    cdef size_t identity_length = 2 + identity[1]
    cdef size_t notify_length = 8 + identity_length + nonce_length
    cdef size_t total = HEADER_LENGTH + notify_length
    memcpy(out, initiator_spi, 8)
    memset(out + 8, 0, 8)
    out[16] = PAYLOAD_NOTIFY
    out[17] = 0x20
    out[18] = EXCHANGE_IKE_SA_INIT
    out[19] = FLAG_RESPONSE
    memset(out + 20, 0, 4)
    out[24] = (total >> 24) & 0xFF
    out[25] = (total >> 16) & 0xFF
    out[26] = (total >> 8) & 0xFF
    out[27] = total & 0xFF
    out[28] = 0
    out[29] = 0
    out[30] = (notify_length >> 8) & 0xFF
    out[31] = notify_length & 0xFF
    out[32] = 0
    out[33] = 0
    out[34] = NOTIFY_REDIRECT >> 8
    out[35] = NOTIFY_REDIRECT & 0xFF
    memcpy(out + 36, identity, identity_length)
    memcpy(out + 36 + identity_length, nonce, nonce_length)
    return total


cdef int process_c(const CTable *t, const uint8_t *datagram, size_t n, bint nat_t,
                   const uint8_t *address, size_t address_length, uint16_t port,
                   bint unicast_only, uint8_t *out, size_t *out_length,
                   uint16_t *gateway_out) noexcept nogil:
    # Decide about one datagram; on V_REDIRECTED or V_REDIRECTED_OVERFLOW,
    # out holds the reply (REPLY_MAX bytes available) and *out_length its
    # length.
    cdef const uint8_t *m = datagram
    cdef size_t length = n
    cdef size_t marker = 0
    cdef int verdict
    cdef Scan scan
    cdef uint16_t gateway
    cdef size_t reply_length
    gateway_out[0] = NO_GATEWAY
    out_length[0] = 0

    if nat_t:
        if n == 1 and datagram[0] == 0xFF:
            return V_NAT_KEEPALIVE
        if n < 4:
            return V_TRUNCATED
        if not all_zero(datagram, 4):
            return V_ESP
        m = datagram + 4
        length = n - 4
        marker = 4

    if not is_reply_address_valid(address, address_length, port):
        return V_BAD_SOURCE

    verdict = classify_header(m, length)
    if verdict >= 0:
        return verdict
    memset(&scan, 0, sizeof(Scan))
    scan.from_valid = True
    verdict = scan_payloads(m, length, &scan)
    if verdict >= 0:
        return verdict
    verdict = check_content(&scan)
    if verdict >= 0:
        return verdict

    verdict = select_gateway(t, address, address_length, m, &scan, unicast_only, &gateway)
    if gateway == NO_GATEWAY:
        return verdict
    if HEADER_LENGTH + 8 + 2 + t.identities[gateway * IDENTITY_RECORD + 1] + scan.nonce_length > length:
        return V_REPLY_TOO_LONG
    if marker:
        memset(out, 0, 4)
    reply_length = build_redirect(out + marker, m, t.identities + gateway * IDENTITY_RECORD,
                                  scan.nonce, scan.nonce_length)
    out_length[0] = marker + reply_length
    gateway_out[0] = gateway
    return verdict


cdef check_client(bytes client_address, int client_port):
    if client_address is None or len(client_address) not in (4, 16):
        raise ValueError("client_address must be a packed IPv4 or IPv6 address")
    if not 0 <= client_port <= 0xFFFF:
        raise ValueError(f"client_port must be 0 to 65535, not {client_port}")


def process(CompiledTable table, bytes datagram not None, bint nat_t, bytes client_address,
            int client_port, bint unicast_only=False):
    """Python entry to the C decision, same contract as fallback.process()."""
    cdef uint8_t out[REPLY_MAX]
    cdef size_t out_length = 0
    cdef uint16_t gateway = NO_GATEWAY
    cdef int verdict
    check_client(client_address, client_port)
    verdict = process_c(&table.c, <const uint8_t *> PyBytes_AS_STRING(datagram),
                        PyBytes_GET_SIZE(datagram), nat_t,
                        <const uint8_t *> PyBytes_AS_STRING(client_address),
                        PyBytes_GET_SIZE(client_address), client_port, unicast_only,
                        out, &out_length, &gateway)
    if verdict == V_REDIRECTED or verdict == V_REDIRECTED_OVERFLOW:
        return Verdict(verdict), PyBytes_FromStringAndSize(<char *> out, out_length), gateway
    return Verdict(verdict), None, NO_GATEWAY


def process_many(CompiledTable table, list datagrams, bint nat_t, bytes client_address, int client_port):
    """Decide about each datagram of `datagrams` (a list of bytes) and
    build the replies into one scratch buffer; return how many were
    redirected.  This is the per-packet work of the socket loop without
    the sockets, for microbenchmarks; it creates no Python object per
    datagram."""
    cdef uint8_t out[REPLY_MAX]
    cdef size_t out_length = 0
    cdef uint16_t gateway = NO_GATEWAY
    cdef Py_ssize_t i, count = len(datagrams)
    cdef long redirected = 0
    cdef int verdict
    cdef object datagram
    cdef const uint8_t *address = <const uint8_t *> PyBytes_AS_STRING(client_address)
    cdef size_t address_length = PyBytes_GET_SIZE(client_address)
    check_client(client_address, client_port)
    for i in range(count):
        datagram = datagrams[i]
        if type(datagram) is not bytes:
            raise TypeError(f"datagrams must be bytes, not {type(datagram).__name__}")
        verdict = process_c(&table.c, <const uint8_t *> PyBytes_AS_STRING(datagram),
                            PyBytes_GET_SIZE(datagram), nat_t, address, address_length,
                            client_port, False, out, &out_length, &gateway)
        if verdict == V_REDIRECTED or verdict == V_REDIRECTED_OVERFLOW:
            redirected += 1
    return redirected


def hash_key(bytes key, uint64_t seed):
    """The C client hash, exposed so tests can compare it with Python's."""
    return client_hash(<const uint8_t *> PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), seed)


# ---------------------------------------------------------------------------
# The socket loop (I/O)
# ---------------------------------------------------------------------------

cdef inline int64_t now_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t> ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef class Loop:
    """Receive, decide and answer on a set of UDP sockets, in batches.

    `sockets` is a list of (socket, nat_t) pairs of non-blocking UDP
    sockets.  On a socket with IP_PKTINFO (IPv4) or IPV6_RECVPKTINFO
    (IPv6) enabled, each reply leaves from the address its request was
    sent to; without, from the address the socket is bound to.  The loop
    keeps a reference to each socket, so they stay open while it exists.

    `anycast[i]` marks socket i as an anycast listener (no anycast gateway
    is chosen for its clients); `listener_ids[i]` is its row in the
    counters (default: i).  `counters` is a writable buffer laid out as
    fastredir.counters describes, for example shared memory read by
    another process; without it the loop keeps its own.  When `wake_fd`
    becomes readable, run() returns, so its owner can apply updates.

    Datagrams for the slow path are queued as (listener index, data,
    source address, source port, destination address or None) tuples;
    take them with take_slow().
    """

    cdef int socket_count
    cdef list sockets
    cdef int fds[MAX_SOCKETS]
    cdef bint nat_t[MAX_SOCKETS]
    cdef bint anycast[MAX_SOCKETS]
    cdef uint64_t *listener_verdicts[MAX_SOCKETS]
    cdef uint64_t *listener_redirects[MAX_SOCKETS]
    cdef pollfd polls[MAX_SOCKETS + 1]
    cdef int poll_count
    cdef unsigned int batch
    cdef size_t slot_size
    cdef mmsghdr *receive
    cdef iovec *receive_iov
    cdef uint8_t *receive_data
    cdef sockaddr_storage *names
    cdef uint8_t *receive_control
    cdef mmsghdr *send
    cdef iovec *send_iov
    cdef uint8_t *send_data
    cdef uint8_t *send_control
    cdef uint16_t *send_gateway
    cdef uint8_t *send_verdict
    cdef int *slow_index
    cdef object counter_buffer
    cdef uint64_t *cells
    cdef CompiledTable table
    cdef list slow
    cdef public int slow_limit
    cdef bint slow_pending

    def __cinit__(self):
        self.receive = NULL
        self.receive_iov = NULL
        self.receive_data = NULL
        self.names = NULL
        self.receive_control = NULL
        self.send = NULL
        self.send_iov = NULL
        self.send_data = NULL
        self.send_control = NULL
        self.send_gateway = NULL
        self.send_verdict = NULL
        self.slow_index = NULL

    def __init__(self, sockets, CompiledTable table, unsigned int batch=64,
                 size_t slot_size=65536, int slow_limit=4096, anycast=None,
                 listener_ids=None, counters=None, int wake_fd=-1):
        cdef int i, listener_id
        cdef unsigned char[::1] view
        if not 0 < len(sockets) <= MAX_SOCKETS:
            raise ValueError(f"a loop serves 1 to {MAX_SOCKETS} sockets")
        if not 0 < batch <= 1024:
            raise ValueError("batch must be 1 to 1024")
        if counters is None:
            counters = bytearray(REGION_CELLS * 8)
        view = memoryview(counters).cast("B")
        if view.shape[0] < REGION_CELLS * 8:
            raise ValueError(f"counters must have at least {REGION_CELLS * 8} bytes")
        if (<size_t> &view[0]) % 8:
            raise ValueError("counters must be aligned to 8 bytes")
        self.counter_buffer = counters
        self.cells = <uint64_t *> &view[0]
        self.socket_count = len(sockets)
        self.sockets = list(sockets)
        for i, (sock, nat_t) in enumerate(self.sockets):
            fd = sock.fileno()
            listener_id = i if listener_ids is None else listener_ids[i]
            if not 0 <= listener_id < MAX_LISTENER_IDS:
                raise ValueError(f"listener id {listener_id} is outside 0 to {MAX_LISTENER_IDS - 1}")
            self.fds[i] = fd
            self.nat_t[i] = nat_t
            self.anycast[i] = False if anycast is None else anycast[i]
            self.listener_verdicts[i] = self.cells + VERDICTS_OFFSET + listener_id * VERDICT_SLOTS
            self.listener_redirects[i] = self.cells + REDIRECTS_OFFSET + listener_id * MAX_GATEWAY_IDS
            self.polls[i].fd = fd
            self.polls[i].events = POLLIN
        self.poll_count = self.socket_count
        if wake_fd >= 0:
            self.polls[self.socket_count].fd = wake_fd
            self.polls[self.socket_count].events = POLLIN
            self.poll_count += 1
        self.batch = batch
        self.slot_size = slot_size
        self.slow = []
        self.slow_limit = slow_limit
        self.receive = <mmsghdr *> calloc(batch, sizeof(mmsghdr))
        self.receive_iov = <iovec *> calloc(batch, sizeof(iovec))
        self.receive_data = <uint8_t *> malloc(batch * slot_size)
        self.names = <sockaddr_storage *> calloc(batch, sizeof(sockaddr_storage))
        self.receive_control = <uint8_t *> calloc(batch, CONTROL_SPACE)
        self.send = <mmsghdr *> calloc(batch, sizeof(mmsghdr))
        self.send_iov = <iovec *> calloc(batch, sizeof(iovec))
        self.send_data = <uint8_t *> malloc(batch * REPLY_MAX)
        self.send_control = <uint8_t *> calloc(batch, CONTROL_SPACE)
        self.send_gateway = <uint16_t *> calloc(batch, sizeof(uint16_t))
        self.send_verdict = <uint8_t *> calloc(batch, sizeof(uint8_t))
        self.slow_index = <int *> calloc(batch, sizeof(int))
        if not (self.receive and self.receive_iov and self.receive_data and self.names
                and self.receive_control and self.send and self.send_iov and self.send_data
                and self.send_control and self.send_gateway and self.send_verdict
                and self.slow_index):
            raise MemoryError()
        for i in range(batch):
            self.receive_iov[i].iov_base = self.receive_data + i * slot_size
            self.receive_iov[i].iov_len = slot_size
            self.receive[i].msg_hdr.msg_iov = &self.receive_iov[i]
            self.receive[i].msg_hdr.msg_iovlen = 1
            self.receive[i].msg_hdr.msg_name = &self.names[i]
            self.receive[i].msg_hdr.msg_control = self.receive_control + i * CONTROL_SPACE
            self.send_iov[i].iov_base = self.send_data + i * REPLY_MAX
            self.send[i].msg_hdr.msg_iov = &self.send_iov[i]
            self.send[i].msg_hdr.msg_iovlen = 1
            self.send[i].msg_hdr.msg_control = self.send_control + i * CONTROL_SPACE
        self.set_table(table)

    def __dealloc__(self):
        free(self.receive)
        free(self.receive_iov)
        free(self.receive_data)
        free(self.names)
        free(self.receive_control)
        free(self.send)
        free(self.send_iov)
        free(self.send_data)
        free(self.send_control)
        free(self.send_gateway)
        free(self.send_verdict)
        free(self.slow_index)

    def set_table(self, CompiledTable table):
        """Swap in a new table; call it between run() calls."""
        self.table = table

    @property
    def current_table(self):
        return self.table

    def verdict_counts(self):
        """Return the per-verdict counts of this loop's listeners."""
        cdef int i, verdict
        totals = [0] * V_COUNT
        for i in range(self.socket_count):
            for verdict in range(V_COUNT):
                totals[verdict] += self.listener_verdicts[i][verdict]
        return totals

    def gateway_counts(self):
        """Return answers sent per gateway index of the current table,
        summed over this loop's listeners."""
        cdef int i
        cdef uint32_t gateway
        totals = []
        for gateway in range(self.table.c.gateway_count):
            count = 0
            for i in range(self.socket_count):
                count += self.listener_redirects[i][self.table.c.counter_ids[gateway]]
            totals.append(count)
        return totals

    def batch_stats(self):
        """Return (batches received, datagrams in them)."""
        cdef int i
        batches = 0
        for i in range(BATCH_BUCKETS):
            batches += self.cells[BATCHES_OFFSET + i]
        return batches, sum(self.verdict_counts())

    def take_slow(self):
        """Return and clear the queued slow-path datagrams."""
        queued = self.slow
        self.slow = []
        self.slow_pending = False
        return queued

    def run(self, int timeout_ms):
        """Serve until `timeout_ms` has passed, a signal interrupts the
        wait, the wake fd is readable, or slow-path datagrams are queued.
        Return the number of datagrams received."""
        cdef int64_t deadline = now_ms() + timeout_ms
        cdef int64_t remaining
        cdef uint64_t received = 0
        cdef int i, ready
        cdef bint stop = self.slow_pending
        with nogil:
            while not stop:
                remaining = deadline - now_ms()
                if remaining < 0:
                    break
                ready = poll(self.polls, self.poll_count, <int> remaining)
                if ready <= 0:
                    break
                for i in range(self.socket_count):
                    if self.polls[i].revents:
                        received += self.drain(i)
                stop = self.slow_pending
                if self.poll_count > self.socket_count and self.polls[self.socket_count].revents:
                    stop = True
        return received

    cdef uint64_t drain(self, int index) noexcept nogil:
        # Read batches from one socket until it is empty or a few batches
        # have passed, so other sockets get their turn.
        cdef uint64_t total = 0
        cdef int count, rounds, bucket
        for rounds in range(16):
            count = self.receive_batch(index)
            if count <= 0:
                break
            total += count
            bucket = 0
            while bucket < BATCH_BUCKETS - 1 and (count >> (bucket + 1)) != 0:
                bucket += 1
            self.cells[BATCHES_OFFSET + bucket] += 1
            self.answer_batch(index, count)
            if <unsigned int> count < self.batch:
                break
        return total

    cdef int receive_batch(self, int index) noexcept nogil:
        cdef unsigned int i
        cdef int count
        for i in range(self.batch):
            self.receive[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
            self.receive[i].msg_hdr.msg_controllen = CONTROL_SPACE
            self.receive[i].msg_hdr.msg_flags = 0
        while True:
            count = recvmmsg(self.fds[index], self.receive, self.batch, MSG_DONTWAIT, NULL)
            if count >= 0 or errno != EINTR:
                return count

    cdef void answer_batch(self, int index, int count) noexcept nogil:
        cdef int i, verdict
        cdef int replies = 0
        cdef int slow_count = 0
        cdef size_t reply_length
        cdef uint16_t gateway
        cdef uint16_t port
        cdef const uint8_t *address
        cdef size_t address_length
        cdef msghdr *header
        cdef sockaddr_in *v4
        cdef sockaddr_in6 *v6
        cdef uint64_t *verdicts = self.listener_verdicts[index]
        for i in range(count):
            header = &self.receive[i].msg_hdr
            if header.msg_flags & MSG_TRUNC:
                verdicts[V_OVERSIZE] += 1
                continue
            if self.names[i].ss_family == AF_INET:
                v4 = <sockaddr_in *> &self.names[i]
                address = <const uint8_t *> &v4.sin_addr
                address_length = 4
                port = ntohs(v4.sin_port)
            elif self.names[i].ss_family == AF_INET6:
                v6 = <sockaddr_in6 *> &self.names[i]
                address = v6.sin6_addr.s6_addr
                address_length = 16
                port = ntohs(v6.sin6_port)
            else:
                verdicts[V_BAD_SOURCE] += 1
                continue
            verdict = process_c(&self.table.c, <const uint8_t *> self.receive_iov[i].iov_base,
                                self.receive[i].msg_len, self.nat_t[index], address,
                                address_length, port, self.anycast[index],
                                self.send_data + replies * REPLY_MAX, &reply_length, &gateway)
            if verdict == V_REDIRECTED or verdict == V_REDIRECTED_OVERFLOW:
                self.prepare_reply(replies, i, reply_length)
                self.send_gateway[replies] = gateway
                self.send_verdict[replies] = verdict
                replies += 1
            elif verdict == V_SLOW_PATH:
                self.slow_index[slow_count] = i
                slow_count += 1
            else:
                verdicts[verdict] += 1
        if replies:
            self.send_replies(index, replies)
        if slow_count:
            with gil:
                self.queue_slow(index, slow_count)

    cdef void prepare_reply(self, int reply, int request, size_t length) noexcept nogil:
        # Address the reply to the request's source, from the address the
        # request was sent to (IP_PKTINFO / IPV6_PKTINFO).
        cdef msghdr *out = &self.send[reply].msg_hdr
        cdef msghdr *received = &self.receive[request].msg_hdr
        cdef cmsghdr *cmsg
        cdef cmsghdr *reply_cmsg
        cdef in_pktinfo *info4
        cdef in_pktinfo *reply4
        cdef in6_pktinfo *info6
        cdef in6_pktinfo *reply6
        self.send_iov[reply].iov_len = length
        out.msg_name = &self.names[request]
        out.msg_namelen = received.msg_namelen
        out.msg_control = self.send_control + reply * CONTROL_SPACE
        out.msg_controllen = 0
        out.msg_flags = 0
        cmsg = CMSG_FIRSTHDR(received)
        while cmsg != NULL:
            if cmsg.cmsg_level == IPPROTO_IP and cmsg.cmsg_type == IP_PKTINFO:
                info4 = <in_pktinfo *> CMSG_DATA(cmsg)
                out.msg_controllen = CMSG_SPACE(sizeof(in_pktinfo))
                reply_cmsg = CMSG_FIRSTHDR(out)
                reply_cmsg.cmsg_level = IPPROTO_IP
                reply_cmsg.cmsg_type = IP_PKTINFO
                reply_cmsg.cmsg_len = CMSG_LEN(sizeof(in_pktinfo))
                reply4 = <in_pktinfo *> CMSG_DATA(reply_cmsg)
                memset(reply4, 0, sizeof(in_pktinfo))
                reply4.ipi_spec_dst = info4.ipi_addr
                return
            if cmsg.cmsg_level == IPPROTO_IPV6 and cmsg.cmsg_type == IPV6_PKTINFO:
                info6 = <in6_pktinfo *> CMSG_DATA(cmsg)
                out.msg_controllen = CMSG_SPACE(sizeof(in6_pktinfo))
                reply_cmsg = CMSG_FIRSTHDR(out)
                reply_cmsg.cmsg_level = IPPROTO_IPV6
                reply_cmsg.cmsg_type = IPV6_PKTINFO
                reply_cmsg.cmsg_len = CMSG_LEN(sizeof(in6_pktinfo))
                reply6 = <in6_pktinfo *> CMSG_DATA(reply_cmsg)
                memcpy(&reply6.ipi6_addr, &info6.ipi6_addr, sizeof(in6_addr))
                # A link-local source needs its interface; others route freely.
                if info6.ipi6_addr.s6_addr[0] == 0xFE and (info6.ipi6_addr.s6_addr[1] & 0xC0) == 0x80:
                    reply6.ipi6_ifindex = info6.ipi6_ifindex
                else:
                    reply6.ipi6_ifindex = 0
                return
            cmsg = CMSG_NXTHDR(received, cmsg)
        out.msg_control = NULL

    cdef void send_replies(self, int index, int count) noexcept nogil:
        cdef int sent = 0
        cdef int result, i
        cdef uint64_t *verdicts = self.listener_verdicts[index]
        cdef uint64_t *redirects = self.listener_redirects[index]
        while sent < count:
            result = sendmmsg(self.fds[index], self.send + sent, count - sent, MSG_DONTWAIT)
            if result < 0:
                if errno == EINTR:
                    continue
                if errno == EAGAIN:
                    # The send buffer is full: these replies are lost.
                    verdicts[V_SEND_FAILED] += count - sent
                    return
                # This one reply failed (say, no route to its address).
                verdicts[V_SEND_FAILED] += 1
                sent += 1
                continue
            for i in range(sent, sent + result):
                verdicts[self.send_verdict[i]] += 1
                redirects[self.table.c.counter_ids[self.send_gateway[i]]] += 1
            sent += result

    cdef void queue_slow(self, int index, int count):
        cdef int k, i
        cdef sockaddr_in *v4
        cdef sockaddr_in6 *v6
        cdef msghdr *header
        cdef cmsghdr *cmsg
        for k in range(count):
            i = self.slow_index[k]
            if len(self.slow) >= self.slow_limit:
                self.listener_verdicts[index][V_SLOW_PATH_FULL] += 1
                continue
            self.listener_verdicts[index][V_SLOW_PATH] += 1
            data = PyBytes_FromStringAndSize(<char *> self.receive_iov[i].iov_base, self.receive[i].msg_len)
            header = &self.receive[i].msg_hdr
            destination = None
            cmsg = CMSG_FIRSTHDR(header)
            while cmsg != NULL:
                if cmsg.cmsg_level == IPPROTO_IP and cmsg.cmsg_type == IP_PKTINFO:
                    destination = PyBytes_FromStringAndSize(
                        <char *> &(<in_pktinfo *> CMSG_DATA(cmsg)).ipi_addr, 4)
                elif cmsg.cmsg_level == IPPROTO_IPV6 and cmsg.cmsg_type == IPV6_PKTINFO:
                    destination = PyBytes_FromStringAndSize(
                        <char *> &(<in6_pktinfo *> CMSG_DATA(cmsg)).ipi6_addr, 16)
                cmsg = CMSG_NXTHDR(header, cmsg)
            if self.names[i].ss_family == AF_INET:
                v4 = <sockaddr_in *> &self.names[i]
                source = PyBytes_FromStringAndSize(<char *> &v4.sin_addr, 4)
                port = ntohs(v4.sin_port)
            else:
                v6 = <sockaddr_in6 *> &self.names[i]
                source = PyBytes_FromStringAndSize(<char *> v6.sin6_addr.s6_addr, 16)
                port = ntohs(v6.sin6_port)
            self.slow.append((index, data, source, port, destination))
            self.slow_pending = True
