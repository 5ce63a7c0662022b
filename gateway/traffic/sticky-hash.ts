// A stable bucket (0-9999) for a sticky key: the same key always lands in the
// same bucket, so one user keeps seeing one version, and raising a canary's
// percent only adds users to it (a key under 10 % is still under 20 %).
// FNV-1a spreads the bytes, the murmur3 finalizer mixes the bits so similar
// keys ("user-1", "user-2") do not cluster. Not cryptographic: a client that
// wants the canary can ask for it with the override header anyway.

export const BUCKETS = 10_000;

const encoder = new TextEncoder();

/** 32-bit FNV-1a of the UTF-8 bytes, then murmur3's fmix32. */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (const b of encoder.encode(s)) {
    h ^= b;
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The bucket of `key` under `salt` (the upstream, by default). */
export function stickyBucket(salt: string, key: string): number {
  return hash32(`${salt}\u0000${key}`) % BUCKETS;
}

/** Whether a bucket falls under `percent` (0-100, two decimals). */
export function underPercent(bucket: number, percent: number): boolean {
  return bucket < Math.round(percent * (BUCKETS / 100));
}
