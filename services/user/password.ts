/**
 * Password hashing with Node's built-in scrypt (no extra dependency), a random
 * 16-byte salt per password, and a timing-safe comparison.
 *
 * Stored form (self-describing, so the cost can be raised later without
 * invalidating old hashes):  scrypt$<N>$<r>$<p>$<salt base64url>$<key base64url>
 *
 *   const stored = await hashPassword('correct horse');
 *   await verifyPassword('correct horse', stored)   // true
 *   await burnPasswordCheck('anything')             // same work as a verify, always false:
 *                                                   // used for unknown emails so both paths cost the same
 *
 * scrypt runs on libuv's thread pool, so hashing does not block the event loop.
 */
import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';

/** Cost parameters: N=2^14, r=8, p=1 (16 MiB, tens of milliseconds): the common interactive-login setting. */
export const SCRYPT_PARAMS = { N: 16384, r: 8, p: 1 } as const;
const KEY_LENGTH = 64;
const SALT_LENGTH = 16;

function derive(password: string, salt: Buffer, params: { N: number; r: number; p: number }): Promise<Buffer> {
  // scrypt needs 128 * N * r bytes; leave headroom over Node's 32 MiB default.
  const options: ScryptOptions = { ...params, maxmem: 256 * params.N * params.r };
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFKC'), salt, KEY_LENGTH, options, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(SALT_LENGTH);
  const key = await derive(password, salt, SCRYPT_PARAMS);
  const { N, r, p } = SCRYPT_PARAMS;
  return `scrypt$${N}$${r}$${p}$${salt.toString('base64url')}$${key.toString('base64url')}`;
}

interface ParsedHash {
  params: { N: number; r: number; p: number };
  salt: Buffer;
  key: Buffer;
}

function parse(stored: string): ParsedHash | undefined {
  const parts = stored.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return undefined;
  const [N, r, p] = parts.slice(1, 4).map(Number);
  if (![N, r, p].every((n) => Number.isSafeInteger(n) && n > 0)) return undefined;
  const salt = Buffer.from(parts[4]!, 'base64url');
  const key = Buffer.from(parts[5]!, 'base64url');
  if (salt.length === 0 || key.length !== KEY_LENGTH) return undefined;
  return { params: { N: N!, r: r!, p: p! }, salt, key };
}

/** True when `password` matches `stored`; false for a mismatch or an unreadable hash. */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const parsed = parse(stored);
  if (!parsed) return false;
  const key = await derive(password, parsed.salt, parsed.params);
  return timingSafeEqual(key, parsed.key);
}

// A real hash of a random secret, made once: checking an unknown email's
// password against it costs exactly what a real check costs.
let decoy: Promise<string> | undefined;

/** Makes the decoy hash now (at start), so the first unknown-email login is not slower than the rest. */
export async function prepareDecoy(): Promise<void> {
  decoy ??= hashPassword(randomBytes(32).toString('base64url'));
  await decoy;
}

/** Does the work of one verification and returns false: keeps unknown-email logins as slow as wrong-password ones. */
export async function burnPasswordCheck(password: string): Promise<false> {
  decoy ??= hashPassword(randomBytes(32).toString('base64url'));
  await verifyPassword(password, await decoy);
  return false;
}
