/* Inside the can transport: the shared bus that links to nodes on one adapter or interface join,
 * and the two backends beneath it (slcan.c, socketcan.c). Not part of the plugin ABI; the unit
 * tests include it to reach the pure parts. */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <linux/can.h>

#include "gw/plugin.h"

/* A link's frames waiting for recv_frame(); beyond that they are dropped (and counted). */
#define CAN_RX_QUEUE_MAX 512
/* A link's frames waiting in the bus's transmit queue; beyond that send_frame() fails with
 * -ENOBUFS. A whole 4095-byte ISO-TP message at 8 bytes a frame is 586 frames. */
#define CAN_TX_PER_LINK_MAX 1024
/* After this long idle, pacing restarts from now instead of from the last deadline (a wake-up
 * a little late is made up, a pause is not paid back with a burst). */
#define CAN_PACE_SLACK_NS 500000ULL

enum can_backend_kind {
        CAN_BACKEND_SLCAN,
        CAN_BACKEND_SOCKETCAN,
};

/* A node's transport settings, parsed (can.c: parse_settings). */
struct can_settings {
        const char *port;      /* slcan */
        const char *interface; /* SocketCAN */
        uint32_t baud;
        uint32_t bitrate;      /* 0: unknown (SocketCAN without the option) */
        uint32_t data_bitrate; /* 0: none or unknown */
        uint32_t bus_load;     /* percent */
        uint32_t tx_burst;     /* frames that may go ahead of the bus-load schedule */
        bool fd, extended;
        uint8_t tx_dl;
        uint32_t tx_id, rx_id, functional_id;
};

struct can_bus;

/* One open link: the transport's priv. */
struct can_link {
        const struct gw_plugin_services *svc;
        struct can_bus *bus;
        struct can_link *next; /* the bus's links */
        struct gw_can_link_info info;
        int efd; /* eventfd: readable while frames wait or the bus failed */
        bool signalled;
        struct gw_can_frame *rx; /* ring of CAN_RX_QUEUE_MAX */
        size_t rx_head, rx_len;
        uint64_t rx_dropped;
        unsigned tx_queued; /* its frames in the bus's transmit queue */
};

/* What a backend does for the bus (slcan.c, socketcan.c). Every op runs on the loop's thread. */
struct can_backend_ops {
        const char *name;
        /* Opens the adapter or interface with the first link's settings; never waits for the
         * adapter (slcan configures it asynchronously). 0 or -errno, the reason logged. */
        int (*open)(struct can_bus *bus, const struct can_settings *set);
        /* Releases everything open() took, fds unwatched. Never fails; also after failure. */
        void (*close)(struct can_bus *bus);
        /* Takes f for the bus now: 0, -EAGAIN (not now: the backend calls can_bus_kick() when
         * it can take more), or -errno (the bus then fails). The backend may hold it until
         * flush(). */
        int (*xmit)(struct can_bus *bus, const struct gw_can_frame *f);
        /* After a run of xmit() calls: what they took goes to the device now, in one write
         * where it can (slcan: one wake-up of the adapter's side for a burst, not one a frame).
         * NULL: xmit() wrote it already. */
        void (*flush)(struct can_bus *bus);
        /* The links changed (one joined or left): filters to update. 0 or -errno. NULL: none. */
        int (*links_changed)(struct can_bus *bus);
        /* A link asks for CAN FD frames on a bus opened without: 0 or -errno. NULL: refused. */
        int (*enable_fd)(struct can_bus *bus);
        /* The deadline the backend set with can_bus_set_deadline() has come. */
        void (*timeout)(struct can_bus *bus, uint64_t now_ns);
};

#define CAN_WATCH_MAX 3

struct can_watch {
        int fd;
        short events;
        void (*cb)(struct can_bus *bus, int fd, short revents);
        void *handle; /* from the owner's watch_fd; NULL: not registered */
        struct can_bus *bus;
};

struct can_txq_entry {
        struct can_link *link; /* NULL: its link closed, skipped */
        struct gw_can_frame f;
};

struct can_bus {
        struct can_bus *next; /* the registry */
        bool registered;
        enum can_backend_kind kind;
        char name[256];
        dev_t rdev;              /* slcan: the serial device's number */
        struct can_settings set; /* the first link's; bus-wide fields must agree */
        const struct can_backend_ops *ops;
        void *be; /* the backend's state */

