import test from 'ava';
import { decodeJwt, decodeProtectedHeader, jwtVerify } from 'jose';
import { issueAccessToken, verifyAccessToken, type TokenSettings } from './tokens.js';

const settings: TokenSettings = { secret: 'test-secret-0123456789-0123456789', issuer: 'protomesh', audience: 'protomesh-shop', ttlMs: 3_600_000 };

test('the token carries sub, role, iss, aud, exp and verifies with jose', async (t) => {
  const now = new Date();
  const { token, expiresAt } = await issueAccessToken({ userId: 'u-1', role: 'admin' }, settings, now);
  t.is(decodeProtectedHeader(token).alg, 'HS256');
  const { payload } = await jwtVerify(token, new TextEncoder().encode(settings.secret), {
    issuer: 'protomesh',
    audience: 'protomesh-shop',
  });
  t.is(payload.sub, 'u-1');
  t.is(payload.role, 'admin');
  t.is(payload.exp, Math.floor(now.getTime() / 1000) + 3600);
  t.is(expiresAt.getTime(), payload.exp! * 1000);
  const claims = await verifyAccessToken(token, settings);
  t.deepEqual(claims, { userId: 'u-1', role: 'admin', expiresAt });
});

test('a token for another audience, issuer or key is refused', async (t) => {
  const { token } = await issueAccessToken({ userId: 'u-1', role: 'user' }, settings);
  await t.throwsAsync(verifyAccessToken(token, { ...settings, audience: 'other' }));
  await t.throwsAsync(verifyAccessToken(token, { ...settings, issuer: 'other' }));
  await t.throwsAsync(verifyAccessToken(token, { ...settings, secret: 'another-secret-0123456789-01234567' }));
});

test('an expired token is refused', async (t) => {
  const { token } = await issueAccessToken({ userId: 'u-1', role: 'user' }, settings, new Date(Date.now() - 2 * 3_600_000));
  t.true(decodeJwt(token).exp! * 1000 < Date.now());
  await t.throwsAsync(verifyAccessToken(token, settings));
});
