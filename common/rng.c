/* rng.c — xoshiro256** seeded through splitmix64 (Blackman & Vigna, https://prng.di.unimi.it/).
 *
 * The state is four 64-bit words owned by the caller (struct ft_rng); nothing is allocated.
 * ft_rng_below rejects the low "-n mod n" values so every residue is equally likely. */
#include "rng.h"

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void ft_rng_seed(struct ft_rng *rng, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&x);
}

uint64_t ft_rng_next(struct ft_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t ft_rng_below(struct ft_rng *rng, uint64_t n)
{
    /* Values below (2^64 - n) mod n would make the low residues more likely: reject them. */
    uint64_t threshold = (0 - n) % n;
    for (;;) {
        uint64_t x = ft_rng_next(rng);
        if (x >= threshold)
            return x % n;
    }
}

double ft_rng_uniform(struct ft_rng *rng)
{
    return (double)(ft_rng_next(rng) >> 11) * 0x1.0p-53;
}

void ft_rng_shuffle(struct ft_rng *rng, int64_t *idx, int64_t n)
{
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)ft_rng_below(rng, (uint64_t)i + 1);
        int64_t tmp = idx[i];
        idx[i] = idx[j];
        idx[j] = tmp;
    }
}
