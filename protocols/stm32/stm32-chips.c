/* The chip table of the stm32 protocol: data, one entry per product id of AN2606, and the
 * arithmetic over page and sector layouts. Sizes, layouts and flash size registers are from
 * the reference manuals; erase times are the datasheets' maxima (see docs/protocols.md). */
#include <errno.h>
#include <stddef.h>

#include "stm32-chips.h"

#define KIB(n) ((uint32_t) (n) *1024u)
#define MIB(n) ((uint32_t) (n) *1024u * 1024u)

/* Layouts. A uniform layout lists more pages than any part has: the flash size cuts it. */
static const struct gw_stm32_run pages_128[] = {{1536, 128, 0}, {0, 0, 0}};
static const struct gw_stm32_run pages_1k[] = {{1024, KIB(1), 0}, {0, 0, 0}};
static const struct gw_stm32_run pages_2k[] = {{1024, KIB(2), 0}, {0, 0, 0}};
static const struct gw_stm32_run sectors_8k[] = {{256, KIB(8), 0}, {0, 0, 0}};
static const struct gw_stm32_run sectors_128k[] = {{16, KIB(128), 0}, {0, 0, 0}};
/* F2/F4 single bank: 4 x 16 KiB, 64 KiB, then 128 KiB sectors (F413: 11 of them). */
static const struct gw_stm32_run sectors_f4[] = {
    {4, KIB(16), 0}, {1, KIB(64), 4}, {11, KIB(128), 5}, {0, 0, 0}};
/* F42x/F43x, F469/F479 with 2 MiB: a second bank of the same shape at 0x08100000, whose
 * sectors the bootloader numbers 12 to 23. */
static const struct gw_stm32_run sectors_f4_dual[] = {
    {4, KIB(16), 0},  {1, KIB(64), 4},   {7, KIB(128), 5}, {4, KIB(16), 12},
    {1, KIB(64), 16}, {7, KIB(128), 17}, {0, 0, 0}};
/* F74x/F75x, and F76x/F77x in single-bank mode (nDBANK set, as shipped). */
static const struct gw_stm32_run sectors_f7[] = {
    {4, KIB(32), 0}, {1, KIB(128), 4}, {7, KIB(256), 5}, {0, 0, 0}};
/* F72x/F73x. */
static const struct gw_stm32_run sectors_f72[] = {
    {4, KIB(16), 0}, {1, KIB(64), 4}, {3, KIB(128), 5}, {0, 0, 0}};
/* Dual-bank G0B1 and G47x (DBANK set, as shipped): 128 pages of 2 KiB per bank, bank 2
 * numbered from 256 as in the reference manuals' page numbering. Not confirmed against a
 * ROM; an image inside bank 1 never needs it. */
static const struct gw_stm32_run pages_2k_dual256[] = {
    {128, KIB(2), 0}, {128, KIB(2), 256}, {0, 0, 0}};

/* Worst cases. F0/F1/F3: page and mass erase 40 ms. F2/F4 at x32 parallelism: 16 KiB 500 ms,
 * 64 KiB 1.1 s, 128 KiB 2 s; a mass erase 16 s, 32 s at x8. F7: 256 KiB 4 s. G0/G4/L4:
 * page and mass erase about 40 ms. L0: a 128-byte page 3.3 ms. H7: a 128 KiB sector 4 s. */
static const struct gw_stm32_timing t_f1 = {40, 0, 40};
static const struct gw_stm32_timing t_f4 = {285, 14, 32000};
static const struct gw_stm32_timing t_f7 = {285, 15, 32000};
static const struct gw_stm32_timing t_g4 = {40, 0, 40};
static const struct gw_stm32_timing t_l0 = {10, 0, 10000};
static const struct gw_stm32_timing t_h7 = {250, 30, 40000};

/* Flash size registers. */
#define FSR_F0  0x1ffff7ccu /* F0, F3 */
#define FSR_F1  0x1ffff7e0u
#define FSR_F4  0x1fff7a22u /* F2, F4 */
#define FSR_F7  0x1ff0f442u /* F74x/F75x, F76x/F77x */
#define FSR_F72 0x1ff07a22u
#define FSR_G4  0x1fff75e0u /* G0, G4, L4 */
#define FSR_L0  0x1ff8007cu
#define FSR_H7  0x1ff1e880u /* H74x/H75x, H72x/H73x */
#define FSR_H7A 0x08fff80cu

#define FLASH 0x08000000u

