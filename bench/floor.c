/*
 * The kernel floor for the fastredir benchmarks: a UDP responder that
 * answers every datagram with the same 74-byte reply and parses nothing.
 * It costs what the socket calls cost (one blocking recvmmsg and one
 * sendmmsg per batch) and nothing more, so no redirector can be cheaper
 * per answer on the same kernel.  74 bytes is the size of a REDIRECT that
 * names an IPv4 gateway and echoes a 32-byte nonce.
 *
 * Usage: floor ADDRESS PORT [BATCH]   (IPv4; stops on SIGTERM or SIGINT)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_BATCH 1024
#define SLOT 65536
#define REPLY_LENGTH 74

static volatile sig_atomic_t stopping;

static void on_signal(int signal_number) {
    (void)signal_number;
    stopping = 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: floor ADDRESS PORT [BATCH]\n");
        return 2;
    }
    unsigned batch = argc > 3 ? (unsigned)atoi(argv[3]) : 64;
    if (batch < 1 || batch > MAX_BATCH) {
        fprintf(stderr, "floor: BATCH must be 1 to %d, not %s\n", MAX_BATCH, argv[3]);
        return 2;
    }
    struct sockaddr_in local = {0};
    local.sin_family = AF_INET;
    local.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &local.sin_addr) != 1) {
        fprintf(stderr, "floor: not an IPv4 address: %s\n", argv[1]);
        return 2;
    }

    /* No SA_RESTART: a signal ends the blocking recvmmsg with EINTR. */
    struct sigaction action = {0};
    action.sa_handler = on_signal;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int buffer = 8 << 20; /* the receive buffer fastredir requests */
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof(buffer)) < 0 ||
        bind(fd, (struct sockaddr *)&local, sizeof(local)) < 0) {
        fprintf(stderr, "floor: listening on %s:%s failed: %s\n", argv[1], argv[2], strerror(errno));
        return 1;
    }

    static unsigned char data[MAX_BATCH][SLOT];
    static struct sockaddr_in names[MAX_BATCH];
    static struct mmsghdr requests[MAX_BATCH], replies[MAX_BATCH];
    static struct iovec request_iov[MAX_BATCH], reply_iov[MAX_BATCH];
    static unsigned char reply[REPLY_LENGTH] = {[17] = 0x20, [18] = 34, [19] = 0x20, [27] = REPLY_LENGTH};
    for (unsigned i = 0; i < batch; i++) {
        request_iov[i].iov_base = data[i];
        request_iov[i].iov_len = SLOT;
        requests[i].msg_hdr.msg_iov = &request_iov[i];
        requests[i].msg_hdr.msg_iovlen = 1;
        requests[i].msg_hdr.msg_name = &names[i];
        reply_iov[i].iov_base = reply;
        reply_iov[i].iov_len = REPLY_LENGTH;
        replies[i].msg_hdr.msg_iov = &reply_iov[i];
        replies[i].msg_hdr.msg_iovlen = 1;
        replies[i].msg_hdr.msg_name = &names[i];
    }
    printf("floor: listening on %s:%s\n", argv[1], argv[2]);
    fflush(stdout);

    unsigned long long answered = 0;
    while (!stopping) {
        for (unsigned i = 0; i < batch; i++)
            requests[i].msg_hdr.msg_namelen = sizeof(names[i]);
        int count = recvmmsg(fd, requests, batch, MSG_WAITFORONE, NULL);
        if (count < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "floor: recvmmsg failed: %s\n", strerror(errno));
            return 1;
        }
        for (int i = 0; i < count; i++)
            replies[i].msg_hdr.msg_namelen = requests[i].msg_hdr.msg_namelen;
        int done = 0;
        while (done < count) {
            int result = sendmmsg(fd, replies + done, (unsigned)(count - done), 0);
            if (result < 0) {
                if (errno == EINTR)
                    continue;
                done++; /* skip the datagram that failed */
                continue;
            }
            done += result;
            answered += (unsigned long long)result;
        }
    }
    printf("floor: answered %llu\n", answered);
    return 0;
}
