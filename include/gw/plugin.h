/* The plugin ABI: transports (links to nodes) and protocols (update protocols spoken over a
 * link). Each ops struct starts with its own version; fields are only ever appended, and an
 * op added in version N is called only after checking ops->version >= N. Built-ins are listed
 * in one static table (core/plugin.c); out-of-tree plugins are shared modules exporting
 * GW_PLUGIN_ENTRY_SYMBOL, refused when their ABI does not match.
 *
 * Threading: everything is called from the one thread that runs the loop. No op may sleep.
 * Memory: the core allocates each plugin instance's private state (priv_size bytes, zeroed)
 * and frees it after close()/done(); a plugin never frees priv. */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "gw/options.h"

/* Bumped when anything below changes incompatibly. Appending an op bumps only the struct's
 * own version, not this. */
#define GW_PLUGIN_ABI_VERSION 1

/* Version 2 of each added the control link shape (USB); version 3 of the transport and
 * protocol ops added option checking (options, check); version 4 of the protocol ops added
 * checking an image before any node is written (check_image) and describing what a device's
 * descriptors say to the protocol (describe); version 4 of the transport ops and of the host
 * added modem-control lines (set_lines); version 5 of the protocol ops added the transport
 * settings a protocol needs by default (link_defaults) and telling a node that already runs
 * an image (installed); version 5 of the transport ops and of the host and version 6 of the
 * protocol ops added the frames link shape (CAN); version 7 of the protocol ops added options
 * only a node's configuration may set (node_options), and readers name their file (path);
 * version 8 added telling whether identify() reaches the node after an install
 * (identifies_after_install); version 6 of the host added resumed(); version 6 of the
 * transport ops added why a link failed (link_error). */
#define GW_TRANSPORT_OPS_VERSION 6
#define GW_PROTOCOL_OPS_VERSION  8
#define GW_SERVICES_VERSION      2
#define GW_PROTO_HOST_VERSION    6

enum gw_link_shape {
        GW_LINK_STREAM = 1, /* a byte stream: UART, pty, TCP serial bridge */
        GW_LINK_CONTROL,    /* USB control and bulk transfers */
        GW_LINK_FRAMES,     /* CAN / CAN FD frames */
};

const char *gw_link_shape_to_string(enum gw_link_shape s);

/* A transport option the core adds when it opens a control link again after the protocol
 * asked for reopen(): the port path (gw_usb_device_info.path) the board had. The transport
 * then takes the board at that port with the node's ids, or, when the node names no DFU-mode
 * ids, any board there that is in DFU mode; its serial number may have changed too. */
#define GW_OPTION_REOPEN_PATH "reopen-path"

/* Modem-control lines of a stream link, for set_lines(): a bootloader entered by driving
 * BOOT0 and NRST from an adapter's DTR and RTS. */
#define GW_LINE_DTR (1u << 0)
#define GW_LINE_RTS (1u << 1)

/* A CAN or CAN FD frame, for the frames link shape. */
#define GW_CAN_EFF       (1u << 0) /* a 29-bit identifier; else 11-bit */
#define GW_CAN_FD        (1u << 1) /* a CAN FD frame (len up to 64) */
#define GW_CAN_BRS       (1u << 2) /* CAN FD: the data phase at the data bitrate */
#define GW_CAN_RTR       (1u << 3) /* a remote request (classic frames only), no data */
#define GW_CAN_FRAME_MAX 64

struct gw_can_frame {
        uint32_t id;   /* 0..0x7ff, or 0..0x1fffffff with GW_CAN_EFF */
        uint8_t flags; /* GW_CAN_* */
        uint8_t len;   /* data bytes: 0..8; with GW_CAN_FD also 12, 16, 20, 24, 32, 48, 64 */
        uint8_t data[GW_CAN_FRAME_MAX];
};

/* What a frames link is: the node's place on its bus, from the node's transport settings.
 * Owned by the transport, valid from open() to close(). */
struct gw_can_link_info {
        uint32_t tx_id;         /* the id frames to the node are sent with */
        uint32_t rx_id;         /* the id the node answers with; the link receives only it */
        uint32_t functional_id; /* a functional (broadcast) request id, or UINT32_MAX: none */
        bool extended;          /* 29-bit ids */
        bool fd;                /* CAN FD frames may be sent */
        uint8_t tx_dl;          /* the largest frame data length to send: 8, or up to 64 (FD) */
        uint32_t bitrate;       /* the nominal bitrate, bit/s (0: unknown, a SocketCAN interface
                                 * set up outside) */
        uint32_t data_bitrate;  /* CAN FD data phase, bit/s; 0 = none or unknown */
        const char *bus;        /* the bus's name: "can0", "/dev/ttyACM0" (slcan) */
};

