/* Lightweight RTSP-over-TLS reader for the fan-out benchmark: one process, one epoll loop, many
 * TLS connections (OpenSSL 3), so the readers' own cost does not hide the server's.
 *
 * Per connection: TLS with the server certificate verified against CAFILE (chain and IP address),
 * then OPTIONS, DESCRIBE, SETUP video + audio (RTP/AVP/TCP interleaved 0-1 / 2-3), PLAY, with
 * Digest (SHA-256 or MD5, qop=auth or RFC 2069 form) when challenged. While playing it checks
 * every RTP packet: sequence continuity per channel (every missing sequence number counts as a
 * lost packet), RTP timestamps never going backwards, time to first frame (TCP connect until the
 * last packet of the first complete keyframe) and per-frame forwarding latency (arrival wallclock
 * minus the frame's capture time, from the RTP timestamp mapped through the server's RTCP SR;
 * only frames captured after the connection started, the cached GOP a client starts with being
 * old by design). "raw" mode skips RTSP and reads interleaved RTP straight away (the TLS floor).
 *
 *   reader rtsp|raw HOST PORT PATH USER PASSWORD CAFILE CONNECTIONS SECONDS [CONNECTS_PER_S] [sha256|md5]
 *
 * Prints "connected" once every connection plays or failed, then after SECONDS one JSON line.
 * All parsing of server bytes is bounded: fixed buffers, length-checked, failures close the
 * connection and are counted.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF (128 * 1024)      /* > one interleaved frame (4 + 65535) plus a full TLS record */
#define MAX_HEAD (16 * 1024)   /* RTSP response header block */
#define MAX_BODY (16 * 1024)   /* SDP */
#define MAX_HDRS 64
#define OUTBUF 4096
#define SETUP_TIMEOUT_S 30.0
#define KEEPALIVE_S 20.0
#define MAX_INFLIGHT 32        /* connections in TLS/RTSP setup at once */
#define LAT_BUCKETS 100000     /* 0.1 ms buckets up to 10 s */

enum state { ST_IDLE, ST_CONNECTING, ST_HANDSHAKE, ST_RTSP, ST_PLAYING, ST_FAILED, ST_CLOSED };
enum step { S_OPTIONS, S_DESCRIBE, S_SETUP_V, S_SETUP_A, S_PLAY, S_KEEPALIVE };

struct conn {
    int fd;
    SSL *ssl;
    enum state st;
    enum step step;
    double started, started_wall, last_keepalive;
    unsigned char rbuf[RBUF];
    size_t rlen;
    char out[OUTBUF];
    size_t olen;
    int cseq, auth_retry;
    char session[128];
    char content_base[512];
    char ctrl_v[512], ctrl_a[512];
    int has_audio;
    /* digest challenge */
    int have_chal, qop, sha256;
    char realm[128], nonce[256], opaque[256];
    unsigned nc;
    /* media checks */
    uint64_t bytes, packets[4];
    int have_seq[4];
    uint16_t last_seq[4];
    int have_ts[4];
    uint32_t last_ts[4];
    uint64_t gaps, ts_back, frames;
    int in_key, frame_start, got_ttff;
    double ttff;
    int have_sr;
    double sr_wall;
    uint32_t sr_ts;
};

static struct conn *conns;
static int nconn, epfd;
static const char *g_host, *g_path, *g_user, *g_pass, *g_mode;
static int g_port, g_prefer_md5;
static SSL_CTX *g_ctx;
static uint64_t lat_hist[LAT_BUCKETS + 1];
static uint64_t lat_count;
static int lat_negative;
static char errs[5][160], close_reason[160];
static int nerr, playing_or_failed, inflight;
static int raw_mode;

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fail(struct conn *c, const char *fmt, ...) {
    if (c->st == ST_FAILED || c->st == ST_CLOSED) return;
    int was_setup = c->st != ST_PLAYING;
    if (nerr < 5) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errs[nerr], sizeof errs[nerr], fmt, ap);
        va_end(ap);
        for (char *p = errs[nerr]; *p; p++)
            if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = '\'';
    }
    nerr++;
    c->st = was_setup ? ST_FAILED : ST_CLOSED;
    if (was_setup) {
        playing_or_failed++;
        inflight--;
    }
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
}

