/**
 * The user context's rules, with no I/O: what a valid registration is, how an
 * email is compared, which roles exist, and how many loyalty points an order
 * earns.
 *
 * Loyalty points: ONE POINT PER WHOLE CURRENCY UNIT of the confirmed order's
 * total, rounded down. The total arrives in minor units (shop.common.v1.Money),
 * so the minor units are divided by 10^(the currency's ISO 4217 exponent):
 * EUR 49.99 (4999 minor) earns 49 points, JPY 1200 (exponent 0) earns 1200,
 * KWD 1.500 (exponent 3) earns 1. A zero or negative total earns nothing.
 */
import type { FieldViolation } from '../../mesh/errors.js';
import { Role } from '../../gen/shop/user/v1/user_pb.js';

/** Roles as stored in the database and carried in the JWT `role` claim and `x-mesh-user-role`. */
export const ROLES = ['user', 'admin'] as const;
export type RoleName = (typeof ROLES)[number];

export function isRoleName(value: string): value is RoleName {
  return (ROLES as readonly string[]).includes(value);
}

/** The contract's enum for a stored role ('user' is a shopper: ROLE_CUSTOMER). */
export function roleToProto(role: RoleName): Role {
  return role === 'admin' ? Role.ADMIN : Role.CUSTOMER;
}

export const EMAIL_MAX = 254;
export const PASSWORD_MIN = 8;
export const PASSWORD_MAX = 128;
export const DISPLAY_NAME_MAX = 100;

/** Emails are compared and stored trimmed and lower-case. */
export function normalizeEmail(email: string): string {
  return email.trim().toLowerCase();
}

/** Display names are stored trimmed. */
export function normalizeDisplayName(name: string): string {
  return name.trim();
}

/**
 * A pragmatic email shape check: one "@", a non-empty local part, a dotted
 * domain, no whitespace. Deliverability is not our business; typos like
 * "ann@" or "ann.example.com" are.
 */
const EMAIL_SHAPE = /^[^\s@]+@[^\s@.]+(\.[^\s@.]+)+$/;

export function emailViolation(raw: string, field = 'email'): FieldViolation | undefined {
  const email = normalizeEmail(raw);
  if (email === '') return { field, description: 'is required', reason: 'REQUIRED' };
  if (email.length > EMAIL_MAX) return { field, description: `must be at most ${EMAIL_MAX} characters`, reason: 'TOO_LONG' };
  if (!EMAIL_SHAPE.test(email)) return { field, description: 'must be an email address like ann@example.com', reason: 'INVALID_FORMAT' };
  return undefined;
}

/** Length in code points, so an emoji counts as one character, as a person would count it. */
function charCount(s: string): number {
  return [...s].length;
}

export interface RegistrationInput {
  email: string;
  password: string;
  displayName: string;
}

/** Every problem with a registration request, in field order (empty when valid). */
export function registrationViolations(input: RegistrationInput): FieldViolation[] {
  const out: FieldViolation[] = [];
  const email = emailViolation(input.email);
  if (email) out.push(email);

  const pw = charCount(input.password);
  if (pw === 0) out.push({ field: 'password', description: 'is required', reason: 'REQUIRED' });
  else if (pw < PASSWORD_MIN) out.push({ field: 'password', description: `must be at least ${PASSWORD_MIN} characters`, reason: 'TOO_SHORT' });
  else if (pw > PASSWORD_MAX) out.push({ field: 'password', description: `must be at most ${PASSWORD_MAX} characters`, reason: 'TOO_LONG' });

  const name = charCount(normalizeDisplayName(input.displayName));
  if (name === 0) out.push({ field: 'display_name', description: 'is required', reason: 'REQUIRED' });
  else if (name > DISPLAY_NAME_MAX) out.push({ field: 'display_name', description: `must be at most ${DISPLAY_NAME_MAX} characters`, reason: 'TOO_LONG' });
  return out;
}

/**
 * Problems with a login request. Only presence is checked: telling a caller
 * "that is not an email address" is fine, but length rules are not applied
 * here, so a login never reveals password policy details about an account.
 */
export function loginViolations(input: { email: string; password: string }): FieldViolation[] {
  const out: FieldViolation[] = [];
  if (normalizeEmail(input.email) === '') out.push({ field: 'email', description: 'is required', reason: 'REQUIRED' });
  else if (input.email.length > EMAIL_MAX) out.push({ field: 'email', description: `must be at most ${EMAIL_MAX} characters`, reason: 'TOO_LONG' });
  if (input.password === '') out.push({ field: 'password', description: 'is required', reason: 'REQUIRED' });
  else if (charCount(input.password) > PASSWORD_MAX) out.push({ field: 'password', description: `must be at most ${PASSWORD_MAX} characters`, reason: 'TOO_LONG' });
  return out;
}

/** The one message for every failed login, whatever the cause (unknown email or wrong password). */
export const LOGIN_FAILED_MESSAGE = 'email or password is incorrect';

/** ISO 4217 currencies whose minor unit is not 1/100. Anything else has exponent 2. */
const CURRENCY_EXPONENTS: Readonly<Record<string, number>> = {
  BIF: 0, CLP: 0, DJF: 0, GNF: 0, ISK: 0, JPY: 0, KMF: 0, KRW: 0, PYG: 0,
  RWF: 0, UGX: 0, UYI: 0, VND: 0, VUV: 0, XAF: 0, XOF: 0, XPF: 0,
  BHD: 3, IQD: 3, JOD: 3, KWD: 3, LYD: 3, OMR: 3, TND: 3,
  CLF: 4, UYW: 4,
};

export function currencyExponent(currencyCode: string): number {
  return CURRENCY_EXPONENTS[currencyCode.toUpperCase()] ?? 2;
}

/** Loyalty points for a confirmed order total (see the header): whole currency units, rounded down, never negative. */
export function pointsForOrderTotal(total: { currencyCode: string; amountMinor: bigint } | undefined): bigint {
  if (!total || total.amountMinor <= 0n) return 0n;
  return total.amountMinor / 10n ** BigInt(currencyExponent(total.currencyCode));
}

/** GetPoints returns at most this many awards, newest first (the contract says 20). */
export const LATEST_AWARDS_LIMIT = 20;
