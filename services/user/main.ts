/**
 * The user service process: the user database, UserService, the
 * OrderConfirmed consumer (loyalty points), the UserRegistered outbox, and the
 * shared process wiring of mesh/app.ts (streams, relay, health, registry,
 * graceful shutdown).
 *
 *   npm run start:user     PORT (5001), DATABASE_URL (unset = PGlite in DATA_DIR/user), NATS_URL,
 *                          JWT_SECRET, JWT_ISSUER, JWT_AUDIENCE, JWT_TTL, LOG_LEVEL, ...
 *
 * JWT_SECRET has a development default (DEV_JWT_SECRET in tokens.ts) so the
 * shop runs from a fresh clone; anything reachable by others must set its own,
 * and the gateway must be given the same value, issuer and audience.
 */
import { UserRegisteredSchema, UserService } from '../../gen/shop/user/v1/user_pb.js';
import { eventConsumerSettings, runServiceMain, serviceAppSettings, startServiceApp, type ServiceApp } from '../../mesh/app.js';
import { boolean, loadConfig, meshSettings, port, servicePorts, string, type Config } from '../../mesh/config.js';
import { serve } from '../../mesh/server.js';
import { userConsumers } from './consumers.js';
import { prepareDecoy } from './password.js';
import { UserRepository } from './repository.js';
import { outbox } from './schema.js';
import { DEV_ADMIN_PASSWORD, seedAdmin, userMigrations } from './seed.js';
import { createUserService } from './service.js';
import { DEV_JWT_SECRET, jwtSettings } from './tokens.js';

export { jwtSettings };

export const userSettings = {
  ...meshSettings,
  ...serviceAppSettings,
  ...eventConsumerSettings,
  ...jwtSettings,
  PORT: port(servicePorts.user, 'gRPC listen port of the user service'),
  SEED_ADMIN: boolean(false, 'Create admin@shop.test at start when missing (idempotent)'),
  ADMIN_PASSWORD: string(DEV_ADMIN_PASSWORD, 'Password of admin@shop.test when SEED_ADMIN creates it'),
};
export type UserConfig = Config<typeof userSettings>;

export type UserApp = ServiceApp;

/** Starts the service in this process; tests call it with their own config. */
export function startUser(config: UserConfig, host?: string): Promise<UserApp> {
  return startServiceApp({
    name: 'user',
    config,
    host,
    migrationsFolder: userMigrations,
    publishes: [UserRegisteredSchema],
    outbox,
    setup: async ({ db, prefix }) => {
      const repo = new UserRepository(db, prefix);
      await prepareDecoy();
      if (config.SEED_ADMIN) await seedAdmin(repo, config.ADMIN_PASSWORD);
      const tokens = { secret: config.JWT_SECRET, issuer: config.JWT_ISSUER, audience: config.JWT_AUDIENCE, ttlMs: config.JWT_TTL };
      return {
        services: [serve(UserService, createUserService({ repo, tokens }))],
        consumers: userConsumers(),
        listening: { jwt_secret: config.JWT_SECRET === DEV_JWT_SECRET ? 'development default' : 'set' },
      };
    },
  });
}

runServiceMain(import.meta.url, () => startUser(loadConfig(userSettings)));
