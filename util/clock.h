/* SPDX-License-Identifier: MIT */
/* The clocks rdmig measures with: monotonic time for deadlines and
 * durations, and the calling thread's CPU time for the statistics. */
#ifndef RDMIG_UTIL_CLOCK_H
#define RDMIG_UTIL_CLOCK_H

#include <glib.h>
#include <stdint.h>
#include <time.h>

/** rdmig_now_us: monotonic time in microseconds.  Any thread. */
static inline gint64 rdmig_now_us(void) { return g_get_monotonic_time(); }

/** rdmig_thread_cpu_us: CPU time of the calling thread so far, in
 *  microseconds (0 if the clock cannot be read). */
static inline uint64_t rdmig_thread_cpu_us(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) < 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

#endif