/* --- digest ---------------------------------------------------------------------------------- */
static void hexhash(int sha256, const char *data, char *out) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(data, strlen(data), md, &len, sha256 ? EVP_sha256() : EVP_md5(), NULL);
    for (unsigned i = 0; i < len; i++) sprintf(out + 2 * i, "%02x", md[i]);
    out[2 * len] = 0;
}

/* copy the value of key (quoted or token) from a challenge into out; 0 if absent or too long */
static int chal_param(const char *chal, const char *key, char *out, size_t cap) {
    size_t kl = strlen(key);
    for (const char *p = chal; *p; p++) {
        if ((p == chal || p[-1] == ' ' || p[-1] == ',') && strncasecmp(p, key, kl) == 0 && p[kl] == '=') {
            const char *v = p + kl + 1;
            size_t n = 0;
            if (*v == '"') {
                v++;
                while (v[n] && v[n] != '"') n++;
            } else {
                while (v[n] && v[n] != ',' && v[n] != ' ') n++;
            }
            if (n >= cap) return 0;
            memcpy(out, v, n);
            out[n] = 0;
            return 1;
        }
    }
    return 0;
}

static void take_challenge(struct conn *c, const char *chal) {
    char alg[32] = "MD5", qop[64] = "";
    if (strncasecmp(chal, "Digest ", 7) != 0) return;
    chal_param(chal, "algorithm", alg, sizeof alg);
    int sha = strcasecmp(alg, "SHA-256") == 0;
    if (!sha && strcasecmp(alg, "MD5") != 0) return;
    /* take the preferred algorithm; any offered one if nothing better was seen */
    int want_sha = !g_prefer_md5;
    if (c->have_chal && (c->sha256 == want_sha || sha != want_sha)) return;
    char realm[128], nonce[256];
    if (!chal_param(chal, "realm", realm, sizeof realm) || !chal_param(chal, "nonce", nonce, sizeof nonce)) return;
    strcpy(c->realm, realm);
    strcpy(c->nonce, nonce);
    if (!chal_param(chal, "opaque", c->opaque, sizeof c->opaque)) c->opaque[0] = 0;
    c->qop = chal_param(chal, "qop", qop, sizeof qop) && strstr(qop, "auth") != NULL;
    c->sha256 = sha;
    c->have_chal = 1;
    c->nc = 0;
}

static int authorization(struct conn *c, const char *method, const char *uri, char *out, size_t cap) {
    char buf[1024], ha1[129], ha2[129], resp[129], cnonce[17];
    snprintf(buf, sizeof buf, "%s:%s:%s", g_user, c->realm, g_pass);
    hexhash(c->sha256, buf, ha1);
    snprintf(buf, sizeof buf, "%s:%s", method, uri);
    hexhash(c->sha256, buf, ha2);
    const char *alg = c->sha256 ? "SHA-256" : "MD5";
    if (c->qop) {
        unsigned char rnd[8];
        RAND_bytes(rnd, sizeof rnd);
        for (int i = 0; i < 8; i++) sprintf(cnonce + 2 * i, "%02x", rnd[i]);
        c->nc++;
        snprintf(buf, sizeof buf, "%s:%s:%08x:%s:auth:%s", ha1, c->nonce, c->nc, cnonce, ha2);
        hexhash(c->sha256, buf, resp);
        return snprintf(out, cap,
                        "Authorization: Digest username=\"%s\", realm=\"%s\", nonce=\"%s\", uri=\"%s\", "
                        "algorithm=%s, qop=auth, nc=%08x, cnonce=\"%s\", response=\"%s\"%s%s%s\r\n",
                        g_user, c->realm, c->nonce, uri, alg, c->nc, cnonce, resp,
                        c->opaque[0] ? ", opaque=\"" : "", c->opaque, c->opaque[0] ? "\"" : "");
    }
    snprintf(buf, sizeof buf, "%s:%s:%s", ha1, c->nonce, ha2);
    hexhash(c->sha256, buf, resp);
    return snprintf(out, cap,
                    "Authorization: Digest username=\"%s\", realm=\"%s\", nonce=\"%s\", uri=\"%s\", "
                    "algorithm=%s, response=\"%s\"%s%s%s\r\n",
                    g_user, c->realm, c->nonce, uri, alg, resp,
                    c->opaque[0] ? ", opaque=\"" : "", c->opaque, c->opaque[0] ? "\"" : "");
}

