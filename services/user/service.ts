/**
 * UserService handlers: read the request, apply the domain rules, ask the
 * repository, answer. Validation lives in domain.ts, SQL in repository.ts,
 * hashing in password.ts, tokens in tokens.ts.
 */
import { create } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import type { ServiceImpl } from '@connectrpc/connect';
import { alreadyExists, invalidArguments, notFound, unauthenticated } from '../../mesh/errors.js';
import { requireUser } from '../../mesh/identity.js';
import { PointsAwardSchema, UserSchema, UserService, type User } from '../../gen/shop/user/v1/user_pb.js';
import {
  LOGIN_FAILED_MESSAGE,
  loginViolations,
  normalizeDisplayName,
  normalizeEmail,
  registrationViolations,
  roleToProto,
} from './domain.js';
import { burnPasswordCheck, hashPassword, verifyPassword } from './password.js';
import type { UserRepository } from './repository.js';
import type { UserRow } from './schema.js';
import { issueAccessToken, type TokenSettings } from './tokens.js';

const USER = 'shop.user.v1.User';

export interface UserServiceDeps {
  repo: UserRepository;
  tokens: TokenSettings;
}

export function createUserService({ repo, tokens }: UserServiceDeps): ServiceImpl<typeof UserService> {
  return {
    async register(req) {
      const violations = registrationViolations(req);
      if (violations.length > 0) throw invalidArguments(violations);
      const email = normalizeEmail(req.email);
      // Cheap early answer for the common case; the unique index in register() is what really decides.
      if (await repo.findByEmail(email)) throw emailTaken(email);
      const row = await repo.register({
        email,
        passwordHash: await hashPassword(req.password),
        displayName: normalizeDisplayName(req.displayName),
        role: 'user',
      });
      if (!row) throw emailTaken(email);
      return { user: toProto(row) };
    },

    /**
     * An unknown email and a wrong password give the same error, and both run
     * one scrypt verification, so neither the answer nor its timing tells
     * which emails have accounts.
     */
    async login(req) {
      const violations = loginViolations(req);
      if (violations.length > 0) throw invalidArguments(violations);
      const row = await repo.findByEmail(normalizeEmail(req.email));
      const ok = row ? await verifyPassword(req.password, row.passwordHash) : await burnPasswordCheck(req.password);
      if (!row || !ok) throw unauthenticated(LOGIN_FAILED_MESSAGE);
      const { token, expiresAt } = await issueAccessToken({ userId: row.id, role: row.role }, tokens);
      return { accessToken: token, expireTime: timestampFromDate(expiresAt), user: toProto(row) };
    },

    async getMe(_req, ctx) {
      const caller = requireUser(ctx);
      const row = await repo.findById(caller.userId);
      if (!row) throw notFound(USER, caller.userId, `user ${caller.userId} not found`);
      return { user: toProto(row) };
    },

    async getPoints(_req, ctx) {
      const caller = requireUser(ctx);
      const { balance, awards } = await repo.points(caller.userId);
      return {
        balance,
        awards: awards.map((a) =>
          create(PointsAwardSchema, { orderId: a.orderId, points: a.points, awardTime: timestampFromDate(a.awardTime) }),
        ),
      };
    },
  };
}

function emailTaken(email: string) {
  return alreadyExists(USER, `email/${email}`, `email: an account with ${email} already exists`);
}

export function toProto(row: UserRow): User {
  return create(UserSchema, {
    id: row.id,
    email: row.email,
    displayName: row.displayName,
    role: roleToProto(row.role),
    createTime: timestampFromDate(row.createTime),
  });
}