/* Services the core hands every plugin instance. */
struct gw_plugin_services {
        uint32_t version; /* GW_SERVICES_VERSION */
        void *ctx;        /* passed back to every service */
        /* Log a message about this instance (level: LOG_DEBUG ... LOG_ERR). Plugins log at
         * debug level only; the core decides what to tell the user. */
        void (*logv)(void *ctx, int level, const char *fmt, va_list ap);
        /* Monotonic time in milliseconds (a virtual clock under test). */
        uint64_t (*now_ms)(void *ctx);

        /* Version 2. */
        /* Watches fd from the core's loop: cb runs there when one of events (POLLIN, POLLOUT)
         * occurs. *ret_handle identifies the watch for unwatch_fd(). 0 or -errno. Transports
         * whose library brings its own fds (libusb) hand them to the loop this way. NULL
         * where the caller has no loop (gwflash list): then no op that waits may be used. */
        int (*watch_fd)(void *ctx, int fd, short events,
                        void (*cb)(void *userdata, int fd, short revents), void *userdata,
                        void **ret_handle);
        void (*unwatch_fd)(void *ctx, void *handle);
};

/* A USB control transfer's setup packet (USB 2.0 section 9.3). */
struct gw_control_setup {
        uint8_t request_type; /* bmRequestType: bit 7 set = IN (device to host) */
        uint8_t request;      /* bRequest */
        uint16_t value;       /* wValue */
        uint16_t index;       /* wIndex */
        uint16_t length;      /* wLength: bytes sent (OUT) or at most received (IN) */
};

/* One alternate setting of one interface of a USB device. */
struct gw_usb_alt {
        uint8_t interface, alt;
        uint8_t class_code, subclass, protocol;
        const char *name;     /* the iInterface string (DfuSe: the memory layout), or NULL */
        const uint8_t *extra; /* class-specific descriptors that follow it (DFU functional) */
        size_t extra_len;
};

/* What a control transport knows of the device it opened. Owned by the transport, valid
 * from open() to close(). */
struct gw_usb_device_info {
        uint16_t vid, pid, bcd_device;
        const char *serial; /* iSerialNumber, or NULL */
        const char *path;   /* bus and port chain, "1-2.3": stable for a port, not a board */
        const struct gw_usb_alt *alts;
        size_t n_alts;
};

/* Completion of a control transfer: status = bytes transferred (>= 0) or -errno (-EPIPE:
 * the device stalled, -ETIMEDOUT, -ENODEV: it is gone). data/len: what an IN transfer
 * received, valid for the call only. */
typedef void (*gw_control_done_fn)(void *userdata, int status, const uint8_t *data, size_t len);

/* One thing a transport found attached (for gwflash list and the inventory). */
struct gw_link_info {
        const char *transport; /* "uart" */
        const char *path;      /* "/dev/ttyUSB0" */
        const char *description;
        const char *serial; /* may be NULL */
        uint16_t vid, pid;  /* 0 when not USB */

        /* Filled by transports of ops version 3; read only from those. */
        const char *node;    /* the device node behind it ("/dev/bus/usb/001/004"), or NULL */
        const char *product; /* the device's own name (USB iProduct), or NULL */
        int error;           /* 0, or -errno: it could not be opened to read its strings
                              * (serial, names), -EACCES most often */
        const struct gw_usb_device_info *usb; /* USB devices: every alt setting; else NULL */
};
typedef int (*gw_link_enum_cb)(const struct gw_link_info *info, void *userdata);

struct gw_transport_ops {
        uint32_t version; /* GW_TRANSPORT_OPS_VERSION */
        const char *name; /* "uart": what gatewayd.yaml and gwflash --transport name */
        enum gw_link_shape shape;
        size_t priv_size;

        /* Opens the link described by opts (for uart: "port", "baud", "parity", ...).
         * May block briefly (opening a device node); never waits for the peer.
         * Returns 0, or -ENOENT (no such port), -EACCES, -EINVAL (bad option; the reason is
         * logged at debug level), -EIO. On failure the core calls nothing else but frees priv. */
        int (*open)(void *priv, const struct gw_options *opts,
                    const struct gw_plugin_services *svc);
        /* Closes the link. Called once after a successful open. Never fails. */
        void (*close)(void *priv);

