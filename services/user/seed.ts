/**
 * The admin account, so the admin RPCs (CreateProduct, SetStock) can be
 * exercised: email admin@shop.test, password ADMIN_PASSWORD, by default the
 * DEVELOPMENT password `admin-dev-password` (never use it anywhere reachable).
 * Idempotent: an existing account with that email keeps its password and is
 * given the admin role, so re-running changes nothing.
 *
 *   npm run seed:user      DATABASE_URL set: that server; unset: PGlite in DATA_DIR/user
 *                          (with PGlite, stop the user service first: one process per data directory)
 */
import { pathToFileURL } from 'node:url';
import { loadConfig, meshSettings, string } from '../../mesh/config.js';
import { openDatabase } from '../../mesh/db.js';
import { normalizeSubjectPrefix } from '../../mesh/events/naming.js';
import { normalizeEmail } from './domain.js';
import { hashPassword } from './password.js';
import { UserRepository } from './repository.js';

export const userMigrations = new URL('./migrations', import.meta.url).pathname;

export const ADMIN_EMAIL = 'admin@shop.test';
/** Development only; documented in the README and above. */
export const DEV_ADMIN_PASSWORD = 'admin-dev-password';

export interface SeedAdminResult {
  userId: string;
  created: boolean;
  promoted: boolean;
}

export async function seedAdmin(repo: UserRepository, password = DEV_ADMIN_PASSWORD): Promise<SeedAdminResult> {
  const email = normalizeEmail(ADMIN_EMAIL);
  const existing = await repo.findByEmail(email);
  if (existing) {
    if (existing.role !== 'admin') await repo.setRole(existing.id, 'admin');
    return { userId: existing.id, created: false, promoted: existing.role !== 'admin' };
  }
  const row = await repo.register({ email, passwordHash: await hashPassword(password), displayName: 'Shop admin', role: 'admin' });
  if (row) return { userId: row.id, created: true, promoted: false };
  // Lost a race with another seeding process: the account exists now.
  return seedAdmin(repo, password);
}

async function main(): Promise<void> {
  const config = loadConfig({
    ...meshSettings,
    ADMIN_PASSWORD: string(DEV_ADMIN_PASSWORD, 'Password of admin@shop.test when it is created'),
  });
  const database = await openDatabase({
    context: 'user',
    url: config.DATABASE_URL,
    dataDir: config.DATA_DIR,
    migrationsFolder: userMigrations,
  });
  try {
    const repo = new UserRepository(database.db, normalizeSubjectPrefix(config.NATS_SUBJECT_PREFIX ?? ''));
    const result = await seedAdmin(repo, config.ADMIN_PASSWORD);
    process.stdout.write(`${JSON.stringify({ msg: 'user seeded', driver: database.driver, email: ADMIN_EMAIL, ...result })}\n`);
  } finally {
    await database.close();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`seed:user failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
