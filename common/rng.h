/* rng.h — the one seeded random generator (xoshiro256**, seeded through splitmix64).
 *
 * Reference: D. Blackman, S. Vigna, "Scrambled linear pseudorandom number generators" (2018),
 * https://prng.di.unimi.it/. The state is plain data, so it can be checkpointed and restored. */
#ifndef FT_RNG_H
#define FT_RNG_H

#include <stdint.h>

struct ft_rng {
    uint64_t s[4];
};

/* Seed the state from one 64-bit seed (splitmix64 expansion). */
void ft_rng_seed(struct ft_rng *rng, uint64_t seed);
/* Next 64 random bits. */
uint64_t ft_rng_next(struct ft_rng *rng);
/* Uniform integer in [0, n) without modulo bias; n > 0. */
uint64_t ft_rng_below(struct ft_rng *rng, uint64_t n);
/* Uniform double in [0, 1) with 53 random bits. */
double ft_rng_uniform(struct ft_rng *rng);
/* Fisher–Yates shuffle of idx[0..n). */
void ft_rng_shuffle(struct ft_rng *rng, int64_t *idx, int64_t n);

#endif