        /* Stream shape. */
        /* The fd the core polls: POLLIN means read() has data, POLLOUT means write() can take
         * more. Valid from open() to close(). */
        int (*get_fd)(void *priv);
        /* Non-blocking. Returns bytes read (> 0), -EAGAIN when nothing is there, -EPIPE when
         * the peer hung up, or another -errno. The caller owns buf. */
        ssize_t (*read)(void *priv, void *buf, size_t n);
        /* Non-blocking; may take fewer than n bytes. Returns bytes taken, -EAGAIN, or -errno. */
        ssize_t (*write)(void *priv, const void *buf, size_t n);

        /* Calls cb for every link of this kind that is attached now; stops early and returns
         * cb's value when it is non-zero. 0 or -errno. NULL = cannot enumerate. */
        int (*enumerate)(const struct gw_plugin_services *svc, gw_link_enum_cb cb, void *userdata);

        /* Version 2: control shape (USB). NULL on other shapes. */
        /* The device this link opened. Never NULL after a successful open(). */
        const struct gw_usb_device_info *(*usb_info)(void *priv);
        /* Claims the interface and selects the alternate setting. Quick ioctls, may block
         * briefly. 0, -ENODEV, -EBUSY (another driver or program has it), -EINVAL. */
        int (*select_alt)(void *priv, uint8_t interface, uint8_t alt);
        /* Submits one control transfer and returns at once; done() runs later from the loop,
         * never from inside this call. For OUT, data holds setup->length bytes (copied). At
         * most one transfer is in flight per link. 0 or -errno (-ENODEV: the device is gone,
         * -EINVAL: length over 4096, Linux usbfs's limit). */
        int (*control)(void *priv, const struct gw_control_setup *setup, const void *data,
                       unsigned timeout_ms, gw_control_done_fn done, void *userdata);
        /* Resets the device's port. The device may re-enumerate, after which this link is
         * dead (control() then fails with -ENODEV). 0 or -errno. */
        int (*reset)(void *priv);

        /* Version 2: hotplug, for the inventory. NULL = cannot tell (then enumerate() again
         * from time to time). */
        /* Calls changed(userdata) whenever a link of this kind appears or goes, until
         * unwatch_attach(). svc must offer watch_fd (the transport hands the loop the fds
         * through which it learns of changes, also while no link is open). changed() runs from
         * the loop's thread, possibly from inside another call into this transport (a scan, a
         * close): it must only take note (arm a timer, say) and call enumerate() later, never
         * call the transport itself. Bursts are not coalesced. Does not block. *ret_handle
         * identifies the watch. 0, -EINVAL (svc cannot watch fds), -EOPNOTSUPP (the library
         * cannot tell here), or another -errno. */
        int (*watch_attach)(const struct gw_plugin_services *svc, void (*changed)(void *userdata),
                            void *userdata, void **ret_handle);
        /* Ends a watch; changed() is not called after it returns. Never fails. */
        void (*unwatch_attach)(void *handle);
        /* Is info (a link enumerate() reported) the one open() would pick with opts? 1 yes,
         * 0 no, 2 perhaps (version 3: opts ask for a serial number and info->error says it
         * could not be read; all else matches), -EINVAL when opts could never open a link.
         * Pure: no I/O. Lets the core tell which node an attached device is without knowing
         * how the transport names links. NULL = cannot tell. */
        int (*claims)(const struct gw_options *opts, const struct gw_link_info *info);

        /* Version 3: checking a node's options before anything is opened. */
        /* The option keys open() reads, NULL-terminated: any other key in a node's transport
         * settings is a mistake the core reports. NULL = cannot tell. */
        const char *const *options;
        /* Checks opts as open() would, without I/O: 0, or -EINVAL with the reason (one line
         * naming the option, e.g. "option baud: expected 50 to 4000000") in why. Pure. NULL =
         * only open() can tell. */
        int (*check)(const struct gw_options *opts, char *why, size_t why_size);

        /* Version 4: modem-control lines (stream shape). */
        /* Sets each line in mask (GW_LINE_DTR, GW_LINE_RTS) to asserted when its bit is set in
         * values, else to deasserted; lines outside mask keep their level. A quick ioctl, never
         * waits. 0, -ENOTTY (this link has no modem lines: a pseudo-terminal, a TCP bridge),
         * -ENODEV (the adapter is gone), -EIO. NULL = the transport has no lines. */
        int (*set_lines)(void *priv, unsigned mask, unsigned values);