        struct can_link *links;
        unsigned n_links;
        struct can_link *owner; /* whose services watch the bus's fds */
        struct can_watch watches[CAN_WATCH_MAX];

        int timer_fd;
        uint64_t deadline_backend_ns, deadline_pace_ns;

        struct can_txq_entry *txq;
        size_t txq_cap, txq_head, txq_len;
        bool kicking;
        bool kick_soon; /* frames were queued: the timer fires at once to send them */
        uint64_t pace_next_ns;
        uint64_t frames_sent, frames_received, frames_unclaimed;

        bool up;       /* the adapter took frames once: send_frame() queues them from then on */
        int error;     /* 0, or why the bus failed: -ENETDOWN, -EPIPE */
        char why[320]; /* the failure's reason, for link_error() */
};

uint64_t can_now_ns(void);
void can_bus_debug(struct can_bus *bus, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Watches fd through the owner link's services in slot (0..CAN_WATCH_MAX-1), replacing what
 * the slot watched. 0 or -errno. */
int can_bus_watch(struct can_bus *bus, unsigned slot, int fd, short events,
                  void (*cb)(struct can_bus *bus, int fd, short revents));
void can_bus_unwatch(struct can_bus *bus, unsigned slot);
/* The backend's one deadline (absolute, CLOCK_MONOTONIC ns; 0 = none). */
void can_bus_set_deadline(struct can_bus *bus, uint64_t at_ns);
/* A frame from the bus: to the link whose rx id it carries. */
void can_bus_deliver(struct can_bus *bus, const struct gw_can_frame *f);
/* How long before its place in the bus-load schedule a frame that costs cost_ns (its bus time
 * x 100 / bus-load) may be sent: (tx-burst - 1) x cost_ns. Pure. */
uint64_t can_pace_lead_ns(const struct can_settings *set, uint64_t cost_ns);
/* The backend can take frames now, for the first time (slcan: the adapter answered O). Until
 * then send_frame() refuses frames with -ENOBUFS. */
void can_bus_up(struct can_bus *bus);
/* Sends what waits, as the backend and the bus-load limit allow. */
void can_bus_kick(struct can_bus *bus);
/* The bus is down for good (err: -ENETDOWN, -EPIPE): every link learns it at its next
 * recv_frame(), the device is released and a later open() starts a new bus. */
void can_bus_fail(struct can_bus *bus, int err, const char *why);

extern const struct can_backend_ops can_slcan_ops;
extern const struct can_backend_ops can_socketcan_ops;

/* slcan timing, in ms; tests shorten them. */
struct can_slcan_timing {
        unsigned flush_ms;    /* quiet time after "\r\r\r" before configuring */
        unsigned reply_ms;    /* an adapter that has not answered a command this long is stuck */
        unsigned recovery_ms; /* configuring (at open or after a reset) must succeed within this */
};
extern struct can_slcan_timing can_slcan_timing;

/* slcan: the S command digit of a nominal bitrate, the Y digit of a data bitrate; -EINVAL
 * when adapters have none. */
int can_slcan_bitrate_code(uint32_t bitrate);
int can_slcan_data_bitrate_code(uint32_t bitrate);

/* SocketCAN's pure parts (socketcan.c), for the unit tests. */
/* f as the kernel takes it: a struct can_frame (*ret_mtu = CAN_MTU) or struct canfd_frame
 * (CANFD_MTU) in ret. 0 or -EINVAL. */
int can_socketcan_encode(const struct gw_can_frame *f, struct canfd_frame *ret, size_t *ret_mtu);
/* What read() returned (n bytes): 1 a frame in *ret; 2 an error frame, its class bits
 * (CAN_ERR_*) in *ret_err and its data in ret->data; 0 a frame to ignore (remote frames are
 * not delivered); -EINVAL a size or content the kernel never sends. */
int can_socketcan_decode(const void *buf, size_t n, struct gw_can_frame *ret, uint32_t *ret_err);
/* The kernel filters for the rx ids of links (one each: exact id, data frames only, the frame
 * format of the link). Returns how many were written (at most max). */
size_t can_socketcan_filters(const struct can_link *links, struct can_filter *ret, size_t max);
/* A line saying why opening failed with err, for the debug log ("this kernel has no CAN
 * support (AF_CAN)" for -EAFNOSUPPORT). */
const char *can_socketcan_strerror(int err);