static const struct gw_stm32_chip chips[] = {
    /* F0 */
    {0x440, "STM32F030x8/F05x", FLASH, KIB(64), FSR_F0, 4, pages_1k, &t_f1},
    {0x442, "STM32F030xC/F09x", FLASH, KIB(256), FSR_F0, 4, pages_2k, &t_f1},
    {0x444, "STM32F03x", FLASH, KIB(32), FSR_F0, 4, pages_1k, &t_f1},
    {0x445, "STM32F04x/F070x6", FLASH, KIB(32), FSR_F0, 4, pages_1k, &t_f1},
    {0x448, "STM32F070xB/F071/F072", FLASH, KIB(128), FSR_F0, 4, pages_2k, &t_f1},
    /* F1 */
    {0x412, "STM32F10x low-density", FLASH, KIB(32), FSR_F1, 4, pages_1k, &t_f1},
    {0x410, "STM32F10x medium-density", FLASH, KIB(128), FSR_F1, 4, pages_1k, &t_f1},
    {0x414, "STM32F10x high-density", FLASH, KIB(512), FSR_F1, 4, pages_2k, &t_f1},
    {0x430, "STM32F10x XL-density", FLASH, MIB(1), FSR_F1, 4, pages_2k, &t_f1},
    {0x418, "STM32F105/F107 connectivity line", FLASH, KIB(256), FSR_F1, 4, pages_2k, &t_f1},
    {0x420, "STM32F100 medium-density value line", FLASH, KIB(128), FSR_F1, 4, pages_1k, &t_f1},
    {0x428, "STM32F100 high-density value line", FLASH, KIB(512), FSR_F1, 4, pages_2k, &t_f1},
    /* F2 */
    {0x411, "STM32F2xx", FLASH, MIB(1), FSR_F4, 4, sectors_f4, &t_f4},
    /* F3 */
    {0x422, "STM32F302xB/C/F303xB/C/F358", FLASH, KIB(256), FSR_F0, 4, pages_2k, &t_f1},
    {0x432, "STM32F373/F378", FLASH, KIB(256), FSR_F0, 4, pages_2k, &t_f1},
    {0x438, "STM32F303x4-8/F334/F328", FLASH, KIB(64), FSR_F0, 4, pages_2k, &t_f1},
    {0x439, "STM32F301/F302x4-8/F318", FLASH, KIB(64), FSR_F0, 4, pages_2k, &t_f1},
    {0x446, "STM32F302xD/E/F303xD/E/F398", FLASH, KIB(512), FSR_F0, 4, pages_2k, &t_f1},
    /* F4 */
    {0x413, "STM32F405/F407/F415/F417", FLASH, MIB(1), FSR_F4, 4, sectors_f4, &t_f4},
    {0x419, "STM32F42x/F43x", FLASH, MIB(2), FSR_F4, 4, sectors_f4_dual, &t_f4},
    {0x423, "STM32F401xB/C", FLASH, KIB(256), FSR_F4, 4, sectors_f4, &t_f4},
    {0x433, "STM32F401xD/E", FLASH, KIB(512), FSR_F4, 4, sectors_f4, &t_f4},
    {0x431, "STM32F411xC/E", FLASH, KIB(512), FSR_F4, 4, sectors_f4, &t_f4},
    {0x458, "STM32F410", FLASH, KIB(128), FSR_F4, 4, sectors_f4, &t_f4},
    {0x441, "STM32F412", FLASH, MIB(1), FSR_F4, 4, sectors_f4, &t_f4},
    {0x421, "STM32F446", FLASH, KIB(512), FSR_F4, 4, sectors_f4, &t_f4},
    {0x434, "STM32F469/F479", FLASH, MIB(2), FSR_F4, 4, sectors_f4_dual, &t_f4},
    {0x463, "STM32F413/F423", FLASH, KIB(1536), FSR_F4, 4, sectors_f4, &t_f4},
    /* F7 */
    {0x449, "STM32F74x/F75x", FLASH, MIB(1), FSR_F7, 4, sectors_f7, &t_f7},
    {0x451, "STM32F76x/F77x", FLASH, MIB(2), FSR_F7, 4, sectors_f7, &t_f7},
    {0x452, "STM32F72x/F73x", FLASH, KIB(512), FSR_F72, 4, sectors_f72, &t_f7},
    /* G0: 64-bit double words */
    {0x466, "STM32G03x/G04x", FLASH, KIB(64), FSR_G4, 8, pages_2k, &t_g4},
    {0x456, "STM32G05x/G061", FLASH, KIB(64), FSR_G4, 8, pages_2k, &t_g4},
    {0x460, "STM32G07x/G08x", FLASH, KIB(128), FSR_G4, 8, pages_2k, &t_g4},
    {0x467, "STM32G0B0/G0B1/G0C1", FLASH, KIB(512), FSR_G4, 8, pages_2k_dual256, &t_g4},
    /* G4 */
    {0x468, "STM32G431/G441", FLASH, KIB(128), FSR_G4, 8, pages_2k, &t_g4},
    {0x469, "STM32G47x/G48x", FLASH, KIB(512), FSR_G4, 8, pages_2k_dual256, &t_g4},
    {0x479, "STM32G491/G4A1", FLASH, KIB(512), FSR_G4, 8, pages_2k, &t_g4},
    /* L0: 128-byte pages */
    {0x457, "STM32L01x/L02x", FLASH, KIB(16), FSR_L0, 4, pages_128, &t_l0},
    {0x425, "STM32L031/L041", FLASH, KIB(32), FSR_L0, 4, pages_128, &t_l0},
    {0x417, "STM32L05x/L06x", FLASH, KIB(64), FSR_L0, 4, pages_128, &t_l0},
    {0x447, "STM32L07x/L08x", FLASH, KIB(192), FSR_L0, 4, pages_128, &t_l0},
    /* L4 */
    {0x464, "STM32L41x/L42x", FLASH, KIB(128), FSR_G4, 8, pages_2k, &t_g4},
    {0x435, "STM32L43x/L44x", FLASH, KIB(256), FSR_G4, 8, pages_2k, &t_g4},
    {0x462, "STM32L45x/L46x", FLASH, KIB(512), FSR_G4, 8, pages_2k, &t_g4},
    {0x415, "STM32L47x/L48x", FLASH, MIB(1), FSR_G4, 8, pages_2k, &t_g4},
    {0x461, "STM32L496/L4A6", FLASH, MIB(1), FSR_G4, 8, pages_2k, &t_g4},
    /* H7: 256-bit flash words (128-bit on H7A3/B3) */
    {0x450, "STM32H74x/H75x", FLASH, MIB(2), FSR_H7, 32, sectors_128k, &t_h7},
    {0x480, "STM32H7A3/H7B3/H7B0", FLASH, MIB(2), FSR_H7A, 16, sectors_8k, &t_h7},
    {0x483, "STM32H72x/H73x", FLASH, MIB(1), FSR_H7, 32, sectors_128k, &t_h7},
};

