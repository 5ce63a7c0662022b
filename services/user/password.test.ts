import test from 'ava';
import { burnPasswordCheck, hashPassword, verifyPassword } from './password.js';

test('a hash verifies its password and nothing else', async (t) => {
  const stored = await hashPassword('correct horse battery');
  t.regex(stored, /^scrypt\$16384\$8\$1\$[\w-]+\$[\w-]+$/);
  t.false(stored.includes('correct horse'));
  t.true(await verifyPassword('correct horse battery', stored));
  t.false(await verifyPassword('correct horse batterY', stored));
  t.false(await verifyPassword('', stored));
});

test('the same password hashes differently each time (per-password salt)', async (t) => {
  const [a, b] = await Promise.all([hashPassword('same password'), hashPassword('same password')]);
  t.not(a, b);
  t.true(await verifyPassword('same password', a));
  t.true(await verifyPassword('same password', b));
});

test('an unreadable stored hash never verifies', async (t) => {
  t.false(await verifyPassword('x', 'plain-text'));
  t.false(await verifyPassword('x', 'scrypt$0$8$1$aa$bb'));
});

test('the decoy check answers false', async (t) => {
  t.false(await burnPasswordCheck('anything at all'));
});