        /* Version 5: frames shape (CAN). NULL on other shapes. get_fd() is then readable
         * (POLLIN) whenever recv_frame() has a frame or the link failed; links to several
         * nodes on one bus share it inside the transport (one writer per bus, however many
         * nodes), and each link receives only its node's frames. */
        /* The node's ids and the bus's settings. Never NULL after a successful open(). */
        const struct gw_can_link_info *(*can_info)(void *priv);
        /* Queues one frame for the bus and returns at once; the transport sends queued frames
         * in order, as fast as the bus, the adapter and its bus-load limit allow. f is copied.
         * 0, -ENOBUFS (its queue is full: more than a protocol ever has in flight, a bug; or
         * the adapter has not been opened yet, so that no protocol timer runs for a frame that
         * cannot leave: offer it again a little later),
         * -EINVAL (an id or length the link cannot carry: FD on a classic link, 29-bit on an
         * 11-bit one), -ENETDOWN (the adapter or interface is down or bus-off), -EPIPE (gone). */
        int (*send_frame)(void *priv, const struct gw_can_frame *f);
        /* Non-blocking: takes the next frame received for this link into *ret. 1 (a frame),
         * -EAGAIN (none), -ENETDOWN, -EPIPE. */
        int (*recv_frame)(void *priv, struct gw_can_frame *ret);

        /* Version 6. */
        /* Why the link failed, once an op, read() or recv_frame() returned a link error
         * (-ENETDOWN, -EPIPE, ...): one line naming the cause, e.g. "slcan adapter
         * /dev/ttyACM0: does not answer (nothing came back for V, C, S6, O within 500 ms)".
         * Owned by the transport, valid until close(). NULL while the link is fine, or when
         * the transport cannot tell. */
        const char *(*link_error)(void *priv);
};

/* The image a protocol installs: read at any offset, so a protocol can resend a block.
 * The core owns it and keeps it alive until the protocol's done() returns. */
struct gw_reader {
        uint64_t size;
        const char *name; /* the image's name, e.g. the file name sent in YMODEM block 0 */
        void *ctx;
        /* Reads up to n bytes at off into buf. Returns bytes read (0 at the end) or -errno.
         * Reads a local file: may block on disk I/O, never on the network. */
        ssize_t (*pread)(void *ctx, void *buf, size_t n, uint64_t off);
        /* Since protocol ops version 7: a local file holding exactly the image (what an
         * external flasher is given), or NULL when the image is not a file of its own (then
         * pread() is the only way to it). Read-only to the protocol. */
        const char *path;
};

/* Where a protocol puts what it reads back from a node (upload): written at any offset.
 * The core owns it and keeps it alive until the operation ended. */
struct gw_writer {
        uint64_t max; /* the most the caller wants; the protocol stops there */
        void *ctx;
        /* Writes n bytes of buf at off. Returns n or -errno. A local file: may block on disk
         * I/O, never on the network. */
        ssize_t (*pwrite)(void *ctx, const void *buf, size_t n, uint64_t off);
};