const struct gw_stm32_chip *gw_stm32_chip_find(uint16_t pid)
{
        for (size_t i = 0; i < sizeof(chips) / sizeof(chips[0]); i++)
                if (chips[i].pid == pid)
                        return &chips[i];
        return NULL;
}

const struct gw_stm32_chip *gw_stm32_chip_get(size_t i)
{
        return i < sizeof(chips) / sizeof(chips[0]) ? &chips[i] : NULL;
}

/* Walks the runs: a layout has a few. */
int gw_stm32_page(const struct gw_stm32_chip *chip, uint32_t flash_size, size_t i,
                  struct gw_stm32_page *ret)
{
        uint64_t addr = chip->flash_base, end = (uint64_t) chip->flash_base + flash_size;
        size_t index = 0;

        for (const struct gw_stm32_run *r = chip->runs; r->count > 0; r++) {
                if (i < index + r->count) {
                        uint64_t a = addr + (uint64_t) (i - index) * r->size;

                        if (a + r->size > end)
                                return -ERANGE;
                        *ret = (struct gw_stm32_page){
                            .addr = (uint32_t) a,
                            .size = r->size,
                            .number = (uint16_t) (r->first + (i - index)),
                        };
                        return 0;
                }
                addr += (uint64_t) r->count * r->size;
                index += r->count;
        }
        return -ERANGE;
}

bool gw_stm32_size_fits_layout(const struct gw_stm32_chip *chip, uint32_t flash_size)
{
        uint64_t addr = 0;

        if (flash_size == 0)
                return false;
        for (const struct gw_stm32_run *r = chip->runs; r->count > 0; r++) {
                uint64_t run_end = addr + (uint64_t) r->count * r->size;

                if (flash_size <= run_end)
                        return (flash_size - addr) % r->size == 0;
                addr = run_end;
        }
        return false;
}

int gw_stm32_pages_span(const struct gw_stm32_chip *chip, uint32_t flash_size, uint32_t addr,
                        uint64_t len, size_t *ret_first, size_t *ret_count)
{
        uint64_t end = (uint64_t) addr + len, flash_end = (uint64_t) chip->flash_base + flash_size;
        size_t first = 0, last = 0;
        bool have_first = false;
        struct gw_stm32_page p;

        if (len == 0)
                return -EINVAL;
        if (addr < chip->flash_base || end > flash_end)
                return -ERANGE;
        for (size_t i = 0; gw_stm32_page(chip, flash_size, i, &p) == 0; i++) {
                uint64_t pend = (uint64_t) p.addr + p.size;

                if (!have_first && addr < pend) {
                        first = i;
                        have_first = true;
                }
                if (have_first && end <= pend) {
                        last = i;
                        *ret_first = first;
                        *ret_count = last - first + 1;
                        return 0;
                }
        }
        /* flash_size does not end on a page boundary of the layout. */
        return -ERANGE;
}

uint64_t gw_stm32_erase_ms(const struct gw_stm32_chip *chip, uint32_t page_size)
{
        return chip->timing->base_ms + (uint64_t) chip->timing->per_kib_ms * (page_size / 1024u);
}