/* --- output ------------------------------------------------------------------------------------ */
static void flush_out(struct conn *c) {
    while (c->olen > 0 && c->fd >= 0) {
        int n = SSL_write(c->ssl, c->out, (int)c->olen);
        if (n <= 0) {
            int e = SSL_get_error(c->ssl, n);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) return; /* retried on the next event */
            fail(c, "write failed (%d)", e);
            return;
        }
        memmove(c->out, c->out + n, c->olen - (size_t)n);
        c->olen -= (size_t)n;
    }
}

static void url_of(struct conn *c, const char *ctrl, char *out, size_t cap) {
    if (strncmp(ctrl, "rtsp://", 7) == 0 || strncmp(ctrl, "rtsps://", 8) == 0)
        snprintf(out, cap, "%s", ctrl);
    else if (strcmp(ctrl, "*") == 0 || !ctrl[0])
        snprintf(out, cap, "%s", c->content_base);
    else {
        size_t bl = strlen(c->content_base);
        snprintf(out, cap, "%s%s%s", c->content_base, bl && c->content_base[bl - 1] == '/' ? "" : "/", ctrl);
    }
}

static void send_request(struct conn *c) {
    char uri[1100], extra[700] = "", auth[2300] = "", req[OUTBUF];
    const char *method = "OPTIONS";
    switch (c->step) {
    case S_OPTIONS:
        snprintf(uri, sizeof uri, "%s", c->content_base);
        break;
    case S_DESCRIBE:
        method = "DESCRIBE";
        snprintf(uri, sizeof uri, "%s", c->content_base);
        snprintf(extra, sizeof extra, "Accept: application/sdp\r\n");
        break;
    case S_SETUP_V:
    case S_SETUP_A:
        method = "SETUP";
        url_of(c, c->step == S_SETUP_V ? c->ctrl_v : c->ctrl_a, uri, sizeof uri);
        snprintf(extra, sizeof extra, "Transport: RTP/AVP/TCP;unicast;interleaved=%s\r\n",
                 c->step == S_SETUP_V ? "0-1" : "2-3");
        break;
    case S_PLAY:
        method = "PLAY";
        snprintf(uri, sizeof uri, "%s", c->content_base);
        /* no Range: a live camera is not seekable, and gst-rtsp-server seeks a file-backed shared
         * media on a PLAY with Range (restarting it for every client) */
        break;
    case S_KEEPALIVE:
        method = "GET_PARAMETER";
        snprintf(uri, sizeof uri, "%s", c->content_base);
        break;
    }
    if (c->have_chal) authorization(c, method, uri, auth, sizeof auth);
    char sess[160] = "";
    if (c->session[0]) snprintf(sess, sizeof sess, "Session: %s\r\n", c->session);
    int n = snprintf(req, sizeof req, "%s %s RTSP/1.0\r\nCSeq: %d\r\nUser-Agent: rtsp-bench-reader\r\n%s%s%s\r\n",
                     method, uri, ++c->cseq, sess, auth, extra);
    if (n <= 0 || (size_t)n >= sizeof req || c->olen + (size_t)n > OUTBUF) {
        fail(c, "request too large");
        return;
    }
    memcpy(c->out + c->olen, req, (size_t)n);
    c->olen += (size_t)n;
    flush_out(c);
}

/* --- RTSP responses ---------------------------------------------------------------------------- */
struct response {
    int status;
    char *hdr_name[MAX_HDRS], *hdr_val[MAX_HDRS];
    int nhdr;
    char *body;
    size_t body_len;
};

static const char *header(struct response *r, const char *name) {
    for (int i = 0; i < r->nhdr; i++)
        if (strcasecmp(r->hdr_name[i], name) == 0) return r->hdr_val[i];
    return NULL;
}

/* parse one response at buf[0..len); returns bytes consumed, 0 if incomplete, -1 if malformed.
 * head/body are copied into scratch (NUL-terminated) so the receive buffer may move on. */
