/* Connections and datagrams: connect, and sendto/sendmsg/sendmmsg with a destination (UDP without
 * connect, TCP Fast Open). No _GNU_SOURCE here: it turns connect()'s address into a transparent union. */
#define _DEFAULT_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "hook.h"

#ifndef MSG_FASTOPEN
#define MSG_FASTOPEN 0x20000000
#endif

/* struct mmsghdr is declared only under _GNU_SOURCE; its layout is fixed by the kernel ABI. */
struct mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};

#define HOOK(fam, ret, name, params) HOOK_##fam(ret, name, params)
#define HOOK_NET(ret, name, params) static __attribute__((unused)) ret(*real_##name) params;
#define HOOK_EXEC(ret, name, params)
#define HOOK_FILE(ret, name, params)
#define HOOK_PATH(ret, name, params)
#define HOOK_FD(ret, name, params)
#include "hooks.def"

static size_t put_port(char *out, size_t at, int port)
{
    char digits[6];
    int n = 0;
    out[at++] = ':';
    do {
        digits[n++] = (char)('0' + port % 10);
        port /= 10;
    } while (port);
    while (n)
        out[at++] = digits[--n];
    out[at] = 0;
    return at;
}

/* Judges a destination; 0 to go on, -1 with errno EACCES when blocked. `flags`: the send flags. */
int hook_judge_net(int fd, const struct sockaddr *addr, socklen_t len, int access, int flags)
{
    const struct hook_rules *r = hook_rules();
    if (!addr || len < (socklen_t)sizeof(sa_family_t) ||
        !hook_wants(r, PREGUARD_RULES_HAS_NET | PREGUARD_RULES_HAS_UNIX, PREGUARD_DEFAULT_NETWORK))
        return 0;
    int type = 0, saved = errno;
    socklen_t tl = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0)
        type = 0;
    errno = saved;
    if (access == PREGUARD_ACCESS_SEND && type == SOCK_STREAM) {
        if (!(flags & MSG_FASTOPEN))
            return 0; /* a connected stream ignores the address */
        access = PREGUARD_ACCESS_CONNECT;
    }
    int proto = type == SOCK_STREAM ? PREGUARD_BIT_TCP : type == SOCK_DGRAM ? PREGUARD_BIT_UDP : 3;
    char target[HOOK_PATH_MAX + 64];
    size_t tlen = 0;
    struct hook_match m = {0};
    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const void *)addr;
        int port = ntohs(in->sin_port);
        hook_match_net(r, 0, (const unsigned char *)&in->sin_addr, port, proto, &m);
        inet_ntop(AF_INET, &in->sin_addr, target, sizeof target);
        tlen = put_port(target, strlen(target), port);
    } else if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const void *)addr;
        int port = ntohs(in6->sin6_port);
        const unsigned char *a = in6->sin6_addr.s6_addr;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            /* ::ffff:a.b.c.d reaches a.b.c.d: judged as the IPv4 address */
            hook_match_net(r, 0, a + 12, port, proto, &m);
            inet_ntop(AF_INET, a + 12, target, sizeof target);
            tlen = put_port(target, strlen(target), port);
        } else {
            hook_match_net(r, 1, a, port, proto, &m);
            target[0] = '[';
            inet_ntop(AF_INET6, a, target + 1, sizeof target - 8);
            tlen = strlen(target);
            target[tlen++] = ']';
            tlen = put_port(target, tlen, port);
        }
    } else if (addr->sa_family == AF_UNIX && len > (socklen_t)offsetof(struct sockaddr_un, sun_path)) {
        const struct sockaddr_un *un = (const void *)addr;
        size_t max = (size_t)len - offsetof(struct sockaddr_un, sun_path);
        if (max > sizeof un->sun_path)
            max = sizeof un->sun_path;
        char path[sizeof un->sun_path + 2];
        if (un->sun_path[0] == 0) {
            /* abstract: no path to match, only a kind's default applies */
            path[0] = '@';
            memcpy(path + 1, un->sun_path + 1, max - 1);
            tlen = max;
            memcpy(target, path, tlen);
            target[tlen] = 0;
        } else {
            size_t n = strnlen(un->sun_path, max);
            memcpy(path, un->sun_path, n);
            path[n] = 0;
            int c = hook_canon(AT_FDCWD, path, 1, target);
            if (c < 0)
                return 0;
            tlen = (size_t)c;
            hook_match_path(r, PREGUARD_T_UNIX_EXACT, PREGUARD_T_UNIX_GLOB, target, tlen, 0, &m);
        }
    } else {
        return 0;
    }
    if (hook_conclude(r, &m, PREGUARD_DEFAULT_NETWORK, PREGUARD_KIND_NETWORK, access, target, tlen) == HOOK_DENY) {
        errno = EACCES;
        return -1;
    }
    return 0;
}

HOOK_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    if (hook_enter() && JUDGE(hook_judge_net(fd, addr, len, PREGUARD_ACCESS_CONNECT, 0)))
        return -1;
    return REAL(connect)(fd, addr, len);
}

HOOK_EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *addr, socklen_t len)
{
    if (addr && hook_enter() && JUDGE(hook_judge_net(fd, addr, len, PREGUARD_ACCESS_SEND, flags)))
        return -1;
    return REAL(sendto)(fd, buf, n, flags, addr, len);
}

HOOK_EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    if (msg && msg->msg_name && hook_enter() &&
        JUDGE(hook_judge_net(fd, msg->msg_name, msg->msg_namelen, PREGUARD_ACCESS_SEND, flags)))
        return -1;
    return REAL(sendmsg)(fd, msg, flags);
}

#ifdef PREGUARD_MUSL
typedef unsigned int mmsg_flags;
#else
typedef int mmsg_flags;
#endif

int sendmmsg(int fd, struct mmsghdr *vec, unsigned int count, mmsg_flags flags);
/* Sends the messages before the first blocked one, as the kernel does on a mid-vector error. */
HOOK_EXPORT int sendmmsg(int fd, struct mmsghdr *vec, unsigned int count, mmsg_flags flags)
{
    if (vec && hook_enter()) {
        unsigned int ok = 0;
        hook_init();
        int saved = errno;
        for (; ok < count; ok++) {
            const struct msghdr *h = &vec[ok].msg_hdr;
            if (h->msg_name && hook_judge_net(fd, h->msg_name, h->msg_namelen, PREGUARD_ACCESS_SEND, (int)flags) < 0)
                break;
        }
        hook_leave();
        if (ok == 0 && count > 0 && errno == EACCES)
            return -1;
        errno = saved;
        count = ok;
    }
    return REAL(sendmmsg)(fd, vec, count, flags);
}