/* What a protocol instance may ask of the core that drives it. */
struct gw_proto_host {
        uint32_t version; /* GW_PROTO_HOST_VERSION */
        void *ctx;        /* passed back to every call */
        void (*logv)(void *ctx, int level, const char *fmt, va_list ap);
        uint64_t (*now_ms)(void *ctx);
        /* Arms the instance's single timer: timeout() is called once now_ms() >= at_ms.
         * A new call replaces the old deadline; at_ms == 0 disarms it. */
        void (*set_deadline)(void *ctx, uint64_t at_ms);
        /* Stream links: queues bytes for the link. The core copies them and writes them out as
         * the link accepts them, in order. Returns 0, or -errno when the link is gone. */
        int (*write)(void *ctx, const void *buf, size_t n);
        /* Stream links: drops bytes received but not yet delivered, and those the link
         * buffers. May be NULL. */
        void (*flush_input)(void *ctx);
        /* Reports progress of install(): bytes the node has acknowledged of total. */
        void (*progress)(void *ctx, uint64_t done, uint64_t total);
        /* Sets the human-readable reason for a failure about to be returned (copied). */
        void (*set_error)(void *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

        /* Version 2: control links (USB). NULL on other shapes. */
        /* As the transport's ops of the same names. */
        const struct gw_usb_device_info *(*usb_info)(void *ctx);
        int (*select_alt)(void *ctx, uint8_t interface, uint8_t alt);
        /* Submits one control transfer; its completion arrives as ops->control_done(). */
        int (*control)(void *ctx, const struct gw_control_setup *setup, const void *data,
                       unsigned timeout_ms);
        int (*reset)(void *ctx);
        /* Closes the link and opens the same board again once it is back (after DFU_DETACH
         * or a reset it re-enumerates, possibly with its DFU-mode ids and serial number): the
         * core opens the transport again with the node's options plus GW_OPTION_REOPEN_PATH,
         * the port the board was on. Tries for up to timeout_ms; the outcome arrives as
         * ops->reopened(). 0 or -errno. */
        int (*reopen)(void *ctx, uint64_t timeout_ms);

        /* Version 3: the same clock and timer to the microsecond, for protocols whose waits
         * are declared by the device (DFU bwPollTimeout): a millisecond clock rounds down, so
         * a deadline must add a tick to be sure the wait is over. NULL on older hosts. */
        uint64_t (*now_us)(void *ctx);
        /* As set_deadline(): timeout() is called once now_us() >= at_us; 0 disarms. */
        void (*set_deadline_us)(void *ctx, uint64_t at_us);

        /* Version 4: stream links whose transport has modem-control lines; NULL otherwise. As
         * the transport's set_lines(). The protocol times a sequence with its own deadline. */
        int (*set_lines)(void *ctx, unsigned mask, unsigned values);

        /* Version 5: frames links (CAN). NULL on other shapes. As the transport's ops of the
         * same names; frames received arrive as ops->frame(). */
        const struct gw_can_link_info *(*can_info)(void *ctx);
        int (*send_frame)(void *ctx, const struct gw_can_frame *f);

        /* Version 6: this install continues a write the node kept from an earlier, interrupted
         * one (an SMP upload the device holds part of, a UDS download the ECU reports), from
         * offset bytes into the image; called once, when the protocol learns it. The core says
         * so in the node's status. May be NULL. */
        void (*resumed)(void *ctx, uint64_t offset);
};

/* Returned by install(), input() and timeout(): negative errno = failed (the core stops the
 * instance and reports the error), otherwise one of these. */
enum gw_proto_result {
        GW_PROTO_CONTINUE = 0, /* keep feeding input and timeouts */
        GW_PROTO_DONE = 1,     /* the operation finished and the node took the image */
};

struct gw_protocol_ops {
        uint32_t version; /* GW_PROTOCOL_OPS_VERSION */
        const char *name; /* "ymodem" */
        enum gw_link_shape shape;
        size_t priv_size;

        /* Prepares an instance. opts holds the node's protocol settings merged with the
         * image's options (image wins). Never touches the link. 0 or -EINVAL (bad option). */
        int (*init)(void *priv, const struct gw_options *opts, const struct gw_proto_host *host);
        /* Releases what init() and the operation allocated. Never fails. */
        void (*done)(void *priv);

        /* Starts installing reader's image. Returns GW_PROTO_CONTINUE (the core then feeds
         * input and timeouts until one returns GW_PROTO_DONE or an error) or -errno. */
        int (*install)(void *priv, const struct gw_reader *reader);
        /* Bytes received from the node (stream shape). buf is the caller's, valid for the call. */
        int (*input)(void *priv, const uint8_t *buf, size_t n);
        /* The deadline armed with host->set_deadline has passed. */
        int (*timeout)(void *priv);
        /* Asks the instance to stop: it sends what the protocol uses to abort (YMODEM: CAN CAN)
         * and returns -ECANCELED, or GW_PROTO_CONTINUE when it needs more time to wind down.
         * NULL = the core just stops feeding it. */
        int (*cancel)(void *priv);

        /* Optional, NULL = not supported: what the node runs now, as key/value pairs
         * ("version", "hardware", ...) added to ret. Same driving rules as install(). */
        int (*identify)(void *priv, struct gw_options *ret);

        /* The link went away (the peer closed it, a USB device vanished). Returns
         * GW_PROTO_DONE when the node already has everything it needs and only a last
         * acknowledgement was lost with the link (a bootloader that resets right after the
         * transfer), else -EPIPE. NULL = the core fails the operation with -EPIPE. */
        int (*hangup)(void *priv);

        /* Version 2: control links (USB). */
        /* A transfer submitted with host->control() completed (see gw_control_done_fn). */
        int (*control_done)(void *priv, int status, const uint8_t *data, size_t len);
        /* host->reopen() finished: status 0 (the link is open again; usb_info() describes the
         * device as it came back) or -ETIMEDOUT. */
        int (*reopened)(void *priv, int status);
        /* Reads the node's image back into w (DFU UPLOAD), driven like install(): progress
         * counts bytes read, GW_PROTO_DONE when the node ended the upload (a short block) or
         * w->max bytes arrived. NULL = the protocol cannot read back. */
        int (*upload)(void *priv, const struct gw_writer *w);