static long parse_response(const unsigned char *buf, size_t len, struct response *r, char *scratch) {
    size_t lim = len < MAX_HEAD ? len : MAX_HEAD;
    const unsigned char *end = memmem(buf, lim, "\r\n\r\n", 4);
    if (!end) return len >= MAX_HEAD ? -1 : 0;
    size_t hl = (size_t)(end - buf);
    memcpy(scratch, buf, hl);
    scratch[hl] = 0;
    if (strncmp(scratch, "RTSP/1.0 ", 9) != 0) return -1;
    r->status = atoi(scratch + 9);
    r->nhdr = 0;
    char *save = NULL, *line = strtok_r(scratch, "\r\n", &save);
    while ((line = strtok_r(NULL, "\r\n", &save)) != NULL) {
        char *colon = strchr(line, ':');
        if (!colon) return -1;
        if (r->nhdr == MAX_HDRS) return -1;
        *colon = 0;
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        r->hdr_name[r->nhdr] = line;
        r->hdr_val[r->nhdr++] = v;
    }
    const char *cl = header(r, "Content-Length");
    long blen = cl ? strtol(cl, NULL, 10) : 0;
    if (blen < 0 || blen > MAX_BODY) return -1;
    if (hl + 4 + (size_t)blen > len) return 0;
    r->body = scratch + hl + 1;
    memcpy(r->body, buf + hl + 4, (size_t)blen);
    r->body[blen] = 0;
    r->body_len = (size_t)blen;
    return (long)(hl + 4 + (size_t)blen);
}

static void parse_sdp(struct conn *c, char *sdp) {
    char *save = NULL, *line;
    int media = 0; /* 0 session, 1 video, 2 audio, 3 other */
    c->ctrl_v[0] = c->ctrl_a[0] = 0;
    c->has_audio = 0;
    for (line = strtok_r(sdp, "\r\n", &save); line; line = strtok_r(NULL, "\r\n", &save)) {
        if (strncmp(line, "m=", 2) == 0) {
            /* the backchannel (sendonly) would be a third track; the first audio is ours */
            media = strncmp(line, "m=video", 7) == 0 ? 1 : strncmp(line, "m=audio", 7) == 0 && !c->has_audio ? 2 : 3;
            if (media == 2) c->has_audio = 1;
        } else if (strncmp(line, "a=control:", 10) == 0 && (media == 1 || media == 2)) {
            char *dst = media == 1 ? c->ctrl_v : c->ctrl_a;
            snprintf(dst, sizeof c->ctrl_v, "%s", line + 10);
        }
    }
}

static void on_response(struct conn *c, struct response *r) {
    double now = mono();
    if (c->step == S_KEEPALIVE || c->st == ST_PLAYING) {
        if (r->status != 200) fail(c, "keep-alive %d", r->status);
        return;
    }
    if (r->status == 401 && c->auth_retry < 2) {
        c->have_chal = 0;
        for (int i = 0; i < r->nhdr; i++)
            if (strcasecmp(r->hdr_name[i], "WWW-Authenticate") == 0) take_challenge(c, r->hdr_val[i]);
        if (!c->have_chal) {
            fail(c, "401 without a usable Digest challenge");
            return;
        }
        c->auth_retry++;
        send_request(c);
        return;
    }
    if (r->status != 200) {
        fail(c, "step %d: status %d", c->step, r->status);
        return;
    }
    c->auth_retry = 0;
    const char *s;
    switch (c->step) {
    case S_OPTIONS:
        c->step = S_DESCRIBE;
        break;
    case S_DESCRIBE:
        if ((s = header(r, "Content-Base")) != NULL) snprintf(c->content_base, sizeof c->content_base, "%s", s);
        parse_sdp(c, r->body);
        if (!c->ctrl_v[0]) {
            fail(c, "no video track in SDP");
            return;
        }
        c->step = S_SETUP_V;
        break;
    case S_SETUP_V:
    case S_SETUP_A:
        if ((s = header(r, "Session")) == NULL) {
            fail(c, "SETUP without Session");
            return;
        }
        size_t n = strcspn(s, ";");
        if (n >= sizeof c->session) {
            fail(c, "Session too long");
            return;
        }
        memcpy(c->session, s, n);
        c->session[n] = 0;
        c->step = c->step == S_SETUP_V && c->has_audio ? S_SETUP_A : S_PLAY;
        break;
    case S_PLAY:
        c->st = ST_PLAYING;
        c->last_keepalive = now;
        playing_or_failed++;
        inflight--;
        return;
    case S_KEEPALIVE:
        return;
    }
    send_request(c);
}

