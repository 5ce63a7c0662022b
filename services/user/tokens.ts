/**
 * Access tokens: HS256 JWTs signed with `jose`, carrying
 *   sub  the user id        role  'user' | 'admin'
 *   iss  JWT_ISSUER         aud   JWT_AUDIENCE
 *   iat, exp (iat + JWT_TTL)
 * The gateway verifies them with the same secret, issuer and audience
 * (`verifyAccessToken` below is what it needs) and passes sub and role on as
 * x-mesh-user-id / x-mesh-user-role.
 */
import { SignJWT, jwtVerify } from 'jose';
import { isRoleName, type RoleName } from './domain.js';

export interface TokenSettings {
  /** HS256 key material (JWT_SECRET); at least 32 bytes recommended. */
  secret: string;
  /** `iss` (JWT_ISSUER, default "protomesh"). */
  issuer: string;
  /** `aud` (JWT_AUDIENCE, default "protomesh-shop"). */
  audience: string;
  /** Lifetime in milliseconds (JWT_TTL, default 1h). */
  ttlMs: number;
}

export interface IssuedToken {
  token: string;
  expiresAt: Date;
}

export interface AccessClaims {
  userId: string;
  role: RoleName;
  expiresAt: Date;
}

function key(secret: string): Uint8Array {
  return new TextEncoder().encode(secret);
}

export async function issueAccessToken(
  subject: { userId: string; role: RoleName },
  settings: TokenSettings,
  now: Date = new Date(),
): Promise<IssuedToken> {
  const iat = Math.floor(now.getTime() / 1000);
  const exp = iat + Math.max(1, Math.floor(settings.ttlMs / 1000));
  const token = await new SignJWT({ role: subject.role })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(subject.userId)
    .setIssuer(settings.issuer)
    .setAudience(settings.audience)
    .setIssuedAt(iat)
    .setExpirationTime(exp)
    .sign(key(settings.secret));
  return { token, expiresAt: new Date(exp * 1000) };
}

/** Verifies signature, algorithm, issuer, audience and expiry; throws (a jose error) when any is wrong. */
export async function verifyAccessToken(
  token: string,
  settings: Omit<TokenSettings, 'ttlMs'>,
): Promise<AccessClaims> {
  const { payload } = await jwtVerify(token, key(settings.secret), {
    algorithms: ['HS256'],
    issuer: settings.issuer,
    audience: settings.audience,
    requiredClaims: ['sub', 'exp'],
  });
  const role = typeof payload.role === 'string' && isRoleName(payload.role) ? payload.role : undefined;
  if (!payload.sub || !role || payload.exp === undefined) throw new Error('access token lacks sub or role');
  return { userId: payload.sub, role, expiresAt: new Date(payload.exp * 1000) };
}

// The JWT_* settings are shared with the gateway, which verifies what this service signs.
export { DEV_JWT_SECRET, jwtSettings } from '../../mesh/config.js';