        /* Version 3: the option keys init() reads (node settings and image options alike),
         * NULL-terminated: any other key in a node's protocol settings is a mistake the core
         * reports. NULL = cannot tell. init() checks the values (it touches nothing else): the
         * core calls it with a host whose set_error() takes the reason. */
        const char *const *options;

        /* Version 4: the image, before anything is written to any node. */
        /* Checks reader's image as install() would read it (a file format the protocol parses:
         * a DFU file's CRC and the ids it names, a DfuSe container's targets and addresses),
         * and against facts: what identify() reported of the node, or NULL when it was not
         * asked. Called on an instance init() prepared with the node's and the image's options
         * and that runs no operation; reads the image (a local file: may block on disk I/O),
         * touches neither the link nor the timer. 0, or -errno with the reason given through
         * host->set_error(): the core then writes no node. Facts that cannot decide (a board in
         * run-time mode, whose DFU-mode ids are not known yet) are no failure: install() checks
         * again. NULL = nothing to check. */
        int (*check_image)(void *priv, const struct gw_reader *reader,
                           const struct gw_options *facts);
        /* Control links: what alt, one alternate setting of dev, offers this protocol, as
         * key/value pairs added to ret, for listings (gwflash list); for dfu: variant ("dfu",
         * "dfuse"), bcd-dfu ("0x011a"), transfer-size (as declared), detach-timeout-ms,
         * attributes ("0x0b"). Nothing added: the alt is not for this protocol, or its
         * descriptors are unreadable. Pure: no instance, no I/O. 0 or -ENOMEM. NULL = cannot
         * tell. */
        int (*describe)(const struct gw_usb_device_info *dev, const struct gw_usb_alt *alt,
                        struct gw_options *ret);

        /* Version 5. */
        /* Transport settings the protocol needs unless the node's own settings say otherwise,
         * as "key=value" strings, NULL-terminated (stm32: {"parity=even", NULL}: the STM32 ROM
         * bootloader speaks 8E1). The core adds each under the node's transport options before
         * it checks or opens the link, so a node may still override it (parity: none on a
         * link that cannot carry parity). NULL = none. */
        const char *const *link_defaults;
        /* Does the node already run reader's image, going by facts (what identify() reported)?
         * 1 yes: the core does not write it (gatewayd counts the node as updated, gwflash says
         * so and exits 0); 0 no, or facts cannot tell; -errno when the image cannot be read.
         * Same instance rules as check_image(): reads the image, touches neither link nor
         * timer. For smp: the image's own SHA-256 TLV against the hash of the confirmed image
         * the node runs. NULL = cannot tell. */
        int (*installed)(void *priv, const struct gw_reader *reader,
                         const struct gw_options *facts);

        /* Version 6: frames links (CAN). A frame received for this link (only the node's rx id
         * reaches it). f is the caller's, valid for the call. Driven like input(). */
        int (*frame)(void *priv, const struct gw_can_frame *f);

        /* Version 7: the keys of `options` that only a node's own configuration may set, never
         * a manifest image's options, NULL-terminated (exec: the flasher's command line, which
         * must not be something a signed manifest can change). gatewayd refuses an image whose
         * options name one (node-incompatible). NULL = an image may set any key. */
        const char *const *node_options;

        /* Version 8: can identify() reach the node once an install ran, on an instance init()
         * prepared with these options? 1 yes, 0 no (stm32 after GO without an entry sequence:
         * the application answers the line, not the bootloader): gatewayd then counts the
         * install, verified by the protocol itself, as the node's check. Same instance rules as
         * check_image(). NULL = yes. */
        int (*identifies_after_install)(void *priv);
};

/* Out-of-tree plugins: a shared module in the plugin directory exports
 *     const struct gw_plugin_desc *gw_plugin_entry(void);
 * returning a static descriptor. Either ops pointer may be NULL. */
#define GW_PLUGIN_ENTRY_SYMBOL "gw_plugin_entry"

struct gw_plugin_desc {
        uint32_t abi_version; /* GW_PLUGIN_ABI_VERSION at build time */
        const char *name;
        const struct gw_transport_ops *transport;
        const struct gw_protocol_ops *protocol;
};

typedef const struct gw_plugin_desc *(*gw_plugin_entry_fn)(void);
