// A tiny drizzle-kit shaped migrations folder for mesh/db tests.
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Writes a drizzle-kit shaped migrations folder (meta/_journal.json + <tag>.sql). */
export function migrationsFolder(migrations: { tag: string; when: number; sql: string[] }[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'pm-migrations-'));
  mkdirSync(join(dir, 'meta'));
  writeFileSync(
    join(dir, 'meta', '_journal.json'),
    JSON.stringify({
      version: '7',
      dialect: 'postgresql',
      entries: migrations.map((m, idx) => ({ idx, version: '7', when: m.when, tag: m.tag, breakpoints: true })),
    }),
  );
  for (const m of migrations) writeFileSync(join(dir, `${m.tag}.sql`), m.sql.join('\n--> statement-breakpoint\n'));
  return dir;
}

export const first = {
  tag: '0000_init',
  when: 1_700_000_000_000,
  sql: [
    'CREATE SCHEMA "demo";',
    // Slow on purpose, so two migrators starting together surely overlap.
    'SELECT pg_sleep(0.3);',
    'CREATE TABLE "demo"."things" ("id" serial PRIMARY KEY, "name" text NOT NULL);',
  ],
};
export const second = {
  tag: '0001_more',
  when: 1_700_000_100_000,
  sql: ['ALTER TABLE "demo"."things" ADD COLUMN "size" integer;'],
};
