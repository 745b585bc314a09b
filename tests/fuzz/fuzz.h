/* fuzz.h -- what the libFuzzer targets of tests/fuzz/ share: the entry
 * point's prototype (the build has -Wmissing-prototypes), the secret and the
 * clock the corpora's tokens are made for, and FUZZ_CHECK.
 *
 * A target is one fuzz_<name>.c with LLVMFuzzerTestOneInput; its seeds are
 * tests/fuzz/corpus/fuzz_<name>/ (written by tests/fuzz/gen-corpus) and the
 * inputs of past findings tests/fuzz/regressions/fuzz_<name>/. `make fuzz`
 * runs the targets, `make fuzz-replay` (part of `make test`) replays both
 * directories once. */
#ifndef TESTS_FUZZ_FUZZ_H
#define TESTS_FUZZ_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* HS256 secret of every token in the corpora; gen-corpus spells it too. */
#define FUZZ_SECRET "ripple-fuzz-secret-0123456789abcdef-0123"
/* "now" for token checks, seconds (2023-11-14): the corpora's tokens expire
 * in 2100, or are already expired in 2020. A fixed clock keeps a finding
 * reproducible. */
#define FUZZ_NOW 1700000000L

/* An invariant of the code under test; failing it is a finding, so it
 * aborts (libFuzzer saves the input). Not assert(): it must hold in every
 * build. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #cond);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
