/* What the stm32 protocol knows of the chips behind an STM32 ROM bootloader: a table keyed by
 * the product id GET_ID reports (AN2606), giving each chip's flash base, size and page or
 * sector layout (reference manuals), write granularity and worst-case erase times
 * (datasheets), and the arithmetic over a layout that tells which pages an image covers. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A run of equal pages (sectors on F2/F4/F7/H7) in address order. first is the number the
 * erase commands use for the run's first page; the next pages follow it. */
struct gw_stm32_run {
        uint16_t count;
        uint32_t size;
        uint16_t first;
};

/* Worst-case erase times, for the erase timeouts: a page or sector takes at most base_ms +
 * per_kib_ms for each KiB of it, a mass erase mass_ms. */
struct gw_stm32_timing {
        uint32_t base_ms;
        uint32_t per_kib_ms;
        uint32_t mass_ms;
};

struct gw_stm32_chip {
        uint16_t pid;
        const char *name;
        uint32_t flash_base;
        uint32_t flash_size;  /* of the largest part with this id */
        uint32_t size_reg;    /* the flash size register (KiB, 16 bits), 0 = none known */
        uint16_t write_align; /* bytes a write must cover at once (4 .. 32) */
        const struct gw_stm32_run *runs; /* ended by a run of count 0 */
        const struct gw_stm32_timing *timing;
};

/* One page of a layout. */
struct gw_stm32_page {
        uint32_t addr;
        uint32_t size;
        uint16_t number; /* what the erase commands name it by */
};

/* The chip with product id pid, or NULL. */
const struct gw_stm32_chip *gw_stm32_chip_find(uint16_t pid);
/* The i-th entry of the table, NULL past the end (for tests and listings). */
const struct gw_stm32_chip *gw_stm32_chip_get(size_t i);

/* Whether flash_size ends on a page boundary of chip's layout and within it. */
bool gw_stm32_size_fits_layout(const struct gw_stm32_chip *chip, uint32_t flash_size);

/* The pages of chip's layout, truncated at flash_size bytes, that [addr, addr + len) touches:
 * index of the first (counted from the flash base) and how many. 0, -ERANGE when the range is
 * not inside [base, base + flash_size), -EINVAL when len is 0. */
int gw_stm32_pages_span(const struct gw_stm32_chip *chip, uint32_t flash_size, uint32_t addr,
                        uint64_t len, size_t *ret_first, size_t *ret_count);
/* The page of index i (see above). 0, or -ERANGE past the end of flash_size. */
int gw_stm32_page(const struct gw_stm32_chip *chip, uint32_t flash_size, size_t i,
                  struct gw_stm32_page *ret);

/* Worst-case time to erase one page of page_size bytes (a mass erase: timing->mass_ms). */
uint64_t gw_stm32_erase_ms(const struct gw_stm32_chip *chip, uint32_t page_size);