/* --- RTP checks -------------------------------------------------------------------------------- */
static void on_rtp(struct conn *c, int ch, const unsigned char *p, size_t len, double now_wall) {
    if (len < 12 || (p[0] >> 6) != 2) {
        c->gaps++; /* an unusable packet counts as lost */
        return;
    }
    uint16_t seq = (uint16_t)(p[2] << 8 | p[3]);
    uint32_t ts = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
    c->packets[ch]++;
    if (c->have_seq[ch]) {
        uint16_t d = (uint16_t)(seq - c->last_seq[ch]);
        if (d != 1) c->gaps += (d == 0 || d > 0x8000) ? 1 : (uint64_t)(d - 1);
    }
    c->have_seq[ch] = 1;
    c->last_seq[ch] = seq;
    if (c->have_ts[ch] && (int32_t)(ts - c->last_ts[ch]) < 0) c->ts_back++;
    c->have_ts[ch] = 1;
    c->last_ts[ch] = ts;
    if (ch != 0) return;
    size_t hl = 12 + 4 * (size_t)(p[0] & 0x0F);
    if (c->frame_start && len > hl + 1) {
        int nal = p[hl] & 0x1F;
        if (nal == 28) nal = p[hl + 1] & 0x1F;
        c->in_key = nal == 5 || nal == 7 || nal == 8 || nal == 24;
    }
    int marker = p[1] & 0x80;
    c->frame_start = marker != 0;
    if (!marker) return;
    c->frames++;
    if (!c->got_ttff && c->in_key) {
        c->got_ttff = 1;
        c->ttff = mono() - c->started;
    }
    if (c->have_sr) {
        double captured = c->sr_wall + (double)(int32_t)(ts - c->sr_ts) / 90000.0;
        if (captured >= c->started_wall) {
            double lat = now_wall - captured;
            if (lat < 0) {
                lat_negative++;
                lat = 0;
            }
            long b = lround(lat * 10000.0);
            lat_hist[b > LAT_BUCKETS ? LAT_BUCKETS : b]++;
            lat_count++;
        }
    }
}

static void on_rtcp(struct conn *c, const unsigned char *p, size_t len) {
    if (len >= 28 && p[1] == 200) {
        uint32_t msw = (uint32_t)p[8] << 24 | (uint32_t)p[9] << 16 | (uint32_t)p[10] << 8 | p[11];
        uint32_t lsw = (uint32_t)p[12] << 24 | (uint32_t)p[13] << 16 | (uint32_t)p[14] << 8 | p[15];
        c->sr_ts = (uint32_t)p[16] << 24 | (uint32_t)p[17] << 16 | (uint32_t)p[18] << 8 | p[19];
        c->sr_wall = (double)msw - 2208988800.0 + lsw / 4294967296.0;
        c->have_sr = 1;
    }
}

static void consume(struct conn *c) {
    static char scratch[MAX_HEAD + MAX_BODY + 2];
    size_t pos = 0;
    double now_wall = wall();
    while (pos < c->rlen && (c->st == ST_RTSP || c->st == ST_PLAYING)) {
        const unsigned char *b = c->rbuf + pos;
        size_t avail = c->rlen - pos;
        if (b[0] == '$') {
            if (avail < 4) break;
            int ch = b[1];
            size_t len = (size_t)b[2] << 8 | b[3];
            if (avail < 4 + len) break;
            if (ch == 0 || ch == 2) on_rtp(c, ch, b + 4, len, now_wall);
            else if (ch == 1) on_rtcp(c, b + 4, len);
            pos += 4 + len;
        } else if (raw_mode) {
            fail(c, "non-interleaved bytes in raw mode");
            return;
        } else {
            struct response r;
            long n = parse_response(b, avail, &r, scratch);
            if (n < 0) {
                fail(c, "malformed RTSP response");
                return;
            }
            if (n == 0) break;
            pos += (size_t)n;
            on_response(c, &r);
        }
    }
    if (pos) {
        memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
        c->rlen -= pos;
    }
}

