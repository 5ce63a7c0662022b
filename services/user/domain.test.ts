import test from 'ava';
import { Role } from '../../gen/shop/user/v1/user_pb.js';
import {
  currencyExponent,
  loginViolations,
  normalizeEmail,
  pointsForOrderTotal,
  registrationViolations,
  roleToProto,
} from './domain.js';

const valid = { email: 'Ann@Example.com', password: 'correct horse', displayName: 'Ann' };

test('emails are compared trimmed and lower-case', (t) => {
  t.is(normalizeEmail('  Ann.Lee@Example.COM '), 'ann.lee@example.com');
});

test('a valid registration has no violations', (t) => {
  t.deepEqual(registrationViolations(valid), []);
});

test('each registration field is checked and named', (t) => {
  const fields = (input: Partial<typeof valid>) =>
    registrationViolations({ ...valid, ...input }).map((v) => `${v.field}:${v.reason}`);
  t.deepEqual(fields({ email: '' }), ['email:REQUIRED']);
  t.deepEqual(fields({ email: 'ann@' }), ['email:INVALID_FORMAT']);
  t.deepEqual(fields({ email: 'ann.example.com' }), ['email:INVALID_FORMAT']);
  t.deepEqual(fields({ email: 'a b@example.com' }), ['email:INVALID_FORMAT']);
  t.deepEqual(fields({ email: `${'a'.repeat(250)}@x.io` }), ['email:TOO_LONG']);
  t.deepEqual(fields({ password: '' }), ['password:REQUIRED']);
  t.deepEqual(fields({ password: 'short' }), ['password:TOO_SHORT']);
  t.deepEqual(fields({ password: 'x'.repeat(129) }), ['password:TOO_LONG']);
  t.deepEqual(fields({ password: 'x'.repeat(128) }), []);
  t.deepEqual(fields({ displayName: '   ' }), ['display_name:REQUIRED']);
  t.deepEqual(fields({ displayName: 'n'.repeat(101) }), ['display_name:TOO_LONG']);
  t.deepEqual(fields({ email: '', password: '', displayName: '' }), [
    'email:REQUIRED',
    'password:REQUIRED',
    'display_name:REQUIRED',
  ]);
});

test('login checks presence only', (t) => {
  t.deepEqual(loginViolations({ email: 'x@y.z', password: 'p' }), []);
  t.deepEqual(
    loginViolations({ email: ' ', password: '' }).map((v) => v.field),
    ['email', 'password'],
  );
});

test('one point per whole currency unit, rounded down', (t) => {
  t.is(pointsForOrderTotal({ currencyCode: 'EUR', amountMinor: 4999n }), 49n);
  t.is(pointsForOrderTotal({ currencyCode: 'USD', amountMinor: 100n }), 1n);
  t.is(pointsForOrderTotal({ currencyCode: 'EUR', amountMinor: 99n }), 0n);
  t.is(pointsForOrderTotal({ currencyCode: 'JPY', amountMinor: 1200n }), 1200n);
  t.is(pointsForOrderTotal({ currencyCode: 'KWD', amountMinor: 1500n }), 1n);
  t.is(pointsForOrderTotal({ currencyCode: 'EUR', amountMinor: -500n }), 0n);
  t.is(pointsForOrderTotal(undefined), 0n);
  t.is(currencyExponent('jpy'), 0);
});

test('roles map to the contract enum', (t) => {
  t.is(roleToProto('user'), Role.CUSTOMER);
  t.is(roleToProto('admin'), Role.ADMIN);
});
