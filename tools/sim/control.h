/* The run-time control channel of the simulators: a FIFO (created when missing) or a regular file
 * that a test writes command lines into while a simulator runs ("corrupt-block 3"). Shared by
 * every simulator in tools/sim; what a line means is the simulator's business. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Longer lines are dropped whole. */
#define GW_SIM_CONTROL_LINE_MAX 256
/* How often a simulator re-reads a regular control file (it always polls ready). */
#define GW_SIM_CONTROL_RECHECK_MS 100

/* Embedded in the simulator's state; all zero is a closed channel. */
struct gw_sim_control {
        const char *path;
        bool open;
        bool fifo;
        bool made; /* the FIFO was created by us: removed again by gw_sim_control_done() */
        int fd;
        int wfd;   /* FIFO: our own writer, so that readers never see end-of-file */
        off_t off; /* regular file: where the next line starts */
        char line[GW_SIM_CONTROL_LINE_MAX];
        size_t len;
        bool overlong;
        uint64_t reread_ns; /* regular file: when it is next read (CLOCK_MONOTONIC) */
};

/* Opens path: a FIFO (created, mode 0600, when nothing is there) or a regular file, of which only
 * what is appended from now on is read. path must outlive the channel. On failure nothing is left
 * open or created. 0, or -EINVAL (neither a FIFO nor a regular file), -EBUSY (already open) or
 * another -errno. */
int gw_sim_control_open(struct gw_sim_control *c, const char *path);

/* The descriptor to poll for POLLIN (a FIFO); -1 when there is none: closed, or a regular file,
 * which always polls ready and is re-read every GW_SIM_CONTROL_RECHECK_MS instead. */
int gw_sim_control_poll_fd(const struct gw_sim_control *c);
/* Whether the channel is a regular file to re-read from time to time. */
bool gw_sim_control_rereads(const struct gw_sim_control *c);

/* Reads everything available now and calls on_line for each complete line, without its '\n',
 * NUL-terminated and writable (the callee may tokenise it in place); a partial line waits for
 * the rest. Never blocks. Does nothing on a closed channel. */
void gw_sim_control_read(struct gw_sim_control *c, void (*on_line)(char *line, void *userdata),
                         void *userdata);

/* A regular file: reads it (as gw_sim_control_read()) when its re-read is due at now_ns, and
 * returns when the next one is, GW_SIM_CONTROL_RECHECK_MS later. UINT64_MAX for a FIFO or a closed
 * channel, which need no re-reading. */
uint64_t gw_sim_control_reread(struct gw_sim_control *c, uint64_t now_ns,
                               void (*on_line)(char *line, void *userdata), void *userdata);

/* Splits line in place into words separated by blanks (space, tab, CR), stored in words[0..max).
 * Returns the number of words (0 for a blank line or a comment, one whose first word starts with
 * '#'), or -E2BIG when there are more than max (words then holds the first max). */
int gw_sim_control_words(char *line, char **words, size_t max);

/* Closes the channel and removes a FIFO it created. Accepts a closed channel. */
void gw_sim_control_done(struct gw_sim_control *c);