/* --- connection lifecycle ---------------------------------------------------------------------- */
static void start_conn(struct conn *c) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    inet_pton(AF_INET, g_host, &sa.sin_addr);
    c->started = mono();
    c->started_wall = wall();
    c->frame_start = 1;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    inflight++;
    if (c->fd < 0) {
        fail(c, "socket: %s", strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->st = ST_CONNECTING;
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        fail(c, "connect: %s", strerror(errno));
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    c->ssl = SSL_new(g_ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_connect_state(c->ssl);
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), g_host);
    snprintf(c->content_base, sizeof c->content_base, "rtsps://%s:%d/%s", g_host, g_port, g_path);
}

static void set_events(struct conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void on_event(struct conn *c, uint32_t events) {
    if (c->fd < 0) return;
    if (c->st == ST_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            fail(c, "connect: %s", strerror(err));
            return;
        }
        c->st = ST_HANDSHAKE;
    }
    if (c->st == ST_HANDSHAKE) {
        int rc = SSL_do_handshake(c->ssl);
        if (rc != 1) {
            int e = SSL_get_error(c->ssl, rc);
            if (e == SSL_ERROR_WANT_READ) set_events(c, EPOLLIN);
            else if (e == SSL_ERROR_WANT_WRITE) set_events(c, EPOLLIN | EPOLLOUT);
            else {
                unsigned long ee = ERR_get_error();
                char eb[120];
                ERR_error_string_n(ee, eb, sizeof eb);
                fail(c, "TLS handshake: %s (verify %ld)", eb, SSL_get_verify_result(c->ssl));
            }
            return;
        }
        set_events(c, EPOLLIN);
        if (raw_mode) {
            c->st = ST_PLAYING;
            playing_or_failed++;
            inflight--;
        } else {
            c->st = ST_RTSP;
            c->step = S_OPTIONS;
            send_request(c);
        }
    }
    if (c->olen) flush_out(c);
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    for (;;) {
        if (c->fd < 0) return;
        if (c->rlen == RBUF) {
            fail(c, "receive buffer full");
            return;
        }
        int n = SSL_read(c->ssl, c->rbuf + c->rlen, (int)(RBUF - c->rlen));
        if (n <= 0) {
            int e = SSL_get_error(c->ssl, n);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
            if (c->st == ST_PLAYING) {
                if (!close_reason[0])
                    snprintf(close_reason, sizeof close_reason, "ssl error %d, errno %d, after %.1fs", e, errno,
                             mono() - c->started);
                c->st = ST_CLOSED;
                epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
            } else {
                fail(c, "closed during setup (step %d, ssl %d)", c->step, e);
            }
            return;
        }
        c->bytes += (uint64_t)n;
        c->rlen += (size_t)n;
        consume(c);
    }
}

static double pct_hist(double p) {
    if (!lat_count) return -1;
    uint64_t want = (uint64_t)(p * (double)(lat_count - 1)), seen = 0;
    for (int i = 0; i <= LAT_BUCKETS; i++) {
        seen += lat_hist[i];
        if (seen > want) return i / 10.0; /* ms */
    }
    return LAT_BUCKETS / 10.0;
}

static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 10) {
        fprintf(stderr, "usage: %s rtsp|raw HOST PORT PATH USER PASSWORD CAFILE N SECONDS [CONNECTS_PER_S] [sha256|md5]\n",
                argv[0]);
        return 2;
    }
    g_mode = argv[1];
    raw_mode = strcmp(g_mode, "raw") == 0;
    g_host = argv[2];
    g_port = atoi(argv[3]);
    g_path = argv[4];
    g_user = argv[5];
    g_pass = argv[6];
    nconn = atoi(argv[8]);
    double seconds = atof(argv[9]);
    double rate = argc > 10 ? atof(argv[10]) : 50.0;
    g_prefer_md5 = argc > 11 && strcmp(argv[11], "md5") == 0;
    if (nconn <= 0 || nconn > 20000 || rate <= 0) return 2;

    g_ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(g_ctx, TLS1_2_VERSION);
    if (SSL_CTX_load_verify_locations(g_ctx, argv[7], NULL) != 1) {
        fprintf(stderr, "cannot load CA %s\n", argv[7]);
        return 2;
    }
    SSL_CTX_set_verify(g_ctx, SSL_VERIFY_PEER, NULL);
    conns = calloc((size_t)nconn, sizeof *conns);
    if (!conns) return 2;
    for (int i = 0; i < nconn; i++) conns[i].fd = -1;
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event evs[256];
    double t0 = mono(), window_start = 0, window_end = 0, last_progress = t0;
    int next = 0, announced = 0;
    uint64_t base_bytes = 0;
    for (;;) {
        double now = mono();
        /* staggered connects: at most `rate` per second and MAX_INFLIGHT in setup at once */
        while (next < nconn && inflight < MAX_INFLIGHT && now >= t0 + next / rate) start_conn(&conns[next++]);
        for (int i = 0; i < next; i++) {
            struct conn *c = &conns[i];
            if ((c->st == ST_CONNECTING || c->st == ST_HANDSHAKE || c->st == ST_RTSP) && now - c->started > SETUP_TIMEOUT_S)
                fail(c, "setup timed out (state %d, step %d)", c->st, c->step);
            else if (c->st == ST_PLAYING && !raw_mode && now - c->last_keepalive > KEEPALIVE_S) {
                c->last_keepalive = now;
                c->step = S_KEEPALIVE;
                send_request(c);
            }
        }
        if (!announced && next == nconn && playing_or_failed == nconn) {
            announced = 1;
            printf("connected\n");
            fflush(stdout);
            window_start = mono();
            window_end = window_start + seconds;
            for (int i = 0; i < nconn; i++) base_bytes += conns[i].bytes;
        }
        if (announced && now >= window_end) break;
        if (now - last_progress >= 5.0) {
            last_progress = now;
            fprintf(stderr, "reader: %.0fs started %d, playing or failed %d, in setup %d, errors %d %s\n",
                    now - t0, next, playing_or_failed, inflight, nerr, nerr ? errs[0] : "");
        }
        int n = epoll_wait(epfd, evs, 256, 50);
        for (int i = 0; i < n; i++) on_event(evs[i].data.ptr, evs[i].events);
    }
    double elapsed = mono() - window_start;
    uint64_t bytes = 0, vp = 0, ap = 0, frames = 0, gaps = 0, ts_back = 0;
    int playing = 0, closed = 0, nttff = 0;
    double *ttff = calloc((size_t)nconn, sizeof *ttff);
    for (int i = 0; i < nconn; i++) {
        struct conn *c = &conns[i];
        bytes += c->bytes;
        vp += c->packets[0];
        ap += c->packets[2];
        frames += c->frames;
        gaps += c->gaps;
        ts_back += c->ts_back;
        if (c->st == ST_PLAYING) playing++;
        if (c->st == ST_CLOSED) closed++;
        if (c->got_ttff) ttff[nttff++] = c->ttff;
    }
    qsort(ttff, (size_t)nttff, sizeof *ttff, cmpd);
    /* "connections" = reached PLAY (still playing or closed by the server during the window) */
    printf("{\"connections\": %d, \"playing_at_end\": %d, \"closed\": %d, \"error_count\": %d, \"errors\": [",
           playing + closed, playing, closed, nerr);
    for (int i = 0; i < nerr && i < 5; i++) printf("%s\"%s\"", i ? ", " : "", errs[i]);
    printf("], \"close_reason\": \"%s\", \"bytes\": %llu, \"window_bytes\": %llu, \"window_s\": %.3f, \"video_packets\": %llu, "
           "\"audio_packets\": %llu, \"frames\": %llu, \"gaps\": %llu, \"ts_backwards\": %llu, "
           "\"latency_samples\": %llu, \"latency_negative\": %d, \"latency_p50_ms\": %.1f, \"latency_p99_ms\": %.1f, "
           "\"ttff\": [",
           close_reason, (unsigned long long)bytes, (unsigned long long)(bytes - base_bytes), elapsed, (unsigned long long)vp,
           (unsigned long long)ap, (unsigned long long)frames, (unsigned long long)gaps,
           (unsigned long long)ts_back, (unsigned long long)lat_count, lat_negative, pct_hist(0.5), pct_hist(0.99));
    for (int i = 0; i < nttff; i++) printf("%s%.4f", i ? ", " : "", ttff[i]);
    printf("]}\n");
    fflush(stdout);
    return 0;
}
